//! Classifying many stored images: every object under an `s3://bucket/prefix/` or a local
//! folder, with the server's preprocessing and limits, one JSON Lines record per object.
//!
//! - [`store`]: listing and reading the objects (S3, a folder, or image files named one by one).
//! - [`output`]: the JSON Lines output (stdout, a file, an S3 object as a multipart upload, or
//!   memory), with the earlier records that still hold for resuming.
//! - [`run`]: `infer predict` over a folder, a prefix or image files: bounded concurrency, a
//!   progress bar, resume, Ctrl-C and SIGTERM.
//! - [`map`]: the same classification as a Step Functions Distributed Map worker on Lambda.
//!
//! An object that cannot be read or is not an image becomes a record with an `error`; it never
//! stops the run or the batch.

pub mod map;
pub mod output;
pub mod run;
pub mod store;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};

use crate::api::Limits;
use crate::batch::{BatchConfig, Engine};
use crate::metrics::Metrics;
use crate::model::{Classifier, ModelError, ModelInfo};
use crate::preprocess::{BoundedError, Normalisation, PreprocessError, preprocess_bounded};
use crate::scores::{Scored, top_k};
use store::{Object, Objects};

/// Objects in flight at once, by default: enough to hide S3's per-request latency behind the
/// decoding and model runs of the others.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// One line of the output: a prediction, or the reason there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The object's key (S3), or its path relative to the folder (or as given, for image files
    /// named one by one), escaped as [`store::escape`] does.
    pub key: String,
    /// The S3 ETag (with its quotes) of the bytes classified; `None` for files.
    pub etag: Option<String>,
    pub label: Option<String>,
    pub class_id: Option<usize>,
    pub probability: Option<f32>,
    pub top_k: Option<Vec<Scored>>,
    pub error: Option<String>,
}

impl Record {
    pub fn new(key: String, etag: Option<String>, outcome: Result<Vec<Scored>, ItemError>) -> Self {
        match outcome {
            Ok(top) => {
                let best = top.first().cloned();
                Self {
                    key,
                    etag,
                    label: best.as_ref().map(|s| s.label.clone()),
                    class_id: best.as_ref().map(|s| s.class_id),
                    probability: best.map(|s| s.probability),
                    top_k: Some(top),
                    error: None,
                }
            }
            Err(e) => Self {
                key,
                etag,
                label: None,
                class_id: None,
                probability: None,
                top_k: None,
                error: Some(e.to_string()),
            },
        }
    }
}

/// Why one object has no prediction.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("reading {uri}: {reason}")]
    Read { uri: String, reason: String },
    #[error("reading {uri}: no such key")]
    Missing { uri: String },
    #[error("the object is {size} bytes, over the limit of {limit} bytes (--max-body-bytes)")]
    TooLarge { size: u64, limit: usize },
    #[error(transparent)]
    Image(#[from] PreprocessError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the {0} task failed")]
    Task(&'static str),
}

/// Image bytes to top-k classes, exactly as `POST /v1/predict` does it: the same decoding
/// limits, the same bound on images decoded at once, the same (micro-batching) engine.
#[derive(Debug)]
pub struct Classify {
    engine: Engine,
    limits: Limits,
    decoding: Arc<Semaphore>,
}

impl Classify {
    pub fn new(classifier: Arc<Classifier>, batching: BatchConfig, limits: Limits) -> Self {
        Self {
            engine: Engine::new(classifier, Arc::new(Metrics::default()), batching),
            decoding: Arc::new(Semaphore::new(limits.max_decoding.max(1))),
            limits,
        }
    }

    pub fn info(&self) -> &ModelInfo {
        self.engine.classifier().info()
    }

    /// The largest object read (the server's body limit).
    pub fn max_bytes(&self) -> usize {
        self.limits.max_body
    }

    /// Checks a listed size against [`Classify::max_bytes`] before anything is downloaded.
    pub fn check_size(&self, size: Option<u64>) -> Result<(), ItemError> {
        match size {
            Some(size) if size > self.limits.max_body as u64 => Err(ItemError::TooLarge {
                size,
                limit: self.limits.max_body,
            }),
            _ => Ok(()),
        }
    }

    /// Reads and classifies one listed object: its record, with an `error` when it could not be
    /// read or classified.
    pub async fn object(&self, objects: &Objects, object: Object, k: usize) -> Record {
        let mut etag = object.etag.clone();
        let outcome = async {
            self.check_size(object.size)?;
            let read = objects.read(&object, self.max_bytes()).await?;
            if read.etag.is_some() {
                etag = read.etag;
            }
            self.classify(read.bytes, k).await
        }
        .await;
        Record::new(object.key, etag, outcome)
    }

    /// The `k` most probable classes for one image (`k` is clamped to 1..=classes).
    pub async fn classify(&self, bytes: Vec<u8>, k: usize) -> Result<Vec<Scored>, ItemError> {
        self.check_size(Some(bytes.len() as u64))?;
        let info = self.info();
        let norm = Normalisation::from_info(info);
        let input = match preprocess_bounded(&self.decoding, vec![bytes], self.limits.decode, norm, false).await {
            Ok(done) => done.input,
            Err(BoundedError::Image { source, .. }) => return Err(source.into()),
            Err(BoundedError::Closed | BoundedError::Task(_)) => return Err(ItemError::Task("decoding")),
        };
        let logits = self.engine.infer(input, 1).await?;
        let k = k.clamp(1, info.num_classes().max(1));
        logits
            .first()
            .map(|l| top_k(l, &info.class_names, k))
            .ok_or_else(|| ItemError::Model(ModelError::Inference("the model returned no logits".into())))
    }
}

/// The objects being read and classified, at most `limit` at once, started in the order
/// `pending` gives them: the loop of both `infer predict` ([`run`]) and the Map worker
/// ([`map`]).
#[derive(Debug)]
pub struct InFlight<I> {
    classify: Arc<Classify>,
    objects: Arc<Objects>,
    top_k: usize,
    limit: usize,
    pending: std::iter::Enumerate<I>,
    tasks: JoinSet<(usize, Record)>,
}

impl<I: Iterator<Item = Object>> InFlight<I> {
    pub fn new(classify: Arc<Classify>, objects: Arc<Objects>, top_k: usize, limit: usize, pending: I) -> Self {
        Self {
            classify,
            objects,
            top_k,
            limit: limit.max(1),
            pending: pending.enumerate(),
            tasks: JoinSet::new(),
        }
    }

    /// Starts objects until `limit` are in flight or none is left to start.
    pub fn fill(&mut self) {
        while self.tasks.len() < self.limit {
            let Some((i, object)) = self.pending.next() else { break };
            let (classify, objects) = (Arc::clone(&self.classify), Arc::clone(&self.objects));
            let top_k = self.top_k;
            self.tasks
                .spawn(async move { (i, classify.object(&objects, object, top_k).await) });
        }
    }

    /// The next record to complete, with its object's place in `pending`; `None` when nothing
    /// is in flight. `Classify::object` does not panic; a task that did anyway is an `Err`, and
    /// its object has no record. Cancel-safe (a record is never lost to a `select!`).
    pub async fn next(&mut self) -> Option<Result<(usize, Record), JoinError>> {
        self.tasks.join_next().await
    }
}
