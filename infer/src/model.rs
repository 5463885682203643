//! The classifier: ONNX Runtime sessions shared by every request, with what it needs to be
//! served correctly (class names, input size, normalisation) read from the ONNX metadata
//! contract or, for a foreign ONNX classifier, supplied by flags.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use onnx::{ChannelOrder, Layout, MetadataError, ModelMetadata};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{Tensor, ValueType};
use serde::Serialize;

use crate::graph_cache::{CacheOutcome, GraphCache};
use crate::runtime;

/// What flags say about a model; each one given overrides the model's own metadata.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub labels: Option<Vec<String>>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// `(height, width)`.
    pub size: Option<(u32, u32)>,
}

/// Everything the server says about the model it serves.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Short name (the file stem), used in `/v2/models/{name}`.
    pub name: String,
    /// The first 12 hex digits of the model file's sha256: changes whenever the weights do.
    pub version: String,
    pub sha256: String,
    /// Where the model came from (a path or `s3://bucket/key`): for the log, never for clients.
    #[serde(skip_serializing)]
    pub source: String,
    pub class_names: Vec<String>,
    pub input_height: u32,
    pub input_width: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// What the model says it expects (a model that expects anything but RGB NCHW is refused).
    pub channel_order: ChannelOrder,
    pub layout: Layout,
    pub input_name: String,
    pub output_name: String,
    /// The batch size the graph is fixed to, when its first dimension is not symbolic.
    pub fixed_batch: Option<usize>,
    /// The exporter's metadata contract, when the model carries it.
    pub metadata: Option<ModelMetadata>,
}

impl ModelInfo {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Floats in one image tensor (`3 * H * W`).
    pub fn image_len(&self) -> usize {
        3 * self.input_height as usize * self.input_width as usize
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("model {model} could not be loaded by ONNX Runtime (not a valid ONNX file?): {reason}")]
    Load { model: String, reason: String },
    #[error("model {model} is incompatible: {reason}")]
    Incompatible { model: String, reason: String },
    #[error("model {model} carries invalid metadata: {source}")]
    Metadata {
        model: String,
        #[source]
        source: MetadataError,
    },
    #[error("inference failed: {0}")]
    Inference(String),
    /// The cached optimised graph did not load; it has been removed, and loading again from the
    /// model rebuilds it ([`crate::host::load_classifier`] does).
    #[error("cached optimised graph {entry} does not load (removed): {reason}")]
    BadCacheEntry { entry: String, reason: String },
}

/// A loaded classifier: one or more ONNX Runtime sessions of the same graph, each behind a mutex
/// (`Session::run` takes `&mut`), so that as many runs as sessions go at once. Callers run it on
/// blocking threads (or through the [`crate::batch`] workers, one per session).
#[derive(Debug)]
pub struct Classifier {
    sessions: Vec<Mutex<Session>>,
    /// Where the next run starts looking for a free session.
    next: AtomicUsize,
    info: ModelInfo,
    cache: CacheOutcome,
    /// Test seam: this many next runs panic, as a bug in the runtime would.
    #[cfg(any(test, feature = "test-support"))]
    panics: AtomicUsize,
}

/// How start-up builds the session.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Sessions that run at once. On a small CPU, one single-threaded session per core serves
    /// more images per second than one session spread over the cores (infer/BENCHMARKS.md).
    pub sessions: usize,
    /// ONNX Runtime intra-op threads of each session.
    pub threads: usize,
    /// Whether those threads spin between parallel sections instead of sleeping (ONNX Runtime's
    /// default): faster model runs, but the spinning takes CPU from image decoding.
    pub spinning: bool,
    /// Where optimised graphs are kept between starts; `None` optimises in memory every time.
    pub cache: Option<GraphCache>,
}

impl LoadOptions {
    /// One session of `threads` spinning intra-op threads, no graph cache.
    pub fn uncached(threads: usize) -> Self {
        Self {
            sessions: 1,
            threads,
            spinning: true,
            cache: None,
        }
    }
}

/// The CPUs this process may use: the default for intra-op threads and for images decoded at once.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl Classifier {
    /// Builds the session from model bytes, checks the graph against what serving needs, and
    /// runs one warm-up inference (no graph cache). `name` and `source` are for messages and the
    /// API.
    pub fn load(
        bytes: &[u8],
        name: &str,
        source: &str,
        overrides: &Overrides,
        threads: usize,
    ) -> Result<Self, ModelError> {
        Self::load_with_options(
            bytes.to_vec(),
            None,
            name,
            source,
            overrides,
            &LoadOptions::uncached(threads),
        )
    }

    /// [`Classifier::load`] as start-up does it: with the sha256 when the caller already computed
    /// it, and the optimised-graph cache of `options`. Takes the bytes so that a cache hit can
    /// free them before the session is built (peak memory).
    pub fn load_with_options(
        bytes: Vec<u8>,
        sha256: Option<String>,
        name: &str,
        source: &str,
        overrides: &Overrides,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let sha256 = sha256.unwrap_or_else(|| onnx::checksum::sha256_hex(&bytes));
        let (sessions, cache) = build_sessions(bytes, &sha256, source, options)?;
        Self::from_sessions(sessions, cache, sha256, name, source, overrides)
    }

    /// Loads the cached optimised graph `entry` of the model whose sha256 is `sha256` (found by
    /// [`GraphCache::entry`]). An entry that does not load is removed and reported as
    /// [`ModelError::BadCacheEntry`], so that the caller can load the model itself instead.
    pub fn load_cached(
        entry: &std::path::Path,
        sha256: String,
        name: &str,
        source: &str,
        overrides: &Overrides,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let sessions = load_entries(entry, options.sessions.max(1), source, options)?;
        Self::from_sessions(sessions, CacheOutcome::Hit, sha256, name, source, overrides)
    }

    /// Checks the graph (the sessions are of one graph: the first speaks for all), warms every
    /// session up.
    fn from_sessions(
        sessions: Vec<Session>,
        cache: CacheOutcome,
        sha256: String,
        name: &str,
        source: &str,
        overrides: &Overrides,
    ) -> Result<Self, ModelError> {
        let load_err = |e: ort::Error| load_error(source, e);
        let incompatible = |reason: String| ModelError::Incompatible {
            model: source.to_owned(),
            reason,
        };
        let session = sessions
            .first()
            .ok_or_else(|| incompatible("no session was built".into()))?;

        let metadata = match session.metadata() {
            Ok(meta) => match ModelMetadata::from_props(|key| meta.custom(key)) {
                Ok(contract) => Some(contract),
                // No contract at all: a foreign classifier, described by flags.
                Err(MetadataError::Missing(onnx::metadata::keys::CONTRACT_VERSION)) => None,
                Err(source_err) => {
                    return Err(ModelError::Metadata {
                        model: source.to_owned(),
                        source: source_err,
                    });
                }
            },
            Err(e) => return Err(load_err(e)),
        };

        // What preprocessing produces; a model that says it wants anything else would be fed
        // the wrong pixels without an error, so it is refused here.
        let (channel_order, layout) = metadata
            .as_ref()
            .map_or((ChannelOrder::Rgb, Layout::Nchw), |m| (m.channel_order, m.layout));
        if (channel_order, layout) != (ChannelOrder::Rgb, Layout::Nchw) {
            return Err(incompatible(format!(
                "its metadata says {channel_order} channels in {layout} layout, but infer feeds \
                 RGB planes in NCHW layout; export the model for RGB NCHW input"
            )));
        }

        let [input] = session.inputs() else {
            return Err(incompatible(format!(
                "it has {} inputs; a classifier has one image input",
                session.inputs().len()
            )));
        };
        let in_shape = float_shape(input.dtype())
            .ok_or_else(|| incompatible(format!("input `{}` is not a float32 tensor", input.name())))?;
        if in_shape.len() != 4 || !matches!(in_shape[1], -1 | 3) {
            return Err(incompatible(format!(
                "input `{}` has shape {in_shape:?}; expected [N, 3, H, W]",
                input.name()
            )));
        }
        let output = session
            .outputs()
            .first()
            .ok_or_else(|| incompatible("it has no outputs".into()))?;
        let out_shape = float_shape(output.dtype())
            .ok_or_else(|| incompatible(format!("output `{}` is not a float32 tensor", output.name())))?;
        if out_shape.len() != 2 {
            return Err(incompatible(format!(
                "output `{}` has shape {out_shape:?}; expected [N, classes]",
                output.name()
            )));
        }

        // Requests bring any number of images and micro-batching merges them, so only a graph that
        // takes any batch, or exactly one image (run image by image), can serve them.
        if let Some(batch) = usize::try_from(in_shape[0]).ok().filter(|n| *n > 1) {
            return Err(incompatible(format!(
                "input `{}` has its batch dimension fixed to {batch}, but requests bring any number \
                 of images; export the model with a symbolic batch dimension (or a batch of 1)",
                input.name()
            )));
        }
        let fixed = |d: i64| u32::try_from(d).ok().filter(|d| *d > 0);
        let (input_height, input_width) = overrides
            .size
            .or(metadata.as_ref().map(|m| (m.input_height, m.input_width)))
            .or_else(|| Some((fixed(in_shape[2])?, fixed(in_shape[3])?)))
            .ok_or_else(|| incompatible("it has no metadata and a symbolic input size; pass --size HxW".into()))?;
        if input_height == 0 || input_width == 0 {
            return Err(incompatible("input size must be positive".into()));
        }
        for (axis, want) in [(2, input_height), (3, input_width)] {
            if let Some(got) = fixed(in_shape[axis])
                && got != want
            {
                return Err(incompatible(format!(
                    "its input is fixed to {}x{} but the size to serve is {input_height}x{input_width}",
                    in_shape[2], in_shape[3]
                )));
            }
        }
        let class_names = match (&overrides.labels, &metadata) {
            (Some(labels), _) => labels.clone(),
            (None, Some(meta)) => meta.class_names.clone(),
            (None, None) => match fixed(out_shape[1]) {
                Some(n) => {
                    tracing::warn!(
                        model = source,
                        "no class names in the model or --labels; using class_0.."
                    );
                    (0..n).map(|i| format!("class_{i}")).collect()
                }
                None => {
                    return Err(incompatible(
                        "it has no metadata and a symbolic class count; pass --labels".into(),
                    ));
                }
            },
        };
        if class_names.is_empty() {
            return Err(incompatible("no class names".into()));
        }
        if let Some(n) = fixed(out_shape[1])
            && n as usize != class_names.len()
        {
            return Err(incompatible(format!(
                "output `{}` has {n} classes but there are {} class names",
                output.name(),
                class_names.len()
            )));
        }
        let (mean, std) = match (&metadata, overrides.mean, overrides.std) {
            (_, Some(mean), Some(std)) => (mean, std),
            (Some(meta), mean, std) => (mean.unwrap_or(meta.mean), std.unwrap_or(meta.std)),
            (None, mean, std) => {
                if mean.is_none() || std.is_none() {
                    tracing::warn!(
                        model = source,
                        "no normalisation in the model or flags; using mean 0, std 1"
                    );
                }
                (mean.unwrap_or([0.0; 3]), std.unwrap_or([1.0; 3]))
            }
        };
        if std.iter().any(|s| !s.is_finite() || *s <= 0.0) || mean.iter().any(|m| !m.is_finite()) {
            return Err(incompatible(format!("bad normalisation mean {mean:?} / std {std:?}")));
        }

        let info = ModelInfo {
            name: name.to_owned(),
            version: sha256[..12].to_owned(),
            sha256,
            source: source.to_owned(),
            class_names,
            input_height,
            input_width,
            mean,
            std,
            channel_order,
            layout,
            input_name: input.name().to_owned(),
            output_name: output.name().to_owned(),
            fixed_batch: usize::try_from(in_shape[0]).ok().filter(|n| *n > 0),
            metadata,
        };
        let classifier = Self {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            info,
            cache,
            #[cfg(any(test, feature = "test-support"))]
            panics: AtomicUsize::new(0),
        };
        // Warm-up: the first run allocates and plans; it also proves the graph produces [1, C].
        // Runs one after another start at the next session, so each is warmed once.
        let batch = classifier.info.fixed_batch.unwrap_or(1);
        for _ in 0..classifier.sessions.len() {
            classifier
                .run(vec![0.0; classifier.info.image_len() * batch], batch)
                .map_err(|e| incompatible(format!("warm-up inference failed: {e}")))?;
        }
        Ok(classifier)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// How many runs can go at once.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Test seam: the next `runs` runs panic (before taking a session), as a bug in the runtime
    /// would, so that tests can see what the server does when its batch workers die.
    #[cfg(any(test, feature = "test-support"))]
    pub fn panic_on_next_runs(&self, runs: usize) {
        self.panics.store(runs, Ordering::Relaxed);
    }

    /// Whether start-up optimised the graph or loaded it from the cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// Runs `n` images (NCHW, `n * 3 * H * W` floats) and returns each image's logits. Blocks:
    /// call it from a blocking thread.
    pub fn run(&self, input: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        #[cfg(any(test, feature = "test-support"))]
        if self
            .panics
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
            .is_ok()
        {
            panic!("a model run told to panic (test seam)");
        }
        let info = &self.info;
        if n == 0 {
            return Ok(Vec::new());
        }
        if input.len() != n * info.image_len() {
            return Err(ModelError::Inference(format!(
                "{} floats for {n} images of {}",
                input.len(),
                info.image_len()
            )));
        }
        if let Some(fixed) = info.fixed_batch
            && fixed != n
        {
            return Err(ModelError::Inference(format!(
                "the model's batch is fixed to {fixed}, got {n}"
            )));
        }
        let shape = [n, 3, info.input_height as usize, info.input_width as usize];
        let tensor = Tensor::from_array((shape, input)).map_err(|e| ModelError::Inference(e.to_string()))?;
        // A free session if there is one, else wait for the one this run's turn points at.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.sessions.len();
        let free = (0..count).find_map(|k| self.sessions[(start + k) % count].try_lock().ok());
        let mut session = match free {
            Some(session) => session,
            None => self.sessions[start % count]
                .lock()
                .map_err(|_| ModelError::Inference("the session lock was poisoned".into()))?,
        };
        let outputs = session
            .run(ort::inputs![info.input_name.as_str() => tensor])
            .map_err(|e| ModelError::Inference(e.to_string()))?;
        let (out_shape, data) = outputs[info.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Inference(e.to_string()))?;
        let classes = info.num_classes();
        if out_shape.len() != 2 || out_shape[0] != n as i64 || out_shape[1] != classes as i64 {
            return Err(ModelError::Inference(format!(
                "output shape {:?}, expected [{n}, {classes}]",
                &out_shape[..]
            )));
        }
        Ok(data.chunks_exact(classes).map(<[f32]>::to_vec).collect())
    }
}

fn load_error(source: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Load {
        model: source.to_owned(),
        reason: e.to_string(),
    }
}

fn session_builder(
    source: &str,
    options: &LoadOptions,
    level: GraphOptimizationLevel,
) -> Result<SessionBuilder, ModelError> {
    let env = runtime::environment()?;
    let err = |e: ort::Error<SessionBuilder>| load_error(source, e);
    Session::builder(env)
        .map_err(|e| load_error(source, e))?
        .with_optimization_level(level)
        .map_err(err)?
        .with_intra_threads(options.threads.max(1))
        .map_err(err)?
        .with_intra_op_spinning(options.spinning)
        .map_err(err)?
        .with_inter_threads(1)
        .map_err(err)
}

fn load_entry(entry: &std::path::Path, source: &str, options: &LoadOptions) -> Result<Session, ModelError> {
    session_builder(source, options, GraphOptimizationLevel::Disable)?
        .commit_from_file(GraphCache::graph(entry))
        .map_err(|e| {
            crate::graph_cache::remove_entry(entry);
            ModelError::BadCacheEntry {
                entry: entry.display().to_string(),
                reason: e.to_string(),
            }
        })
}

/// `count` sessions of the cached optimised graph `entry`.
fn load_entries(
    entry: &std::path::Path,
    count: usize,
    source: &str,
    options: &LoadOptions,
) -> Result<Vec<Session>, ModelError> {
    (0..count).map(|_| load_entry(entry, source, options)).collect()
}

/// `options.sessions` sessions for `bytes`, from the cached optimised graph when there is a good
/// one; a graph optimised now is stored first, and the other sessions load it.
fn build_sessions(
    bytes: Vec<u8>,
    sha256: &str,
    source: &str,
    options: &LoadOptions,
) -> Result<(Vec<Session>, CacheOutcome), ModelError> {
    let count = options.sessions.max(1);
    let optimise = |mut builder: SessionBuilder, bytes: &[u8]| {
        builder.commit_from_memory(bytes).map_err(|e| load_error(source, e))
    };
    let optimise_all = |bytes: &[u8], count: usize| {
        (0..count)
            .map(|_| optimise(session_builder(source, options, GraphOptimizationLevel::Level3)?, bytes))
            .collect::<Result<Vec<_>, _>>()
    };
    let Some(cache) = &options.cache else {
        return Ok((optimise_all(&bytes, count)?, CacheOutcome::Off));
    };
    // Touching the runtime first also makes its build string available for the key.
    runtime::environment()?;
    let entry = cache.entry(sha256, ort::info());
    if GraphCache::graph(&entry).is_file() {
        // Freed first: ONNX Runtime's parse of the entry is the peak of a cached start.
        drop(bytes);
        return Ok((load_entries(&entry, count, source, options)?, CacheOutcome::Hit));
    }
    let tmp = match cache.temporary(&entry) {
        Ok(tmp) => tmp,
        Err(e) => {
            tracing::warn!(dir = %cache.dir().display(), "graph cache not writable ({e}); optimising in memory (set --cache-dir / INFER_CACHE_DIR, or --no-cache)");
            return Ok((optimise_all(&bytes, count)?, CacheOutcome::Unwritable));
        }
    };
    let builder = session_builder(source, options, GraphOptimizationLevel::Level3)?;
    // Weights of 1 KiB and more go to their own file, which a later start maps into memory.
    let configure = |builder: SessionBuilder| -> Result<SessionBuilder, ModelError> {
        let err = |e: ort::Error<SessionBuilder>| load_error(source, e);
        builder
            .with_optimized_model_path(GraphCache::graph(&tmp))
            .map_err(err)?
            .with_config_entry(
                "session.optimized_model_external_initializers_file_name",
                crate::graph_cache::WEIGHTS_FILE,
            )
            .map_err(err)?
            .with_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                "1024",
            )
            .map_err(err)
    };
    let builder = configure(builder).inspect_err(|_| crate::graph_cache::remove_entry(&tmp))?;
    let session = optimise(builder, &bytes);
    let stored = match &session {
        Ok(_) => cache.commit(&tmp, &entry),
        Err(_) => {
            crate::graph_cache::remove_entry(&tmp);
            false
        }
    };
    let mut sessions = vec![session?];
    if stored {
        drop(bytes);
        sessions.extend(load_entries(&entry, count - 1, source, options)?);
        Ok((sessions, CacheOutcome::Stored))
    } else {
        tracing::warn!(entry = %entry.display(), "could not store the optimised graph");
        sessions.extend(optimise_all(&bytes, count - 1)?);
        Ok((sessions, CacheOutcome::Unwritable))
    }
}

fn float_shape(dtype: &ValueType) -> Option<Vec<i64>> {
    match dtype {
        ValueType::Tensor {
            ty: ort::value::TensorElementType::Float32,
            shape,
            ..
        } => Some(shape.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TinyModel;

    /// A model whose metadata asks for input that preprocessing does not produce is refused at
    /// load, naming what it asks for; `/v1/model` reports the order and layout of the file.
    #[test]
    fn models_that_want_other_than_rgb_nchw_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tiny = TinyModel::rgb(8);
        let load = |meta: &ModelMetadata| {
            Classifier::load(
                &tiny.build_with(Some(meta)),
                "tiny",
                "tiny.onnx",
                &Overrides::default(),
                1,
            )
        };
        let cases = [
            (ChannelOrder::Bgr, Layout::Nchw, "BGR channels in NCHW layout"),
            (ChannelOrder::Rgb, Layout::Nhwc, "RGB channels in NHWC layout"),
        ];
        for (channel_order, layout, says) in cases {
            let meta = ModelMetadata {
                channel_order,
                layout,
                ..tiny.metadata()
            };
            let err = load(&meta).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains("tiny.onnx is incompatible") && err.contains(says),
                "{says}: {err}"
            );
        }
        let served = load(&tiny.metadata())?;
        assert_eq!(
            (served.info().channel_order, served.info().layout),
            (ChannelOrder::Rgb, Layout::Nchw)
        );
        Ok(())
    }

    /// With one session busy, a run goes to another instead of waiting for it.
    #[test]
    fn a_run_takes_a_free_session_while_another_is_busy() -> Result<(), Box<dyn std::error::Error>> {
        let bytes = TinyModel::rgb(4).build();
        let options = LoadOptions {
            sessions: 2,
            ..LoadOptions::uncached(1)
        };
        let two = Classifier::load_with_options(
            bytes.clone(),
            None,
            "tiny",
            "tiny.onnx",
            &Overrides::default(),
            &options,
        )?;
        let one = Classifier::load(&bytes, "tiny", "tiny.onnx", &Overrides::default(), 1)?;
        assert_eq!((two.sessions(), one.sessions()), (2, 1));
        let input: Vec<f32> = (0..two.info().image_len()).map(|k| k as f32 / 24.0).collect();
        for busy in 0..2 {
            let _held = two.sessions[busy].lock().map_err(|_| "poisoned")?;
            assert_eq!(
                two.run(input.clone(), 1)?,
                one.run(input.clone(), 1)?,
                "session {busy} held"
            );
        }
        Ok(())
    }
}
