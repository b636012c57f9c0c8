//! The connection budget and the homeserver's lane. At most `server.max_connections`
//! connections are open; at the limit, a new connection closes the **oldest connection not
//! proven to be the homeserver's** instead of being refused. A connection is proven once one of
//! its requests carried the hs_token. So connections held by anyone else (anonymous clients,
//! agent keys dripping bodies) can never keep the homeserver's transactions out: its new
//! connection always finds room, and its proven ones are never evicted.
//!
//! Among the unproven, a connection that has sent a request that did not prove it goes before
//! one that has sent nothing yet: a fresh connection of the homeserver is unproven only until
//! its first request is routed, and under a flood (and a loaded CPU) that can take longer than
//! the time it takes a few hundred newer connections to arrive.
//!
//! Why eviction and not a reserved pool: who a connection belongs to is only known once its
//! first request's headers arrived, after it was accepted; a reserved pool would have to accept
//! unknown connections anyway.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
};

use tokio_util::sync::CancellationToken;

/// No request yet.
const UNSEEN: u8 = 0;
/// A request came, not (yet) the homeserver's.
const SEEN: u8 = 1;
/// The homeserver authenticated on it.
const HOMESERVER: u8 = 2;

/// Marks, from a request, what its connection is: seen once a request arrives, the
/// homeserver's once the hs_token check passes. Requests carry it as an extension.
#[derive(Clone, Debug, Default)]
pub struct ConnectionTag(Arc<AtomicU8>);

impl ConnectionTag {
    /// The homeserver authenticated on this connection: it is never evicted.
    pub fn mark_homeserver(&self) {
        self.0.store(HOMESERVER, Ordering::Relaxed);
    }

    /// A request arrived on this connection (it is evicted before connections that have sent
    /// nothing yet).
    pub fn mark_seen(&self) {
        let _ = self
            .0
            .compare_exchange(UNSEEN, SEEN, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the homeserver authenticated on this connection.
    pub fn is_homeserver(&self) -> bool {
        self.0.load(Ordering::Relaxed) == HOMESERVER
    }

    fn state(&self) -> u8 {
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
            // The oldest that sent a request that did not prove it; else the oldest that has
            // sent nothing yet.
            let oldest = |state: u8| {
                open.iter()
                    .find(|(_, slot)| slot.tag.state() == state)
                    .map(|(id, _)| *id)
            };
            let victim = oldest(SEEN).or_else(|| oldest(UNSEEN));
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
    fn connections_that_sent_nothing_yet_go_last() {
        let lanes = Lanes::new(3);
        let a = ticket(lanes.admit()).unwrap();
        a.tag.mark_seen();
        let b = ticket(lanes.admit()).unwrap();
        let c = ticket(lanes.admit()).unwrap();
        c.tag.mark_seen();
        // a and c sent requests (not the homeserver's); b, older than c, has sent nothing yet.
        let d = ticket(lanes.admit()).unwrap();
        assert!(a.close.is_cancelled() && !b.close.is_cancelled());
        let e = ticket(lanes.admit()).unwrap();
        assert!(c.close.is_cancelled() && !b.close.is_cancelled());
        // Only connections that sent nothing are left: the oldest of them goes.
        let _f = ticket(lanes.admit()).unwrap();
        assert!(b.close.is_cancelled() && !d.close.is_cancelled() && !e.close.is_cancelled());
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
