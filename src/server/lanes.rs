//! The connection budget and the homeserver's lane. At most `server.max_connections`
//! connections are open; at the limit, a new connection closes the **oldest connection not
//! proven to be the homeserver's** instead of being refused. A connection is proven once one of
//! its requests carried the hs_token. So connections held by anyone else (anonymous clients,
//! agent keys dripping bodies) can never keep the homeserver's transactions out: its new
//! connection always finds room, and its proven ones are never evicted.
//!
//! Why eviction and not a reserved pool: who a connection belongs to is only known once its
//! first request's headers arrived, after it was accepted; a reserved pool would have to accept
//! unknown connections anyway.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio_util::sync::CancellationToken;

/// Marks, from a request, that its connection is the homeserver's (set by the hs_token check).
/// Requests carry it as an extension.
#[derive(Clone, Debug, Default)]
pub struct ConnectionTag(Arc<AtomicBool>);

impl ConnectionTag {
    /// The homeserver authenticated on this connection: it is never evicted.
    pub fn mark_homeserver(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the homeserver authenticated on this connection.
    pub fn is_homeserver(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct Slot {
    tag: ConnectionTag,
    close: CancellationToken,
}

/// The open connections, oldest first (ids grow with acceptance).
pub struct Lanes {
    max: usize,
    open: Mutex<(u64, BTreeMap<u64, Slot>)>,
}

/// What admitting a connection did.
pub enum Admission {
    /// Admitted, with room to spare.
    Admitted(Ticket),
    /// Admitted after closing the oldest connection not proven to be the homeserver's.
    Evicted(Ticket),
    /// Refused: every open connection is the homeserver's.
    Refused,
}

/// An admitted connection's place; dropping it frees the place.
pub struct Ticket {
    lanes: Arc<Lanes>,
    id: u64,
    /// Its tag, for its requests.
    pub tag: ConnectionTag,
    /// Cancelled when the connection is evicted: close it at once.
    pub close: CancellationToken,
}

impl Lanes {
    /// A budget of `max` connections (at least one).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: Mutex::new((0, BTreeMap::new())),
        })
    }

    /// Admits a new connection, evicting the oldest unproven one at the limit.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut guard = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (next, open) = &mut *guard;
        let mut evicted = false;
        if open.len() >= self.max {
            let victim = open
                .iter()
                .find(|(_, slot)| !slot.tag.is_homeserver())
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Admission::Refused;
            };
            if let Some(slot) = open.remove(&victim) {
                slot.close.cancel();
            }
            evicted = true;
        }
        *next += 1;
        let id = *next;
        let tag = ConnectionTag::default();
        let close = CancellationToken::new();
        open.insert(
            id,
            Slot {
                tag: tag.clone(),
                close: close.clone(),
            },
        );
        let ticket = Ticket {
            lanes: self.clone(),
            id,
            tag,
            close,
        };
        if evicted {
            Admission::Evicted(ticket)
        } else {
            Admission::Admitted(ticket)
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).1.len()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // An evicted connection's slot is gone already: removing it again is a no-op.
        let mut guard = self.lanes.open.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(a: Admission) -> Option<Ticket> {
        match a {
            Admission::Admitted(t) | Admission::Evicted(t) => Some(t),
            Admission::Refused => None,
        }
    }

    #[test]
    fn the_oldest_unproven_connection_makes_room() {
        let lanes = Lanes::new(3);
        let first = ticket(lanes.admit()).unwrap();
        first.tag.mark_homeserver();
        let second = ticket(lanes.admit()).unwrap();
        let third = ticket(lanes.admit()).unwrap();
        assert!(matches!(lanes.admit(), Admission::Evicted(_)));
        // The homeserver's connection stays; the oldest other one is told to close.
        assert!(!first.close.is_cancelled());
        assert!(second.close.is_cancelled());
        assert!(!third.close.is_cancelled());
        assert_eq!(
            lanes.open(),
            2,
            "the evicted ticket above was dropped at once"
        );
    }

    #[test]
    fn only_homeserver_connections_refuse_newcomers() {
        let lanes = Lanes::new(2);
        let a = ticket(lanes.admit()).unwrap();
        let b = ticket(lanes.admit()).unwrap();
        a.tag.mark_homeserver();
        b.tag.mark_homeserver();
        assert!(matches!(lanes.admit(), Admission::Refused));
        drop(b);
        assert!(matches!(lanes.admit(), Admission::Admitted(_)));
        assert_eq!(lanes.open(), 1);
        drop(a);
        assert_eq!(lanes.open(), 0);
    }
}
