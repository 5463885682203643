//! Running the model off the async threads. Either each request runs on a blocking thread by
//! itself, or (micro-batching) worker threads, one per session of the classifier, take turns at
//! the queue: each collects queued requests, for up to `max_wait` or `max_batch` images, and
//! runs them as one batch while the next worker collects the next: ONNX Runtime's throughput
//! per image grows with the batch on a compute-bound network.

use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
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
    /// With `batching` whose `max_batch > 1`, starts one batch worker thread per session; they
    /// stop when the engine is dropped.
    pub fn new(classifier: Arc<Classifier>, metrics: Arc<Metrics>, batching: BatchConfig) -> Self {
        // A graph with a fixed batch dimension cannot take merged requests.
        let queue = (batching.max_batch > 1 && classifier.info().fixed_batch.is_none()).then(|| {
            let (tx, rx) = mpsc::channel();
            let rx = Arc::new(Mutex::new(rx));
            let mut started = 0;
            for n in 0..classifier.sessions() {
                let (classifier, metrics, rx) = (Arc::clone(&classifier), Arc::clone(&metrics), Arc::clone(&rx));
                let spawned = std::thread::Builder::new()
                    .name(format!("infer-batch-{n}"))
                    .spawn(move || worker(&classifier, &metrics, &rx, batching));
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => tracing::warn!("could not start batch worker {n} ({e})"),
                }
            }
            if started == 0 {
                tracing::warn!("no batch worker started; running requests one by one");
            }
            (started > 0).then_some(tx)
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

/// The next batch from the queue; `None` once the engine is gone (or another worker panicked
/// while holding the queue).
fn collect(queue: &Mutex<mpsc::Receiver<Job>>, config: BatchConfig) -> Option<(Vec<Job>, usize)> {
    let rx = queue.lock().ok()?;
    let first = rx.recv().ok()?;
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
    Some((jobs, total))
}

fn worker(classifier: &Classifier, metrics: &Metrics, queue: &Mutex<mpsc::Receiver<Job>>, config: BatchConfig) {
    while let Some((mut jobs, total)) = collect(queue, config) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoadOptions, Overrides};
    use crate::testing::TinyModel;

    /// Every request gets its own image's logits back, whichever worker and session ran it.
    #[test]
    fn workers_on_several_sessions_answer_every_request_with_its_own_logits() -> Result<(), Box<dyn std::error::Error>>
    {
        let bytes = TinyModel::rgb(2).build();
        let options = LoadOptions {
            sessions: 2,
            ..LoadOptions::uncached(1)
        };
        let classifier = Arc::new(Classifier::load_with_options(
            bytes,
            None,
            "tiny",
            "tiny.onnx",
            &Overrides::default(),
            &options,
        )?);
        assert_eq!(classifier.sessions(), 2);
        let len = classifier.info().image_len();
        let image = move |i: usize| {
            (0..len)
                .map(|k| ((i * 7 + k) % 11) as f32 / 5.0 - 1.0)
                .collect::<Vec<f32>>()
        };
        let engine = Arc::new(Engine::new(
            Arc::clone(&classifier),
            Arc::new(Metrics::default()),
            BatchConfig {
                max_batch: 4,
                max_wait: Duration::from_millis(2),
            },
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build()?;
        let answers = runtime.block_on(async {
            let tasks: Vec<_> = (0..40)
                .map(|i| {
                    let (engine, input) = (Arc::clone(&engine), image(i));
                    tokio::spawn(async move { engine.infer(input, 1).await })
                })
                .collect();
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await);
            }
            answers
        });
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer??, classifier.run(image(i), 1)?, "request {i}");
        }
        Ok(())
    }
}
