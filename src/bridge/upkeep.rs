//! Background upkeep: active agent sessions turn idle after their quiet period (and the
//! sessions metric is refreshed), deferred runs nobody answered are failed, and records whose
//! purpose has passed (transaction records beyond the homeserver's retry window, finished jobs
//! and triggers, published events, old audit rows) are pruned.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::agents::AgentRegistry;
use crate::{
    db::{Store, StoreError},
    metrics::Metrics,
    model::{SessionStatus, Ts},
};

/// Deferred (webhook 202) runs get this long to be answered through the agent API.
const DEFERRED_RUN_LIMIT: Duration = Duration::from_secs(3600);

/// How long each kind of record is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Transaction records, done jobs and triggers (`bridge.retention`).
    pub work: Duration,
    /// Failed jobs, from when they failed (`bridge.failed_retention`). Failed sends and runs
    /// are never pruned (neither table is).
    pub failed: Duration,
    /// Published outbox events (`events.retention`).
    pub events: Duration,
    /// Unpublished outbox events, dead letters included (`events.unpublished_retention` with
    /// its default filled in; none: kept until published or marked read).
    pub events_unpublished: Option<Duration>,
    /// Audit rows (`audit.retention`; none: forever).
    pub audit: Option<Duration>,
}

impl Retention {
    /// The retention `config` sets.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            work: config.bridge.retention,
            failed: config.bridge.failed_retention,
            events: config.events.retention,
            events_unpublished: config.events.unpublished_cutoff(),
            audit: config.audit.retention,
        }
    }
}

/// The upkeep worker.
pub struct Upkeep {
    store: Store,
    registry: Arc<AgentRegistry>,
    metrics: Arc<Metrics>,
    idle_after: Duration,
    retention: Retention,
}

impl Upkeep {
    /// Upkeep with the bridge's idle period and retention.
    pub fn new(
        store: Store,
        registry: Arc<AgentRegistry>,
        metrics: Arc<Metrics>,
        idle_after: Duration,
        retention: Retention,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry,
            metrics,
            idle_after,
            retention,
        })
    }

    /// One sweep at `now`: sessions quiet for longer than their agent's idle period turn idle,
    /// abandoned deferred runs fail, the metric is refreshed. Returns how many turned idle.
    pub async fn sweep(&self, now: Ts) -> Result<u64, StoreError> {
        let overrides: Vec<_> = self
            .registry
            .all()
            .into_iter()
            .filter_map(|a| Some((a.id, a.behaviour.idle_after?)))
            .collect();
        let abandoned = self
            .store
            .runs()
            .fail_abandoned(now.minus(DEFERRED_RUN_LIMIT))
            .await?;
        if abandoned > 0 {
            tracing::warn!(
                runs = abandoned,
                "deferred runs never answered; marked failed"
            );
        }
        let idled = self
            .store
            .sessions()
            .sweep_idle(now, self.idle_after, &overrides)
            .await?;
        let counts = self.store.sessions().counts().await?;
        for status in SessionStatus::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            self.metrics.sessions(*status, n);
        }
        Ok(idled)
    }

    /// Deletes what is older than the retention. Returns how many rows went.
    pub async fn prune(&self, now: Ts) -> Result<u64, StoreError> {
        let r = self.retention;
        let cutoff = now.minus(r.work);
        let mut n = self.store.prune_transactions(cutoff).await?
            + self.store.jobs().prune(cutoff, now.minus(r.failed)).await?
            + self.store.triggers().prune(cutoff).await?;
        n += self
            .store
            .events()
            .prune(
                now.minus(r.events),
                r.events_unpublished.map(|d| now.minus(d)),
            )
            .await?;
        if let Some(audit) = r.audit {
            n += self.store.audit().prune(now.minus(audit)).await?;
        }
        Ok(n)
    }

    /// Sweeps every `every` (and prunes hourly) until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sweep(Ts::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "agent sessions turned idle"),
                Err(error) => tracing::warn!(%error, "session sweep failed; will retry"),
            }
            if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                match self.prune(Ts::now()).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(rows = n, "pruned old transaction records and finished work")
                    }
                    Err(error) => tracing::warn!(%error, "pruning failed; will retry"),
                }
                last_prune = Some(tokio::time::Instant::now());
            }
        }
    }
}
