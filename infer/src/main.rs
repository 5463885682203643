//! `infer`: the thin binary over the `infer` library.
//!
//! - On AWS Lambda (`AWS_LAMBDA_RUNTIME_API` set, also under `cargo lambda watch`): serves the
//!   router through `lambda_http`, configured from the environment (`MODEL_URI`, `INFER_*`), and
//!   answers Step Functions Distributed Map batches ([`infer::bulk::map`]).
//! - `infer serve`: the same router as a plain HTTP server, graceful shutdown on SIGTERM/SIGINT.
//! - `infer predict IMAGE...`: offline prediction; `infer predict FOLDER|s3://bucket/prefix/`
//!   classifies every object there into JSON Lines; both through [`infer::bulk`].

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use infer::api::Limits;
use infer::batch::BatchConfig;
use infer::bulk::Record;
use infer::bulk::output::Output;
use infer::bulk::store::{Location, Objects, escape};
use infer::graph_cache::GraphCache;
use infer::model::{LoadOptions, Overrides, default_threads};
use infer::preprocess::DecodeLimits;
use infer::source::ModelSource;

#[derive(Debug, Parser)]
#[command(
    name = "infer",
    version,
    about = "Serve the ResNet-18 CIFAR-10 ONNX classifier over HTTP, on Lambda or as a server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP on a local address (what `cargo xtask serve` and containers run).
    Serve(ServeArgs),
    /// Classify image files, or every object in a folder or under an S3 prefix.
    Predict(PredictArgs),
}

#[derive(Debug, Args)]
struct ModelArgs {
    /// Model file or s3://bucket/key; without it, the model bundled at build time.
    #[arg(long, env = "MODEL_URI")]
    model: Option<String>,
    /// Class names, comma-separated (for a model without the metadata contract).
    #[arg(long, env = "INFER_LABELS", value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// Per-channel mean on [0,1] pixels, `R,G,B`.
    #[arg(long, env = "INFER_MEAN", value_parser = parse_triple)]
    mean: Option<[f32; 3]>,
    /// Per-channel std on [0,1] pixels, `R,G,B`.
    #[arg(long, env = "INFER_STD", value_parser = parse_triple)]
    std: Option<[f32; 3]>,
    /// Input size `HxW` (or one number for a square).
    #[arg(long, env = "INFER_SIZE", value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// ONNX Runtime sessions that run batches at once, each with `--threads` threads.
    #[arg(long, env = "INFER_SESSIONS", default_value_t = 1)]
    sessions: usize,
    /// ONNX Runtime intra-op threads of each session (default: the CPUs available, divided
    /// among the sessions).
    #[arg(long, env = "INFER_THREADS")]
    threads: Option<usize>,
    // Spinning makes model runs faster but takes CPU that decoding needs: `false` pays for
    // narrow models fed photos and costs wide ones (infer/BENCHMARKS.md, thread spinning).
    /// ONNX Runtime's threads spin between parallel sections (`false`: they sleep).
    #[arg(long, env = "INFER_INTRA_OP_SPINNING", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    intra_op_spinning: bool,
    /// Where ONNX Runtime's optimised graph is kept between starts, so that later starts skip
    /// graph optimisation [default: $XDG_CACHE_HOME/infer or ~/.cache/infer; none on Lambda].
    #[arg(long, env = "INFER_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Optimise the graph in memory at every start; read and write no cache.
    #[arg(long, env = "INFER_NO_CACHE", conflicts_with = "cache_dir")]
    no_cache: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (port 0 picks a free one; the address is printed on stdout).
    #[arg(long, env = "INFER_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Largest request body in bytes (Lambda's synchronous limit by default).
    #[arg(long, env = "INFER_MAX_BODY_BYTES", default_value_t = NonZeroUsize::new(infer::api::DEFAULT_MAX_BODY).unwrap_or(NonZeroUsize::MIN))]
    max_body_bytes: NonZeroUsize,
    /// Most images in one request.
    #[arg(long, env = "INFER_MAX_IMAGES", default_value_t = NonZeroUsize::new(Limits::default().max_images).unwrap_or(NonZeroUsize::MIN))]
    max_images: NonZeroUsize,
    /// Largest image side in pixels accepted by the decoder.
    #[arg(long, env = "INFER_MAX_SIDE", default_value_t = DecodeLimits::default().max_width,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_side: u32,
    /// Images decoded at once across all requests (each may take up to 64 MiB while it is
    /// decoded) [default: the CPUs available].
    #[arg(long, env = "INFER_MAX_DECODING")]
    max_decoding: Option<NonZeroUsize>,
    /// Images per model run when micro-batching; 1 turns micro-batching off.
    #[arg(long, env = "INFER_MAX_BATCH", default_value_t = NonZeroUsize::new(BatchConfig::default().max_batch).unwrap_or(NonZeroUsize::MIN))]
    max_batch: NonZeroUsize,
    /// How long a request waits for others to batch with, in milliseconds (0: batch only what
    /// queued while the model was busy).
    #[arg(long, env = "INFER_BATCH_WAIT_MS", default_value_t = BatchConfig::default().max_wait.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=MAX_BATCH_WAIT_MS))]
    batch_wait_ms: u64,
    /// Prediction requests handled at once; one more waits for a place (--admission-wait-ms),
    /// then is answered 503 with Retry-After.
    #[arg(long, env = "INFER_MAX_IN_FLIGHT", default_value_t = NonZeroUsize::new(infer::api::DEFAULT_MAX_IN_FLIGHT).unwrap_or(NonZeroUsize::MIN))]
    max_in_flight: NonZeroUsize,
    /// Milliseconds a prediction request over --max-in-flight waits for a place before it is
    /// answered 503 (0: at once); part of its deadline. Waiters get places in order until the
    /// oldest has waited half of this, then newest first.
    #[arg(long, env = "INFER_ADMISSION_WAIT_MS", default_value_t = infer::api::DEFAULT_ADMISSION_WAIT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=MAX_DEADLINE_MS))]
    admission_wait_ms: u64,
    /// Requests waiting for the model at once; one more is answered 503 with Retry-After.
    #[arg(long, env = "INFER_MAX_QUEUE", default_value_t = NonZeroUsize::new(infer::batch::DEFAULT_MAX_QUEUE).unwrap_or(NonZeroUsize::MIN))]
    max_queue: NonZeroUsize,
    /// Milliseconds a prediction request may take, from its first byte to its answer; 504 after.
    #[arg(long, env = "INFER_DEADLINE_MS", default_value_t = infer::api::DEFAULT_DEADLINE.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_DEADLINE_MS))]
    deadline_ms: u64,
    /// Milliseconds the requests in flight get to finish after SIGTERM/SIGINT; those still
    /// running then are answered 503.
    #[arg(long, env = "INFER_SHUTDOWN_GRACE_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=MAX_DEADLINE_MS))]
    shutdown_grace_ms: u64,
}

/// An hour: longer than any client or load balancer waits.
const MAX_DEADLINE_MS: u64 = 3_600_000;
/// Longer than a request's deadline would make no sense; a minute is already far too long.
const MAX_BATCH_WAIT_MS: u64 = 60_000;

#[derive(Debug, Args)]
struct PredictArgs {
    /// Image files (JPEG, PNG, GIF, WebP, BMP), or one folder or s3://bucket/prefix/. Each image
    /// or object gets one record (key, etag, label, class_id, probability, top_k, error); one that
    /// cannot be read or classified gets an error and the others go on. Image files are printed
    /// (text, or --json), a folder or prefix goes to JSON Lines (--output). Exit status: 0 when
    /// every image file is classified, 3 when one has an error (all are printed; a folder or
    /// prefix keeps its errors in the records and exits 0), 1 when the command cannot run (a
    /// model that does not load, an output that cannot be written) or was interrupted.
    #[arg(required = true, value_name = "IMAGES | FOLDER | s3://BUCKET/PREFIX")]
    inputs: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Classes per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print JSON instead of text (image files): {"model": {name, version}, "predictions": [record,
    /// ...]} in the order given.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bulk: BulkArgs,
}

/// `infer predict IMAGE...` exits with this when an image got an error record.
const PREDICT_SOME_FAILED: i32 = 3;

#[derive(Debug, Args)]
#[command(next_help_heading = "Pipeline (image files, folder or S3 prefix)")]
struct BulkArgs {
    /// Where the records of a folder or S3 prefix go: a file or s3://bucket/key [default:
    /// stdout]. A re-run keeps the error-free records of objects unchanged since (the same ETag)
    /// and classifies the rest; an S3 object is written in multipart parts and completed with
    /// every record so far on Ctrl-C or SIGTERM.
    #[arg(long, short)]
    output: Option<String>,
    /// On a re-run, classify again the objects whose record in --output has an error (a failed
    /// read, a transient S3 failure); `false` keeps those records as they are.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    retry_failed: bool,
    /// Objects in flight at once (being read, decoded or queued for the model).
    #[arg(long, default_value_t = infer::bulk::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Images per model run, batched from the objects in flight.
    #[arg(long, env = "INFER_MAX_BATCH", default_value_t = infer::batch::DEFAULT_MAX_BATCH)]
    max_batch: usize,
    /// Largest object in bytes; a larger one gets an error record and is not read.
    #[arg(long, env = "INFER_MAX_BODY_BYTES", default_value_t = infer::api::DEFAULT_MAX_BODY)]
    max_body_bytes: usize,
    /// Largest image side in pixels accepted by the decoder.
    #[arg(long, env = "INFER_MAX_SIDE", default_value_t = DecodeLimits::default().max_width)]
    max_side: u32,
    /// Images decoded at once [default: the CPUs available].
    #[arg(long, env = "INFER_MAX_DECODING")]
    max_decoding: Option<usize>,
    /// No progress bar (it is drawn on stderr when that is a terminal).
    #[arg(long)]
    no_progress: bool,
}

fn parse_triple(text: &str) -> Result<[f32; 3], String> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>().map_err(|e| format!("{v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    <[f32; 3]>::try_from(values).map_err(|v| format!("expected 3 comma-separated numbers, got {}", v.len()))
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let parse = |v: &str| v.trim().parse::<u32>().map_err(|e| format!("{v:?}: {e}"));
    match text.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => parse(text).map(|s| (s, s)),
    }
}

impl ModelArgs {
    fn source(&self) -> Result<ModelSource> {
        match &self.model {
            Some(uri) => Ok(ModelSource::parse(uri)?),
            None => {
                // The Lambda zip may carry `model.onnx` beside `bootstrap`.
                let beside = std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(|d| d.join("model.onnx")))
                    .filter(|p| p.is_file());
                Ok(match beside {
                    Some(path) if !infer::source::HAS_BUNDLED_MODEL => ModelSource::File(path),
                    _ => ModelSource::Bundled,
                })
            }
        }
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            labels: self.labels.clone(),
            mean: self.mean,
            std: self.std,
            size: self.size,
        }
    }

    fn load_options(&self) -> LoadOptions {
        // A Lambda sandbox starts with an empty /tmp: writing the graph would only slow the cold
        // start. There the cache is used only when INFER_CACHE_DIR asks for it.
        let dir = match (&self.cache_dir, self.no_cache) {
            (_, true) => None,
            (Some(dir), false) => Some(dir.clone()),
            (None, false) if infer::host::on_lambda() => None,
            (None, false) => GraphCache::default_dir(),
        };
        let sessions = self.sessions.max(1);
        LoadOptions {
            sessions,
            threads: self.threads.unwrap_or_else(|| (default_threads() / sessions).max(1)),
            spinning: self.intra_op_spinning,
            cache: dir.map(GraphCache::new),
        }
    }

    async fn load(&self) -> Result<Arc<infer::model::Classifier>> {
        let source = self.source()?;
        let start = Instant::now();
        let classifier = infer::host::load_classifier(&source, &self.overrides(), &self.load_options()).await?;
        let info = classifier.info();
        tracing::info!(
            model = %info.source,
            version = %info.version,
            classes = info.num_classes(),
            input = %format!("{}x{}", info.input_height, info.input_width),
            graph_cache = ?classifier.cache_outcome(),
            ms = infer::logging::millis(start.elapsed()),
            "model loaded and warmed up"
        );
        Ok(classifier)
    }
}

fn main() -> Result<()> {
    // SAFETY: nothing but this thread runs yet; the async runtime's workers start below.
    unsafe { infer::runtime::disable_telemetry_by_default() };
    // SAFETY: as above.
    unsafe { infer::host::ignore_stage_in_path() };
    infer::logging::init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        if infer::host::on_lambda() && cli.command.is_none() {
            return lambda().await;
        }
        match cli.command {
            Some(Command::Serve(args)) => serve(args).await,
            Some(Command::Predict(args)) => predict(args).await,
            None => bail!("no command: run `infer serve` or `infer predict IMAGE...` (see --help)"),
        }
    });
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    result
}

async fn lambda() -> Result<()> {
    // Lambda passes no arguments: the same options come from the environment.
    let args = ServeArgs::from_env()?;
    let classifier = args.model.load().await?;
    // A Distributed Map batch is many objects at once: that path batches model runs.
    let classify = infer::bulk::Classify::new(
        Arc::clone(&classifier),
        BatchConfig {
            max_batch: args.max_batch.get(),
            max_wait: Duration::ZERO,
        },
        args.limits(),
    );
    let worker = infer::bulk::map::Worker::new(Arc::new(classify), infer::bulk::DEFAULT_CONCURRENCY);
    // One request at a time per instance: nothing to batch.
    let app = infer::host::build(
        classifier,
        BatchConfig {
            max_batch: 1,
            max_wait: Duration::ZERO,
        },
        args.limits(),
    );
    let health = Arc::clone(&app.health);
    // Without batch workers every request would fail: exiting makes Lambda start a new sandbox.
    tokio::select! {
        result = infer::host::run_lambda_with_map(app.router, Arc::new(worker)) => {
            result.map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
        }
        () = health.lost() => bail!("{}", infer::host::ServeError::WorkersLost),
    }
}

impl ServeArgs {
    fn from_env() -> Result<Self> {
        #[derive(Debug, Parser)]
        struct EnvOnly {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Ok(EnvOnly::try_parse_from(["infer"])?.serve)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_in_flight: self.max_in_flight.get(),
            admission_wait: Duration::from_millis(self.admission_wait_ms),
            max_queue: self.max_queue.get(),
            deadline: Duration::from_millis(self.deadline_ms),
            ..limits(
                self.max_body_bytes.get(),
                self.max_images.get(),
                self.max_side,
                self.max_decoding.map(NonZeroUsize::get),
            )
        }
    }
}

/// The server's limits from its flags; `infer predict` over a prefix applies the same ones.
fn limits(max_body: usize, max_images: usize, max_side: u32, max_decoding: Option<usize>) -> Limits {
    let defaults = Limits::default();
    Limits {
        max_body,
        max_images: max_images.max(1),
        decode: DecodeLimits {
            max_width: max_side,
            max_height: max_side,
            ..defaults.decode
        },
        max_decoding: max_decoding.unwrap_or(defaults.max_decoding).max(1),
        ..defaults
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let start = Instant::now();
    let classifier = args.model.load().await?;
    let batching = BatchConfig {
        max_batch: args.max_batch.get(),
        max_wait: Duration::from_millis(args.batch_wait_ms),
    };
    let app = infer::host::build(classifier, batching, args.limits());
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // On stdout, for scripts and tests that start the server on port 0.
    println!("listening on http://{addr}");
    tracing::info!(
        %addr,
        max_batch = batching.max_batch,
        batch_wait_ms = args.batch_wait_ms,
        startup_ms = infer::logging::millis(start.elapsed()),
        "serving"
    );
    let grace = Duration::from_millis(args.shutdown_grace_ms);
    infer::host::serve_app(listener, app, infer::host::shutdown_signal(), grace)
        .await
        .context("serving HTTP")?;
    tracing::info!("stopped");
    Ok(())
}

async fn predict(args: PredictArgs) -> Result<()> {
    if args.inputs.iter().any(|i| Location::is_bulk(i)) {
        ensure!(
            args.inputs.len() == 1,
            "a folder or s3:// prefix must be the only input (got {} inputs)",
            args.inputs.len()
        );
        return predict_bulk(args).await;
    }
    ensure!(
        args.bulk.output.is_none(),
        "--output is for a folder or s3:// prefix; image files are printed"
    );
    let paths: Vec<PathBuf> = args.inputs.iter().map(PathBuf::from).collect();
    let classify = Arc::new(args.pipeline(args.model.load().await?));
    let model = serde_json::json!({"name": classify.info().name, "version": classify.info().version});
    let mut output = Output::memory();
    let objects = Objects::Files(paths.clone());
    let summary = infer::bulk::run::run(classify, objects, &mut output, args.options()).await?;
    // Records come as they complete: put them back in the order given.
    let mut by_key: HashMap<String, VecDeque<Record>> = HashMap::new();
    for record in output.into_records() {
        by_key.entry(record.key.clone()).or_default().push_back(record);
    }
    let records: Vec<Record> = paths
        .iter()
        .filter_map(|p| by_key.get_mut(&escape(p.as_os_str()))?.pop_front())
        .collect();
    if args.json {
        let doc = serde_json::json!({"model": model, "predictions": records});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for record in &records {
            match (&record.error, &record.top_k) {
                (Some(error), _) => println!("{}: error: {error}", record.key),
                (None, top) => {
                    let top = top.as_deref().unwrap_or_default();
                    let best = top.first().map_or(String::new(), |s| {
                        format!("{} ({:.1}%)", s.label, s.probability * 100.0)
                    });
                    let rest: Vec<String> = top
                        .iter()
                        .skip(1)
                        .map(|s| format!("{} {:.1}%", s.label, s.probability * 100.0))
                        .collect();
                    println!("{}: {best}  [{}]", record.key, rest.join(", "));
                }
            }
        }
    }
    ensure!(!summary.interrupted, "interrupted");
    if summary.failed > 0 {
        std::io::stdout().flush().context("writing stdout")?;
        eprintln!("{} of {} images could not be classified", summary.failed, paths.len());
        std::process::exit(PREDICT_SOME_FAILED);
    }
    Ok(())
}

impl PredictArgs {
    /// The same classification as the server's: its limits, the micro-batching engine.
    fn pipeline(&self, classifier: Arc<infer::model::Classifier>) -> infer::bulk::Classify {
        let bulk = &self.bulk;
        infer::bulk::Classify::new(
            classifier,
            BatchConfig {
                max_batch: bulk.max_batch.max(1),
                max_wait: Duration::ZERO,
            },
            limits(bulk.max_body_bytes, 1, bulk.max_side, bulk.max_decoding),
        )
    }

    fn options(&self) -> infer::bulk::run::Options {
        infer::bulk::run::Options {
            concurrency: self.bulk.concurrency,
            top_k: self.top_k,
            progress: !self.bulk.no_progress,
            retry_failed: self.bulk.retry_failed,
        }
    }
}

async fn predict_bulk(args: PredictArgs) -> Result<()> {
    let location = Location::parse(&args.inputs[0])?;
    // Opened first: a bad output stops the run before the model loads.
    let mut output = Output::open(args.bulk.output.as_deref()).await?;
    let classify = args.pipeline(args.model.load().await?);
    let objects = Objects::open(&location).await;
    let summary = match infer::bulk::run::run(Arc::new(classify), objects, &mut output, args.options()).await {
        Ok(summary) => summary,
        Err(e) => {
            output.abort().await;
            return Err(e.into());
        }
    };
    output.finish().await?;
    // On stderr, so that records on stdout stay pure JSON Lines.
    eprintln!("{location}: {summary}");
    ensure!(!summary.interrupted, "interrupted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options left out give the library's defaults: the flags have no defaults of their own.
    #[test]
    fn serve_limits_default_to_the_librarys() -> Result<()> {
        let args = ServeArgs::from_env()?;
        let batching = BatchConfig::default();
        assert_eq!(
            (args.max_batch.get(), Duration::from_millis(args.batch_wait_ms)),
            (batching.max_batch, batching.max_wait)
        );
        let given = args.limits();
        let defaults = Limits::default();
        assert_eq!(
            (
                given.max_body,
                given.max_images,
                given.decode,
                given.max_decoding,
                given.max_in_flight,
                given.admission_wait,
                given.max_queue,
                given.deadline
            ),
            (
                defaults.max_body,
                defaults.max_images,
                defaults.decode,
                defaults.max_decoding,
                defaults.max_in_flight,
                defaults.admission_wait,
                defaults.max_queue,
                defaults.deadline
            )
        );
        Ok(())
    }
}
