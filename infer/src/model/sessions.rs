//! Building a model's ONNX Runtime sessions: optimised from the model's bytes, or loaded from the
//! optimised graph kept in the graph cache (and stored there when it is not yet).

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use super::error::{ModelError, load_error};
use crate::graph_cache::{CacheOutcome, GraphCache};
use crate::runtime;

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
pub(super) fn load_entries(
    entry: &std::path::Path,
    count: usize,
    source: &str,
    options: &LoadOptions,
) -> Result<Vec<Session>, ModelError> {
    (0..count).map(|_| load_entry(entry, source, options)).collect()
}

/// `options.sessions` sessions for `bytes`, from the cached optimised graph when there is a good
/// one; a graph optimised now is stored first, and the other sessions load it.
pub(super) fn build_sessions(
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
