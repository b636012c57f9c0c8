//! Supervision of the bridge's background tasks (outbox delivery, follow-ups, the run
//! scheduler, upkeep, …): a task that panics or ends before shutdown is logged, counted and
//! restarted with backoff; one that keeps failing brings the process down (non-zero exit)
//! rather than leaving a bridge that answers 200 while its workers are dead. Shutdown cancels
//! every task and waits for them to drain, up to a deadline.

use std::{
    collections::{BTreeSet, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Failures within [`WINDOW`] after which a task is considered broken for good.
const MAX_FAILURES: usize = 5;
const WINDOW: Duration = Duration::from_secs(60);

/// Which supervised tasks are failing now (readiness reports them).
#[derive(Default)]
pub struct Health {
    failing: Mutex<BTreeSet<&'static str>>,
}

impl Health {
    fn set(&self, task: &'static str, failing: bool) {
        let mut set = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if failing {
            set.insert(task);
        } else {
            set.remove(task);
        }
    }

    /// Tasks that failed and are waiting to be restarted.
    pub fn failing(&self) -> Vec<&'static str> {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// Aborts the task when dropped (a supervised task never outlives its supervisor).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs and restarts background tasks.
pub struct Supervisor {
    tasks: JoinSet<()>,
    cancel: CancellationToken,
    broken: CancellationToken,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `cancel` is cancelled.
    pub fn new(cancel: CancellationToken, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self {
            tasks: JoinSet::new(),
            cancel,
            broken: CancellationToken::new(),
            health,
            metrics,
        }
    }

    /// Cancelled when a task keeps failing: the bridge must stop.
    pub fn broken(&self) -> CancellationToken {
        self.broken.clone()
    }

    /// Runs the task `make` builds until shutdown, restarting it when it panics or returns.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, make: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        let broken = self.broken.clone();
        let health = self.health.clone();
        let metrics = self.metrics.clone();
        self.tasks.spawn(async move {
            let mut failures: VecDeque<Instant> = VecDeque::new();
            let mut backoff = Duration::from_millis(200);
            loop {
                // The task runs in its own tokio task so a panic is caught as a JoinError.
                let mut task = AbortOnDrop(tokio::spawn(make(cancel.child_token())));
                let result = (&mut task.0).await;
                if cancel.is_cancelled() {
                    return;
                }
                match result {
                    Err(error) if error.is_panic() => {
                        tracing::error!(task = name, %error, "background task panicked; restarting it")
                    }
                    _ => tracing::error!(task = name, "background task ended unexpectedly; restarting it"),
                }
                metrics.task_failed(name);
                health.set(name, true);
                let now = Instant::now();
                failures.push_back(now);
                while failures.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
                    failures.pop_front();
                }
                if failures.len() >= MAX_FAILURES {
                    tracing::error!(task = name, failures = failures.len(), "background task keeps failing; stopping the bridge");
                    broken.cancel();
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                health.set(name, false);
            }
        });
    }

    /// Cancels every task and waits for them to finish, up to `deadline`; tasks still running
    /// then are aborted. Returns whether all drained in time.
    pub async fn shutdown(mut self, deadline: Duration) -> bool {
        self.cancel.cancel();
        let drained = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                remaining = self.tasks.len(),
                "background tasks did not stop in time; aborting them"
            );
            self.tasks.shutdown().await;
        }
        drained
    }
}
