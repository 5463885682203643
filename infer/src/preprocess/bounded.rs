//! Preprocessing as the server and the bulk classifier both run it: on a blocking thread (never
//! an async worker), holding one permit of the bound on images decoded at once for the whole
//! request or object.

use std::sync::Arc;

use image::RgbImage;
use tokio::sync::Semaphore;

use super::{DecodeLimits, Normalisation, PreprocessError, preprocess_into, preprocess_seen};

/// The images' normalised NCHW floats, one image after another, and with `keep_input` each
/// image as the model saw it.
#[derive(Debug)]
pub struct Preprocessed {
    pub input: Vec<f32>,
    pub seen: Vec<RgbImage>,
}

#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    /// The image at `index` (of those given) is not one the model can take.
    #[error("image {index}: {source}")]
    Image {
        index: usize,
        #[source]
        source: PreprocessError,
    },
    #[error("the decoding limit is closed")]
    Closed,
    #[error("the preprocessing task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Decodes and normalises `images` under one of `decoding`'s permits; the first image that
/// fails ends it.
pub async fn preprocess_bounded<B>(
    decoding: &Arc<Semaphore>,
    images: Vec<B>,
    limits: DecodeLimits,
    norm: Normalisation,
    keep_input: bool,
) -> Result<Preprocessed, BoundedError>
where
    B: AsRef<[u8]> + Send + 'static,
{
    // Owned and moved into the task: a caller that goes away (a client hanging up) must not
    // free the slot while the decode it started still holds its memory.
    let permit = Arc::clone(decoding)
        .acquire_owned()
        .await
        .map_err(|_| BoundedError::Closed)?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut input = Vec::with_capacity(images.len() * 3 * (norm.height * norm.width) as usize);
        let mut seen = Vec::new();
        for (index, bytes) in images.iter().enumerate() {
            let failed = |source| BoundedError::Image { index, source };
            if keep_input {
                seen.push(preprocess_seen(bytes.as_ref(), &limits, &norm, &mut input).map_err(failed)?);
            } else {
                preprocess_into(bytes.as_ref(), &limits, &norm, &mut input).map_err(failed)?;
            }
        }
        Ok(Preprocessed { input, seen })
    })
    .await
    .map_err(BoundedError::Task)?
}
