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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let mut supervisor = Supervisor::new(CancellationToken::new(), metrics.clone(), health);
        let starts = Arc::new(AtomicUsize::new(0));
        let counter = starts.clone();
        supervisor.spawn("flaky", move |cancel| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("first run dies");
                }
                cancel.cancelled().await;
            }
        });
        for _ in 0..100 {
            if starts.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(starts.load(Ordering::SeqCst), 2, "restarted once");
        assert!(
            metrics
                .render()
                .contains(r#"daarion_bridge_task_failures_total{task="flaky"} 1"#)
        );
        assert!(supervisor.shutdown(Duration::from_secs(1)).await, "drained");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_keeps_failing_breaks_the_bridge() {
        let metrics = Arc::new(Metrics::new());
        let mut supervisor = Supervisor::new(
            CancellationToken::new(),
            metrics,
            Arc::new(Health::default()),
        );
        let broken = supervisor.broken();
        supervisor.spawn("doomed", |_| async {});
        tokio::time::timeout(Duration::from_secs(60), broken.cancelled())
            .await
            .expect("the supervisor gives up on a task that ends at once, every time");
        supervisor.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn shutdown_waits_for_tasks_to_drain() {
        let metrics = Arc::new(Metrics::new());
        let mut supervisor = Supervisor::new(
            CancellationToken::new(),
            metrics,
            Arc::new(Health::default()),
        );
        let drained = Arc::new(AtomicUsize::new(0));
        let flag = drained.clone();
        supervisor.spawn("slow-to-stop", move |cancel| {
            let flag = flag.clone();
            async move {
                cancel.cancelled().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                flag.store(1, Ordering::SeqCst);
            }
        });
        assert!(supervisor.shutdown(Duration::from_secs(2)).await);
        assert_eq!(
            drained.load(Ordering::SeqCst),
            1,
            "the task finished its clean-up"
        );
    }
}
