//! Encrypted events past their wait: an event whose room key has not arrived within
//! `encryption.pending_max_age`, or the oldest ones beyond `encryption.pending_max`, are tried
//! once more, then mirrored as they are (`[encrypted]`) and counted, so both bounds on
//! `bridge_crypto_pending` hold and no event is lost.

use std::{sync::Arc, time::Duration};

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::mirror::Mirror;
use crate::{
    crypto::Crypto,
    db::{Store, crypto::CryptoTables},
    metrics::Metrics,
    model::Ts,
};

/// Events handled per round.
const BATCH: i64 = 100;

/// The bounds on waiting events.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Longest wait.
    pub max_age: Duration,
    /// Most events waiting.
    pub max_count: u32,
}

/// One round at `now`: returns how many pending events were given up on or decrypted.
pub async fn expire(
    crypto: &Crypto,
    mirror: &Mirror,
    store: &CryptoTables,
    metrics: &Metrics,
    bounds: Bounds,
    now: Ts,
) -> Result<usize, crate::crypto::CryptoError> {
    let mut expired = store
        .pending_expired(now.minus(bounds.max_age), BATCH)
        .await?;
    if expired.read() == 0 {
        // Over the count: the oldest go first, whatever their age.
        let over = store.pending_count().await? - i64::from(bounds.max_count);
        if over > 0 {
            expired = store
                .pending_expired(now.plus(Duration::from_secs(86_400)), over.min(BATCH))
                .await?;
        }
    }
    // (event id, room id as stored, room, event): a row with an invalid id is never retried,
    // only mirrored as it is.
    let settle = expired
        .rows
        .iter()
        .map(|p| {
            let room = Some(&p.room_id);
            (
                p.event_id.as_str(),
                p.room_id.as_str(),
                room,
                p.event.as_str(),
            )
        })
        .chain(expired.bad.iter().map(|b| {
            let r = &b.raw;
            (
                r.event_id.as_str(),
                r.room_id.as_str(),
                None,
                r.event.as_str(),
            )
        }));
    for (event_id, room_id, room, event) in settle {
        let Ok(raw) = RawValue::from_string(event.to_owned()) else {
            store.pending_remove(event_id).await?;
            continue;
        };
        let decrypted = match room {
            Some(room) => crypto.retry_pending(&raw, room).await?,
            None => None,
        };
        let outcome = if decrypted.is_some() {
            "late"
        } else {
            "expired"
        };
        let event: &RawValue = decrypted.as_deref().unwrap_or(&raw);
        mirror.apply_late(&[event]).await?;
        store.pending_remove(event_id).await?;
        metrics.crypto(outcome);
        if outcome == "expired" {
            tracing::warn!(%event_id, %room_id, "no room key arrived in time; mirrored as [encrypted]");
        }
    }
    Ok(expired.read())
}

/// Runs [`expire`] every `every` until cancelled.
pub async fn run(
    crypto: Arc<Crypto>,
    mirror: Arc<Mirror>,
    store: Store,
    metrics: Arc<Metrics>,
    bounds: Bounds,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = expire(
            &crypto,
            &mirror,
            &store.crypto(),
            &metrics,
            bounds,
            Ts::now(),
        )
        .await
        {
            tracing::warn!(%error, "cannot settle pending encrypted events; will retry");
        }
    }
}
