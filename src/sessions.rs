//! Background upkeep of agent sessions (the idle sweeper, the sessions-by-status metric) and of
//! deferred runs nobody answered.

use std::{sync::Arc, time::Duration};

use crate::{
    config::Config,
    db::{Store, StoreError, types::Ts},
    metrics::{Metrics, StatusLabel},
};

/// One sweep at `now`: active sessions quiet for longer than their agent's idle period turn
/// idle; the metric is refreshed. Returns how many sessions turned idle.
pub async fn sweep(
    store: &Store,
    config: &Config,
    metrics: &Metrics,
    now: Ts,
) -> Result<u64, StoreError> {
    let overrides: Vec<(String, Duration)> = config
        .agents
        .iter()
        .filter_map(|a| Some((config.agent_user_id(a)?.to_string(), a.session_idle_after?)))
        .collect();
    // Deferred (webhook 202) runs get an hour to be answered through the agent API.
    let abandoned = store
        .fail_abandoned_runs(Ts(now.0 - chrono::Duration::hours(1)))
        .await?;
    if abandoned > 0 {
        tracing::warn!(
            runs = abandoned,
            "deferred runs never answered; marked failed"
        );
    }
    let idled = store
        .sweep_idle_sessions(now, config.bridge.session_idle_after, &overrides)
        .await?;
    for status in ["active", "idle", "closed"] {
        metrics
            .sessions
            .get_or_create(&StatusLabel {
                status: status.into(),
            })
            .set(0);
    }
    for (status, count) in store.session_counts().await? {
        metrics
            .sessions
            .get_or_create(&StatusLabel { status })
            .set(count);
    }
    Ok(idled)
}

/// Sweeps every `every` until the task is dropped.
pub async fn run_sweeper(
    store: Store,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(&store, &config, &metrics, Ts::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "agent sessions turned idle"),
            Err(error) => tracing::warn!(%error, "session sweep failed; will retry"),
        }
    }
}
