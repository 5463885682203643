//! `infer predict` over a folder, an S3 prefix or image files: list, skip what the output already
//! holds, classify the rest with at most `concurrency` objects in flight (each being read,
//! decoded, or queued for the micro-batching engine), write each record as it completes, and
//! show progress. Ctrl-C or SIGTERM stops the listing of new work: the objects in flight are
//! finished and written, and the output is completed with every record so far.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::output::Output;
use super::store::{Objects, StoreError};
use super::{Classify, InFlight};

/// How the run goes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Objects in flight at once.
    pub concurrency: usize,
    /// Classes per record.
    pub top_k: usize,
    /// Draw the progress bar (on stderr; indicatif hides it when stderr is not a terminal).
    pub progress: bool,
    /// Classify again the objects whose earlier record has an error.
    pub retry_failed: bool,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Objects under the prefix or folder.
    pub listed: usize,
    /// Of those, already in the output.
    pub skipped: usize,
    /// Of those to classify, the ones whose earlier record was dropped (it had an error, or the
    /// object has changed since).
    pub redone: usize,
    /// Records written with a prediction.
    pub classified: usize,
    /// Records written with an error.
    pub failed: usize,
    /// Listing to last record.
    pub elapsed: Duration,
    /// Stopped early by Ctrl-C (what was in flight was finished and written).
    pub interrupted: bool,
}

impl Summary {
    /// Records written per second.
    pub fn per_second(&self) -> f64 {
        (self.classified + self.failed) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} listed, {} skipped (already in the output), {} redone (failed or changed since), {} classified, {} failed, in {:.2} s ({:.1} images/s){}",
            self.listed,
            self.skipped,
            self.redone,
            self.classified,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            if self.interrupted {
                "; interrupted: run the same command again to continue"
            } else {
                ""
            }
        )
    }
}

/// Ctrl-C and SIGTERM, handled from the start of a run (before the listing), so that neither
/// ends the process while records are being written.
struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

impl Stop {
    fn new() -> Result<Self, StoreError> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).map_err(StoreError::Signal)?,
            terminate: signal(SignalKind::terminate()).map_err(StoreError::Signal)?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Classifies every object of `objects` not yet in `output` ([`Output::resume`]). Objects that
/// fail become records with an `error`; only listing or writing the output stops the run (the
/// caller then aborts the output).
pub async fn run(
    classify: Arc<Classify>,
    objects: Objects,
    output: &mut Output,
    options: Options,
) -> Result<Summary, StoreError> {
    let started = Instant::now();
    let mut stop = Stop::new()?;
    let listed = objects.list(output.location()).await?;
    let total = listed.len();
    let resume = output.resume(listed, options.retry_failed).await?;
    let (todo, skipped, redone) = (resume.todo, resume.skipped, resume.redone);
    tracing::info!(listed = total, skipped, redone, to_classify = todo.len(), "listed");

    let bar = ProgressBar::with_draw_target(
        Some(todo.len() as u64),
        if options.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} images, {per_sec} (eta {eta}) {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }

    let mut in_flight = InFlight::new(
        classify,
        Arc::new(objects),
        options.top_k,
        options.concurrency,
        todo.into_iter(),
    );
    let mut summary = Summary {
        listed: total,
        skipped,
        redone,
        classified: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        interrupted: false,
    };
    loop {
        if !summary.interrupted {
            in_flight.fill();
        }
        let joined = tokio::select! {
            joined = in_flight.next() => joined,
            name = stop.recv(), if !summary.interrupted => {
                summary.interrupted = true;
                tracing::info!("{name}: finishing the images in flight, then the output");
                bar.set_message("interrupted: finishing the images in flight");
                continue;
            }
        };
        let Some(joined) = joined else { break };
        // A task that panicked leaves its object for the next run.
        let Ok((_, record)) = joined else { continue };
        if record.error.is_some() {
            summary.failed += 1;
        } else {
            summary.classified += 1;
        }
        output.write(&record).await?;
        tracing::debug!(key = %record.key, "recorded");
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}
