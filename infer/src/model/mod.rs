//! The classifier: ONNX Runtime sessions shared by every request, with what it needs to be
//! served correctly (class names, input size, normalisation) read from the ONNX metadata
//! contract or, for a foreign ONNX classifier, supplied by flags.
//!
//! - [`info`]: what the model is, read from the graph and checked against what serving needs.
//! - [`sessions`]: building the sessions, through the graph cache.
//! - here: loading, the warm-up, and running a batch of images on a free session.

mod error;
mod info;
mod sessions;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ort::session::Session;
use ort::value::Tensor;

pub use error::ModelError;
pub use info::{ModelInfo, Overrides};
pub use sessions::LoadOptions;

use crate::graph_cache::CacheOutcome;

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
        let (sessions, cache) = sessions::build_sessions(bytes, &sha256, source, options)?;
        Self::from_sessions(sessions, cache, sha256, name, source, overrides)
    }

    /// Loads the cached optimised graph `entry` of the model whose sha256 is `sha256` (found by
    /// [`crate::graph_cache::GraphCache::entry`]). An entry that does not load is removed and reported as
    /// [`ModelError::BadCacheEntry`], so that the caller can load the model itself instead.
    pub fn load_cached(
        entry: &std::path::Path,
        sha256: String,
        name: &str,
        source: &str,
        overrides: &Overrides,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let sessions = sessions::load_entries(entry, options.sessions.max(1), source, options)?;
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
        let incompatible = |reason: String| ModelError::Incompatible {
            model: source.to_owned(),
            reason,
        };
        let session = sessions
            .first()
            .ok_or_else(|| incompatible("no session was built".into()))?;
        let info = info::describe(session, sha256, name, source, overrides)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TinyModel;
    use onnx::{ChannelOrder, Layout, ModelMetadata};

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
