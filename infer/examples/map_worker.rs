//! The Step Functions Distributed Map worker's throughput by batch size: a local S3 server
//! (moto, from the tools venv) is filled with images from a folder, and the worker classifies
//! them batch after batch, as one Lambda instance does, in this process (no Lambda emulator in
//! the way). Prints images/s, ms per batch and the worker's CPU time per image, the figure that
//! the Lambda cost estimate in `infra/README.md` is built on. Figures in `BENCHMARKS.md`.
//!
//! ```text
//! [INFER_INTRA_OP_SPINNING=false] cargo run --release -p infer --example map_worker -- IMAGES_DIR [COUNT] [MODEL.onnx]
//! ```
//!
//! With ONNX Runtime's threads spinning (the default, as on Lambda), CPU time includes their
//! spinning between the small batches the worker feeds them; `false` counts only the work.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use infer::api::Limits;
use infer::batch::BatchConfig;
use infer::bulk::map::{BatchInput, MapBatch, MapItem, Worker};
use infer::bulk::store::{Location, Objects};
use infer::bulk::{Classify, DEFAULT_CONCURRENCY};
use infer::model::{LoadOptions, Overrides, default_threads};
use infer::source::ModelSource;
use infer::testing::moto::Moto;

/// This process's user + system CPU time in seconds (`/proc/self/stat`, clock ticks of 10 ms).
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11).context("utime")?.parse::<f64>()? + fields.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .context("usage: map_worker IMAGES_DIR [COUNT] [MODEL.onnx]")?;
    let count: usize = args.next().map_or(Ok(2000), |s| s.parse())?;
    let model = args
        .next()
        .map_or(Ok(ModelSource::Bundled), |m| ModelSource::parse(&m))?;

    let moto = Moto::start()?;
    for (key, value) in moto.aws_env() {
        // SAFETY: no other thread runs yet; the async runtime starts below.
        unsafe { std::env::set_var(key, value) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listed = Objects::open(&Location::Path(dir.clone().into()))
            .await
            .list(None)
            .await?;
        if listed.is_empty() {
            bail!("no files under {dir}");
        }
        moto.create_bucket("bench")?;
        let mut items = Vec::new();
        for object in listed.iter().take(count) {
            let path = object.path.as_deref().unwrap_or(std::path::Path::new(&object.key));
            let bytes = std::fs::read(std::path::Path::new(&dir).join(path))?;
            let etag = moto.put(&format!("bench/{}", object.key), &bytes)?;
            items.push(MapItem {
                key: object.key.clone(),
                etag: Some(etag),
                size: Some(bytes.len() as u64),
            });
        }
        let load_options = LoadOptions {
            spinning: std::env::var("INFER_INTRA_OP_SPINNING").map_or(true, |v| v != "false"),
            ..LoadOptions::uncached(default_threads())
        };
        let classifier = infer::host::load_classifier(&model, &Overrides::default(), &load_options).await?;
        let classify = Classify::new(classifier, BatchConfig::default(), Limits::default());
        let worker = Worker::new(Arc::new(classify), DEFAULT_CONCURRENCY);
        println!(
            "{} images from {dir}, {} CPUs, worker concurrency {DEFAULT_CONCURRENCY}",
            items.len(),
            default_threads()
        );
        println!("| batch size | images/s | ms per batch | worker CPU ms per image | failed |");
        println!("|---:|---:|---:|---:|---:|");
        for size in [1usize, 10, 50, 100, 250] {
            // Warm-up: one batch.
            let warm = MapBatch {
                items: items.iter().take(size).cloned().collect(),
                batch_input: BatchInput {
                    bucket: Some("bench".into()),
                    top_k: Some(5),
                },
            };
            worker.handle(warm).await?;
            let (cpu, start) = (cpu_seconds()?, Instant::now());
            let mut failed = 0;
            let mut batches = 0u32;
            for chunk in items.chunks(size) {
                let batch = MapBatch {
                    items: chunk.to_vec(),
                    batch_input: BatchInput {
                        bucket: Some("bench".into()),
                        top_k: Some(5),
                    },
                };
                failed += worker.handle(batch).await?.failed;
                batches += 1;
            }
            let wall = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds()? - cpu;
            println!(
                "| {size} | {:.1} | {:.1} | {:.2} | {failed} |",
                items.len() as f64 / wall,
                wall * 1e3 / f64::from(batches),
                cpu * 1e3 / items.len() as f64
            );
        }
        Ok(())
    })
}
