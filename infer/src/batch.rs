//! Running the model off the async threads: worker threads, one per session of the classifier,
//! take turns at a bounded queue. Each collects queued requests, for up to `max_wait` or
//! `max_batch` images, and runs them as one batch while the next worker collects the next: ONNX
//! Runtime's throughput per image grows with the batch on a compute-bound network. With
//! `max_batch` 1 each request runs alone, still on a worker: no request parks a thread of the
//! blocking pool (which decoding uses) while it waits for a session.
//!
//! The queue holds at most `max_queue` requests; [`Engine::try_infer`] refuses one more at once
//! ([`EngineError::Busy`]) so that the server can answer 503 instead of growing without bound,
//! while [`Engine::infer`] (offline runs) waits for room. A worker that panics is restarted a few
//! times; once none is left, [`Health`] says so (readiness, and the server's exit).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot, watch};

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

/// Requests that may wait for the model at once by default. Each holds its preprocessed images
/// (`3 * H * W` floats apiece) while it waits, so this bounds the queue's memory; a request that
/// finds it full is answered 503 at once rather than after a wait no client would sit through.
pub const DEFAULT_MAX_QUEUE: usize = 64;

/// How often a worker is restarted after panicking, within [`RESTART_WINDOW`], before it is
/// given up.
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            max_wait: Duration::ZERO,
        }
    }
}

/// Why a request got no logits.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The queue is full: answer "try again later".
    #[error("the model's queue is full ({capacity} requests are waiting)")]
    Busy { capacity: usize },
    /// No batch worker is left.
    #[error("the batch workers have stopped")]
    Stopped,
    /// The worker running the request panicked (it is restarted).
    #[error("the batch worker dropped the request")]
    Dropped,
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<EngineError> for ModelError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Model(e) => e,
            other => ModelError::Inference(other.to_string()),
        }
    }
}

type Reply = Result<Vec<Vec<f32>>, String>;

struct Job {
    input: Vec<f32>,
    images: usize,
    reply: oneshot::Sender<Reply>,
    /// The job's place in the queue, given back when a worker takes it.
    slot: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("images", &self.images).finish()
    }
}

/// Whether batch workers are left: readiness, and what the server waits on to exit.
#[derive(Debug)]
pub struct Health {
    alive: watch::Sender<usize>,
}

impl Health {
    fn new() -> Self {
        Self {
            alive: watch::Sender::new(0),
        }
    }

    /// Batch workers running now.
    pub fn workers(&self) -> usize {
        *self.alive.borrow()
    }

    /// At least one batch worker runs.
    pub fn ready(&self) -> bool {
        self.workers() > 0
    }

    /// Resolves once no batch worker is left (at once if none ever started).
    pub async fn lost(&self) {
        let mut rx = self.alive.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Counts its worker out of [`Health`] however the thread ends (returning or unwinding).
struct Alive(Arc<Health>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Runs inference for the async handlers.
#[derive(Debug)]
pub struct Engine {
    classifier: Arc<Classifier>,
    queue: mpsc::Sender<Job>,
    slots: Arc<Semaphore>,
    capacity: usize,
    batching: bool,
    health: Arc<Health>,
}

impl Engine {
    /// Starts one worker thread per session, with the default queue bound; they stop when the
    /// engine is dropped.
    pub fn new(classifier: Arc<Classifier>, metrics: Arc<Metrics>, batching: BatchConfig) -> Self {
        Self::with_queue(classifier, metrics, batching, DEFAULT_MAX_QUEUE)
    }

    /// [`Engine::new`] with at most `max_queue` requests waiting for the model.
    pub fn with_queue(
        classifier: Arc<Classifier>,
        metrics: Arc<Metrics>,
        batching: BatchConfig,
        max_queue: usize,
    ) -> Self {
        // A graph whose batch is fixed to 1 (the only fixed batch that loads) runs image by image.
        let config = BatchConfig {
            max_batch: if classifier.info().fixed_batch.is_some() {
                1
            } else {
                batching.max_batch.max(1)
            },
            ..batching
        };
        let (tx, rx) = mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let health = Arc::new(Health::new());
        for n in 0..classifier.sessions().max(1) {
            let (classifier, metrics, rx) = (Arc::clone(&classifier), Arc::clone(&metrics), Arc::clone(&rx));
            health.alive.send_modify(|alive| *alive += 1);
            let alive = Alive(Arc::clone(&health));
            let spawned = std::thread::Builder::new()
                .name(format!("infer-batch-{n}"))
                .spawn(move || supervise(n, alive, &classifier, &metrics, &rx, config));
            if let Err(e) = spawned {
                // The closure, and the `Alive` in it, was dropped: the count is right again.
                tracing::error!("could not start batch worker {n} ({e})");
            }
        }
        if !health.ready() {
            tracing::error!("no batch worker started");
        }
        let capacity = max_queue.max(1);
        Self {
            classifier,
            queue: tx,
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            batching: config.max_batch > 1,
            health,
        }
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Whether requests share model runs.
    pub fn batching(&self) -> bool {
        self.batching
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Logits for `images` images of NCHW floats, waiting for room in the queue.
    pub async fn infer(&self, input: Vec<f32>, images: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| EngineError::Stopped)?;
        Ok(self.send(input, images, slot).await?)
    }

    /// Logits for `images` images of NCHW floats, or [`EngineError::Busy`] at once when the queue
    /// is full.
    pub async fn try_infer(&self, input: Vec<f32>, images: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|e| match e {
            TryAcquireError::NoPermits => EngineError::Busy {
                capacity: self.capacity,
            },
            TryAcquireError::Closed => EngineError::Stopped,
        })?;
        self.send(input, images, slot).await
    }

    async fn send(
        &self,
        input: Vec<f32>,
        images: usize,
        slot: OwnedSemaphorePermit,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            images,
            reply,
            slot: Some(slot),
        };
        // Fails once every worker has gone and dropped the receiver.
        self.queue.send(job).map_err(|_| EngineError::Stopped)?;
        answer
            .await
            .map_err(|_| EngineError::Dropped)?
            .map_err(|e| EngineError::Model(ModelError::Inference(e)))
    }
}

/// Runs [`worker`] and restarts it after a panic, up to [`MAX_RESTARTS`] times per
/// [`RESTART_WINDOW`]; `alive` counts the thread out when it ends.
fn supervise(
    n: usize,
    alive: Alive,
    classifier: &Classifier,
    metrics: &Metrics,
    queue: &Mutex<mpsc::Receiver<Job>>,
    config: BatchConfig,
) {
    let _alive = alive;
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    loop {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| worker(classifier, metrics, queue, config)));
        let Err(panic) = run else {
            // The engine is gone.
            return;
        };
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let now = Instant::now();
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            restarts.pop_front();
        }
        if restarts.len() >= MAX_RESTARTS {
            tracing::error!(
                "batch worker {n} panicked ({reason}) for the {}th time within {RESTART_WINDOW:?}; giving it up",
                MAX_RESTARTS + 1
            );
            return;
        }
        restarts.push_back(now);
        tracing::error!("batch worker {n} panicked ({reason}); restarting it");
    }
}

/// The next batch from the queue, jobs whose client has gone left out; `None` once the engine
/// is gone.
fn collect(queue: &Mutex<mpsc::Receiver<Job>>, config: BatchConfig) -> Option<(Vec<Job>, usize)> {
    // A worker that panicked never holds the lock (it panics running the model, after this),
    // and the receiver has no state a panic could break.
    let rx = queue.lock().unwrap_or_else(PoisonError::into_inner);
    let mut first = rx.recv().ok()?;
    first.slot = None;
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
        let Some(mut job) = next else { break };
        job.slot = None;
        total += job.images;
        jobs.push(job);
    }
    drop(rx);
    // A request past its deadline (or whose client hung up) has dropped its receiver: running
    // it would only take the model from the requests still waiting.
    jobs.retain(|job| !job.reply.is_closed());
    let total = jobs.iter().map(|job| job.images).sum();
    Some((jobs, total))
}

fn worker(classifier: &Classifier, metrics: &Metrics, queue: &Mutex<mpsc::Receiver<Job>>, config: BatchConfig) {
    while let Some((mut jobs, total)) = collect(queue, config) {
        if jobs.is_empty() {
            continue;
        }
        let mut input = Vec::with_capacity(total * classifier.info().image_len());
        for job in &mut jobs {
            input.append(&mut job.input);
        }
        match run(classifier, metrics, input, total) {
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

fn run(
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
