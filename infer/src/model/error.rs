//! Why a model does not load or run.

use onnx::MetadataError;

use crate::runtime;

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

/// A failure of ONNX Runtime to take the model at `source`.
pub(super) fn load_error(source: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Load {
        model: source.to_owned(),
        reason: e.to_string(),
    }
}
