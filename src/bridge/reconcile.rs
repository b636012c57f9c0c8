//! Keeps the bridge in step with the agent rows other services write: reloads the registry when
//! PostgreSQL announces a change (`LISTEN daarion_bridge_agents`, notified by triggers the
//! platform migration installs) and periodically as a safety net (SQLite: at least every
//! second), then acts on what changed: new and renamed agents' profiles follow at once; agents
//! deleted or disabled leave their rooms (as the homeserver lists them) and their sessions close.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::agents::{AgentRegistry, Changes};
use crate::model::Agent;
use crate::{
    db::{Store, audit::NewAudit},
    model::{ActorType, AuditOutcome},
    puppet::Puppets,
};

/// The channel the platform migration's triggers notify.
pub const CHANNEL: &str = "daarion_bridge_agents";

/// Reloads on PostgreSQL notifications until cancelled (SQLite: returns when cancelled). A lost
/// connection is re-established with backoff; the periodic reconcile covers the gap.
pub async fn listen(store: Store, registry: Arc<AgentRegistry>, cancel: CancellationToken) {
    let crate::db::Pool::Pg(pool) = store.pool().clone() else {
        return cancel.cancelled().await;
    };
    let mut backoff = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for agent changes; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            tracing::warn!(%error, "cannot LISTEN for agent changes; retrying");
            continue;
        }
        backoff = Duration::from_millis(200);
        // A change may have happened while not listening.
        reload(&registry).await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                note = listener.recv() => match note {
                    Ok(_) => {
                        // One reload covers a burst: drop what else is already buffered
                        // (`next_buffered` does not wait, unlike `try_recv`).
                        while listener.next_buffered().is_some() {}
                        reload(&registry).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "agent change notifications lost; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

async fn reload(registry: &AgentRegistry) {
    if let Err(error) = registry.reload().await {
        tracing::warn!(%error, "cannot reload agents");
    }
}

/// The reconciler: periodic reloads, and acting on every change any reload found.
pub async fn run(
    registry: Arc<AgentRegistry>,
    puppets: Arc<Puppets>,
    store: Store,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = registry.changed() => {}
            _ = tick.tick() => reload(&registry).await,
        }
        let changes = registry.take_changes();
        if !changes.is_empty() {
            apply(&puppets, &store, changes).await;
        }
    }
}

/// Acts on changes: profiles follow; agents gone leave their rooms and close their sessions.
pub async fn apply(puppets: &Arc<Puppets>, store: &Store, changes: Changes) {
    if !changes.profiles.is_empty()
        && let Err(error) = puppets.sync_profiles(&changes.profiles).await
    {
        tracing::warn!(%error, "cannot sync puppet profiles");
    }
    for agent in changes.gone {
        retire(puppets, store, &agent).await;
    }
}

/// An agent deleted or disabled: it leaves every room the homeserver has it in, its sessions
/// close, and the decision is audited.
async fn retire(puppets: &Arc<Puppets>, store: &Store, agent: &Arc<Agent>) {
    let deleted = store
        .agents()
        .by_external_id(&agent.external_id)
        .await
        .ok()
        .flatten()
        .is_none();
    let reason = if deleted {
        "this agent was removed"
    } else {
        "this agent was disabled"
    };
    let rooms = match puppets.intent(agent.clone()).leave_all(reason).await {
        Ok((rooms, failed)) => {
            for (room, error) in failed {
                tracing::warn!(agent = %agent.external_id, %room, %error, "retired agent cannot leave a room");
            }
            rooms
        }
        Err(error) => {
            tracing::warn!(agent = %agent.external_id, %error, "cannot list the rooms of a retired agent");
            0
        }
    };
    if !deleted && let Err(error) = store.sessions().close_agent(agent.id).await {
        tracing::warn!(agent = %agent.external_id, %error, "cannot close a retired agent's sessions");
    }
    let entry = NewAudit::new(
        ActorType::Bridge,
        None,
        if deleted {
            "agent.removed"
        } else {
            "agent.disabled"
        },
        Some(&agent.external_id),
        AuditOutcome::Allowed,
    )
    .details(serde_json::json!({ "left_rooms": rooms, "matrix_id": agent.user_id.as_str() }));
    if let Err(error) = store.audit().record(&[entry]).await {
        tracing::warn!(%error, "cannot audit a retired agent");
    }
    tracing::info!(agent = %agent.external_id, rooms, reason, "agent retired");
}
