//! Running the model off the async threads. Either each request runs on a blocking thread by
//! itself, or (micro-batching) a worker thread collects queued requests, for up to `max_wait` or
//! `max_batch` images, and runs them as one batch: ONNX Runtime's throughput per image grows
//! with the batch on a compute-bound network.

use std::sync::Arc;
use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::model::{Classifier, ModelError};

/// Micro-batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Images per model run; 1 turns micro-batching off.
    pub max_batch: usize,
    /// How long the first queued request waits for company. Zero still batches whatever queued
    /// up while the previous batch ran, which costs a lone request nothing.
    pub max_wait: Duration,
}

/// The default batch cap. On the 2-core CPU ONNX Runtime gains little past batch 8, while every
/// image in a batch adds its activations to the arena's peak (`infer/BENCHMARKS.md` has ONNX
/// Runtime's images/s by batch size and the server's peak RSS by `--max-batch`).
pub const DEFAULT_MAX_BATCH: usize = 8;

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            max_wait: Duration::ZERO,
        }
    }
}

type Reply = Result<Vec<Vec<f32>>, String>;

struct Job {
    input: Vec<f32>,
    images: usize,
    reply: oneshot::Sender<Reply>,
}

/// Runs inference for the async handlers.
#[derive(Debug)]
pub struct Engine {
    classifier: Arc<Classifier>,
    metrics: Arc<Metrics>,
    queue: Option<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("images", &self.images).finish()
    }
}

impl Engine {
    /// With `batching` whose `max_batch > 1`, starts the batch worker thread; it stops when the
    /// engine is dropped.
    pub fn new(classifier: Arc<Classifier>, metrics: Arc<Metrics>, batching: BatchConfig) -> Self {
        // A graph with a fixed batch dimension cannot take merged requests.
        let queue = (batching.max_batch > 1 && classifier.info().fixed_batch.is_none()).then(|| {
            let (tx, rx) = mpsc::channel();
            let worker_classifier = Arc::clone(&classifier);
            let worker_metrics = Arc::clone(&metrics);
            let spawned = std::thread::Builder::new()
                .name("infer-batch".into())
                .spawn(move || worker(&worker_classifier, &worker_metrics, &rx, batching));
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!("could not start the batch worker ({e}); running requests one by one");
                    None
                }
            }
        });
        Self {
            classifier,
            metrics,
            queue: queue.flatten(),
        }
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    pub fn batching(&self) -> bool {
        self.queue.is_some()
    }

    /// Logits for `images` images of NCHW floats.
    pub async fn infer(&self, input: Vec<f32>, images: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        if let Some(queue) = &self.queue {
            let (reply, answer) = oneshot::channel();
            queue
                .send(Job { input, images, reply })
                .map_err(|_| ModelError::Inference("the batch worker has stopped".into()))?;
            return answer
                .await
                .map_err(|_| ModelError::Inference("the batch worker dropped the request".into()))?
                .map_err(ModelError::Inference);
        }
        let classifier = Arc::clone(&self.classifier);
        let metrics = Arc::clone(&self.metrics);
        tokio::task::spawn_blocking(move || run_direct(&classifier, &metrics, input, images))
            .await
            .map_err(|e| ModelError::Inference(format!("the inference task failed: {e}")))?
    }
}

fn run_direct(
    classifier: &Classifier,
    metrics: &Metrics,
    input: Vec<f32>,
    images: usize,
) -> Result<Vec<Vec<f32>>, ModelError> {
    if classifier.info().fixed_batch == Some(1) && images > 1 {
        // A graph fixed to batch 1 runs image by image.
        let len = classifier.info().image_len();
        let mut out = Vec::with_capacity(images);
        for chunk in input.chunks_exact(len) {
            metrics.record_batch(1);
            out.extend(classifier.run(chunk.to_vec(), 1)?);
        }
        return Ok(out);
    }
    metrics.record_batch(images);
    classifier.run(input, images)
}

fn worker(classifier: &Classifier, metrics: &Metrics, rx: &mpsc::Receiver<Job>, config: BatchConfig) {
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + config.max_wait;
        let mut total = first.images;
        let mut jobs = vec![first];
        while total < config.max_batch {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        // Timed out or disconnected: run what we have.
                        rx.recv_timeout(left).ok()
                    }
                }
            };
            let Some(job) = next else { break };
            total += job.images;
            jobs.push(job);
        }
        let mut input = Vec::with_capacity(total * classifier.info().image_len());
        for job in &mut jobs {
            input.append(&mut job.input);
        }
        metrics.record_batch(total);
        match classifier.run(input, total) {
            Ok(logits) => {
                let mut logits = logits.into_iter();
                for job in jobs {
                    let mine: Vec<Vec<f32>> = logits.by_ref().take(job.images).collect();
                    // The client may have gone; nothing to do then.
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(reason.clone()));
                }
            }
        }
    }
}
