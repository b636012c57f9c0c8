//! Work a transaction asks for but must not wait on: joining rooms the bot or a puppet was
//! invited to (then reading their state so the channel starts complete) and rejecting invites
//! the bridge refuses. Runs after the transaction committed, from a bounded queue, with retries.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc};

use super::Mirror;
use crate::{
    homeserver::HsError,
    puppet::{PuppetError, Puppets},
};

/// Capacity of the follow-up queue; a full queue drops (and counts) new requests rather than
/// blocking transactions.
pub const QUEUE: usize = 1024;
const PARALLEL: usize = 4;
const ATTEMPTS: u32 = 6;

#[derive(Debug, Clone)]
pub enum FollowUp {
    /// Accept an invite: join as `user_id` (bot or puppet), then read the room state.
    Join {
        room_id: OwnedRoomId,
        user_id: OwnedUserId,
    },
    /// Refuse an invite with a reason.
    Reject {
        room_id: OwnedRoomId,
        user_id: OwnedUserId,
        reason: String,
    },
}

/// Runs follow-ups until the queue closes.
pub async fn run(mut rx: mpsc::Receiver<FollowUp>, mirror: Arc<Mirror>, puppets: Arc<Puppets>) {
    let limit = Arc::new(Semaphore::new(PARALLEL));
    while let Some(job) = rx.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let mirror = mirror.clone();
        let puppets = puppets.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=ATTEMPTS {
                match execute(&job, &mirror, &puppets).await {
                    Ok(()) => return,
                    Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                        tracing::warn!(?job, attempt, error = %e, "follow-up failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) => {
                        tracing::error!(?job, error = %e, "follow-up failed");
                        mirror.metrics.follow_up_failed.inc();
                        return;
                    }
                }
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum FollowUpError {
    #[error(transparent)]
    Hs(#[from] HsError),
    #[error(transparent)]
    Store(#[from] crate::db::StoreError),
    #[error(transparent)]
    Puppet(#[from] PuppetError),
}

impl FollowUpError {
    fn is_transient(&self) -> bool {
        match self {
            FollowUpError::Hs(e) => e.is_transient(),
            FollowUpError::Store(_) => true,
            FollowUpError::Puppet(e) => e.is_transient(),
        }
    }
}

async fn execute(job: &FollowUp, mirror: &Mirror, puppets: &Puppets) -> Result<(), FollowUpError> {
    let hs = puppets.hs();
    match job {
        FollowUp::Join { room_id, user_id } => {
            if user_id != mirror.bot() {
                // Registered, named and with its avatar before it shows up in the room.
                match mirror.agent(user_id.as_str()) {
                    Some(agent) => {
                        puppets.ensure_ready(&agent).await?;
                    }
                    None => hs.ensure_registered(user_id.localpart()).await?,
                }
            }
            hs.join(room_id, user_id).await?;
            tracing::info!(%room_id, %user_id, "joined room");
            let state = hs.room_state(room_id, user_id).await?;
            let raws: Vec<&RawValue> = state.iter().map(|r| r.json()).collect();
            mirror.apply_room_state(room_id, &raws).await?;
            tracing::info!(%room_id, events = raws.len(), "room state mirrored");
        }
        FollowUp::Reject {
            room_id,
            user_id,
            reason,
        } => {
            if user_id != mirror.bot() {
                hs.ensure_registered(user_id.localpart()).await?;
            }
            hs.leave(room_id, user_id, reason).await?;
            tracing::info!(%room_id, %user_id, reason, "rejected invite");
        }
    }
    Ok(())
}
