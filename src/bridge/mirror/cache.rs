//! What the mirror remembers between transactions (mirrored rooms, known senders), and the
//! per-room locks that serialise planning: a state read after a join and a transaction never
//! plan from the same cached room state concurrently, so no commit overwrites another's cache.

use std::{
    collections::BTreeSet,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use foldhash::{HashMap, HashSet};
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use tokio::sync::MutexGuard;

use crate::{
    db::PowerLevels,
    model::{
        NameSource, Visibility,
        ids::{AgentId, ChannelId, MicrodaoId, UserRowId},
    },
};

/// How many rooms or senders a cache holds before starting afresh (bounds memory; a miss
/// costs one read).
const CAPACITY: usize = 100_000;

/// What the mirror remembers of a mirrored room.
#[derive(Debug, Clone)]
pub struct RoomState {
    /// The channel.
    pub channel_id: ChannelId,
    /// Its microDAO.
    pub microdao_id: MicrodaoId,
    /// `channels.name`.
    pub name: String,
    /// Where the name came from.
    pub name_source: NameSource,
    /// The canonical alias.
    pub alias: Option<String>,
    /// `channels.topic`.
    pub topic: Option<String>,
    /// `channels.visibility`.
    pub visibility: Visibility,
    /// Visibility set by `city.daarion.channel`.
    pub visibility_pinned: bool,
    /// The room's power levels.
    pub power: PowerLevels,
    /// An invite marked the room as a direct chat.
    pub is_direct: bool,
    /// Agents that are active members.
    pub agents: BTreeSet<AgentId>,
}

/// The mirror's caches. Each holds only what a commit wrote or a read returned.
#[derive(Default)]
pub(crate) struct Caches {
    rooms: Mutex<HashMap<OwnedRoomId, Arc<RoomState>>>,
    users: Mutex<HashMap<OwnedUserId, UserRowId>>,
    ignored_logged: Mutex<HashSet<OwnedRoomId>>,
}

/// Locks a std mutex, recovering from poisoning: every critical section here leaves the map
/// consistent (single insertions or clears), so a panic elsewhere cannot corrupt it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Caches {
    /// The cached state of a room (shared: a planner copies it only when an event changes it).
    pub(crate) fn room(&self, room: &RoomId) -> Option<Arc<RoomState>> {
        lock(&self.rooms).get(room).cloned()
    }

    /// Learns committed room states.
    pub(crate) fn remember_rooms(
        &self,
        rooms: impl IntoIterator<Item = (OwnedRoomId, Arc<RoomState>)>,
    ) {
        let mut cache = lock(&self.rooms);
        if cache.len() > CAPACITY {
            cache.clear();
        }
        cache.extend(rooms);
    }

    /// Forgets a room (its row changed outside the mirror).
    pub(crate) fn forget_room(&self, room: &RoomId) {
        lock(&self.rooms).remove(room);
    }

    /// The `users` row of a sender, if known.
    pub(crate) fn user(&self, user: &ruma::UserId) -> Option<UserRowId> {
        lock(&self.users).get(user).copied()
    }

    /// Learns committed (or read) `users` rows.
    pub(crate) fn remember_users(&self, users: impl IntoIterator<Item = (OwnedUserId, UserRowId)>) {
        let mut cache = lock(&self.users);
        if cache.len() > CAPACITY {
            cache.clear();
        }
        cache.extend(users);
    }

    /// Whether this room's "ignored" log line is new (logged once per room).
    pub(crate) fn first_ignored(&self, room: &RoomId) -> bool {
        let mut seen = lock(&self.ignored_logged);
        if seen.len() > CAPACITY {
            seen.clear();
        }
        seen.insert(room.to_owned())
    }
}

/// Sharded per-room async locks: a transaction takes the shards of all its rooms in ascending
/// order (no deadlock), bounded memory whatever the number of rooms.
pub(crate) struct RoomLocks {
    shards: Vec<tokio::sync::Mutex<()>>,
}

impl RoomLocks {
    /// `n` shards.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            shards: (0..n.max(1)).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// Locks every room of `rooms`.
    pub(crate) async fn lock<'a>(
        &self,
        rooms: impl IntoIterator<Item = &'a RoomId>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let shards: BTreeSet<usize> = rooms
            .into_iter()
            .map(|room| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                room.hash(&mut h);
                (h.finish() as usize) % self.shards.len()
            })
            .collect();
        let mut guards = Vec::with_capacity(shards.len());
        for shard in shards {
            guards.push(self.shards[shard].lock().await);
        }
        guards
    }
}
