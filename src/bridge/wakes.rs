//! Wake-ups across replicas. Work a standby accepts (an agent API send, a retried run, a
//! follow-up) is a row the leader's workers would find at their next poll; a standby forwards
//! its local wake-ups as a PostgreSQL `NOTIFY`, and the leader turns them back into local
//! ones, so a send through a standby goes out as promptly as one through the leader. A lost
//! notification only costs the poll interval: the rows are the truth.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    bridge::mirror::Wakers,
    db::{Pool, Store},
};

/// The channel of the wake-ups.
pub const CHANNEL: &str = "daarion_bridge_wake";

/// The wakers by the names they travel under.
fn named(wakers: &Wakers) -> [(&'static str, &Arc<Notify>); 3] {
    [
        ("outbox", &wakers.outbox),
        ("runs", &wakers.runs),
        ("jobs", &wakers.jobs),
    ]
}

/// On a standby: sends every local wake-up to the leader until cancelled (PostgreSQL only).
pub async fn forward(store: Store, wakers: Wakers, cancel: CancellationToken) {
    let Pool::Pg(pool) = store.pool().clone() else {
        return cancel.cancelled().await;
    };
    let [(a, wa), (b, wb), (c, wc)] = named(&wakers);
    loop {
        let kind = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wa.notified() => a,
            _ = wb.notified() => b,
            _ = wc.notified() => c,
        };
        if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(kind)
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, kind, "cannot forward a wake-up to the leader; it polls");
        }
    }
}

/// On the leader: turns the standbys' wake-ups into local ones until cancelled.
pub async fn listen(store: Store, wakers: Wakers, cancel: CancellationToken) {
    let Pool::Pg(pool) = store.pool().clone() else {
        return cancel.cancelled().await;
    };
    let mut backoff = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "cannot LISTEN for wake-ups; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if listener.listen(CHANNEL).await.is_err() {
            continue;
        }
        backoff = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                note = listener.recv() => match note {
                    Ok(note) => {
                        if let Some((_, waker)) =
                            named(&wakers).into_iter().find(|(n, _)| *n == note.payload())
                        {
                            waker.notify_one();
                        }
                    }
                    Err(_) => break,
                },
            }
        }
    }
}
