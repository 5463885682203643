//! `infer predict` over a folder or S3 prefix: list, skip what the output already holds, classify
//! the rest with at most `concurrency` objects in flight (each being read, decoded, or queued for
//! the micro-batching engine), write each record as it completes, and show progress.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinSet;

use super::output::Output;
use super::store::{Object, Objects, StoreError};
use super::{Classify, Record};

/// How the run goes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Objects in flight at once.
    pub concurrency: usize,
    /// Classes per record.
    pub top_k: usize,
    /// Draw the progress bar (on stderr; indicatif hides it when stderr is not a terminal).
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Objects under the prefix or folder.
    pub listed: usize,
    /// Of those, already in the output.
    pub skipped: usize,
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
            "{} listed, {} skipped (already in the output), {} classified, {} failed, in {:.2} s ({:.1} images/s){}",
            self.listed,
            self.skipped,
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

/// Classifies every object of `objects` not yet in `output`. Objects that fail become records
/// with an `error`; only listing or writing the output stops the run.
pub async fn run(
    classify: Arc<Classify>,
    objects: Objects,
    output: &mut Output,
    options: Options,
) -> Result<Summary, StoreError> {
    let started = Instant::now();
    let listed = objects.list(output.location()).await?;
    let total = listed.len();
    let todo: Vec<Object> = listed.into_iter().filter(|o| !output.done().contains(&o.key)).collect();
    let skipped = total - todo.len();
    tracing::info!(listed = total, skipped, to_classify = todo.len(), "listed");

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

    let objects = Arc::new(objects);
    let concurrency = options.concurrency.max(1);
    let mut pending = todo.into_iter();
    let mut tasks = JoinSet::new();
    let mut summary = Summary {
        listed: total,
        skipped,
        classified: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        interrupted: false,
    };
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        while !summary.interrupted && tasks.len() < concurrency {
            let Some(object) = pending.next() else { break };
            tasks.spawn(one(Arc::clone(&classify), Arc::clone(&objects), object, options.top_k));
        }
        let joined = tokio::select! {
            joined = tasks.join_next() => joined,
            _ = &mut interrupt, if !summary.interrupted => {
                summary.interrupted = true;
                bar.set_message("interrupted: finishing the images in flight");
                continue;
            }
        };
        let Some(joined) = joined else { break };
        // `one` does not panic; a task that did anyway leaves its object for the next run.
        let Ok(record) = joined else { continue };
        if record.error.is_some() {
            summary.failed += 1;
        } else {
            summary.classified += 1;
        }
        output.write(&record)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

async fn one(classify: Arc<Classify>, objects: Arc<Objects>, object: Object, top_k: usize) -> Record {
    let outcome = async {
        classify.check_size(object.size)?;
        let bytes = objects.read(&object.key, classify.max_bytes()).await?;
        classify.classify(bytes, top_k).await
    }
    .await;
    Record::new(object.key, object.etag, outcome)
}
