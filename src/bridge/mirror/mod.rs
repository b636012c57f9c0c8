//! The mirror: applies a homeserver transaction (or a room's state, or a delivered puppet send)
//! to the DAARION schema. It locks the rooms involved, loads what the planner needs (cache
//! first), plans a [`Batch`](crate::db::Batch) in memory, commits it in one database
//! transaction, and only then updates its caches, counts the events and wakes the workers
//! that have new durable work. A batch the database refuses is applied event by event, so one
//! bad event is skipped and counted and never stalls the homeserver's queue.

pub(crate) mod cache;
pub mod content;
pub mod event;
pub mod lifecycle;
pub mod parts;
pub mod preview;
mod sent;

use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use self::{
    cache::{Caches, RoomLocks, RoomState},
    event::{DAARION_CHANNEL, DaarionChannelContent, Envelope},
};
use super::{
    agents::AgentRegistry,
    planner::{MirrorSettings, Outcome, Plan, PlanInput, Planner, touched},
};
use crate::{
    db::{Store, StoreError, TxnRecord, pick_slug},
    metrics::Metrics,
    model::{
        NameSource, Namespace,
        ids::{MicrodaoId, UserRowId},
    },
};

/// Outcome of applying one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Effects committed.
    Committed,
    /// The transaction was already applied; nothing changed.
    Replay,
}

/// Wakes the workers that consume durable work (they also poll, so a lost wake-up only delays).
#[derive(Clone, Default)]
pub struct Wakers {
    /// Follow-up jobs.
    pub jobs: Arc<Notify>,
    /// Trigger candidates and runs.
    pub runs: Arc<Notify>,
    /// Puppet sends.
    pub outbox: Arc<Notify>,
}

/// Shards of the per-room lock.
const LOCK_SHARDS: usize = 256;

/// Applies what happens in Matrix to the DAARION schema.
pub struct Mirror {
    store: Store,
    registry: Arc<AgentRegistry>,
    namespace: Namespace,
    metrics: Arc<Metrics>,
    settings: MirrorSettings,
    caches: Caches,
    locks: RoomLocks,
    wakers: Wakers,
}

/// A parsed event with its raw JSON.
struct Parsed<'a> {
    env: Envelope<'a>,
    raw: &'a RawValue,
}

impl Mirror {
    /// The mirror over `store`.
    pub fn new(
        store: Store,
        registry: Arc<AgentRegistry>,
        metrics: Arc<Metrics>,
        settings: MirrorSettings,
        wakers: Wakers,
    ) -> Self {
        Self {
            namespace: registry.namespace().clone(),
            store,
            registry,
            metrics,
            settings,
            caches: Caches::default(),
            locks: RoomLocks::new(LOCK_SHARDS),
            wakers,
        }
    }

    /// Forgets a room's cached state (its channel row changed outside the mirror).
    pub fn forget_room(&self, room: &RoomId) {
        self.caches.forget_room(room);
    }

    /// Applies one homeserver transaction. Events are applied in order; malformed, unknown or
    /// invalid events are counted and skipped.
    pub async fn apply_transaction(
        &self,
        txn_id: &str,
        events: &[&RawValue],
    ) -> Result<Applied, StoreError> {
        self.apply(Some(txn_id), None, events, false).await
    }

    /// Applies events that arrive outside a transaction (encrypted events whose key came late,
    /// or that are given up on): like a transaction's, without a transaction record.
    pub async fn apply_late(&self, events: &[&RawValue]) -> Result<(), StoreError> {
        self.apply(None, None, events, false).await.map(|_| ())
    }

    /// Applies a room's full state read from the homeserver (after a join).
    pub async fn apply_room_state(
        &self,
        room_id: &RoomId,
        state: &[&RawValue],
    ) -> Result<(), StoreError> {
        self.apply(None, Some(room_id), state, true)
            .await
            .map(|_| ())
    }

    async fn apply(
        &self,
        txn_id: Option<&str>,
        room: Option<&RoomId>,
        raws: &[&RawValue],
        sync: bool,
    ) -> Result<Applied, StoreError> {
        // What identifies a transaction besides its txnId: its events. A retry carries the same
        // events (only `unsigned.age` changes), while Synapse on SQLite restarts its txnIds at 1
        // after a restart and sends new events under old ids: those must not count as replays.
        let mut fingerprint = Sha256::new();
        let mut parsed = Vec::with_capacity(raws.len());
        let mut unparsed = 0;
        for raw in raws {
            match serde_json::from_str::<Envelope<'_>>(raw.get()) {
                Ok(mut env) => {
                    fingerprint.update(env.event_id.as_bytes());
                    fingerprint.update(b"\n");
                    if env.room_id.is_none() {
                        env.room_id = room.map(ToOwned::to_owned);
                    }
                    parsed.push(Parsed { env, raw });
                }
                Err(error) => {
                    fingerprint.update(raw.get().as_bytes());
                    fingerprint.update(b"\n");
                    tracing::warn!(%error, "skipping malformed event");
                    unparsed += 1;
                }
            }
        }
        let txn = txn_id.map(|id| TxnRecord {
            txn_hash: hex(&Sha256::digest(id.as_bytes())),
            fingerprint: hex(&fingerprint.finalize()),
            event_count: i32::try_from(raws.len()).unwrap_or(i32::MAX),
        });
        let envelopes: Vec<&Envelope<'_>> = parsed.iter().map(|p| &p.env).collect();
        let rooms: Vec<&RoomId> = envelopes
            .iter()
            .filter_map(|e| e.room_id.as_deref())
            .collect();
        let _locks = self.locks.lock(rooms).await;
        let all: Vec<&Parsed<'_>> = parsed.iter().collect();
        match self
            .plan_and_commit(txn.clone(), &all, unparsed, sync)
            .await
        {
            Err(StoreError::Rejected(error)) => {
                tracing::warn!(%error, events = parsed.len(), "the database refused the transaction; applying its events one by one");
                self.isolate(txn, &all, unparsed, sync).await
            }
            other => other,
        }
    }

    /// Applies each event alone, skipping (and counting) those the database refuses, then
    /// records the transaction. Only a database that is down fails it.
    async fn isolate(
        &self,
        txn: Option<TxnRecord>,
        events: &[&Parsed<'_>],
        unparsed: usize,
        sync: bool,
    ) -> Result<Applied, StoreError> {
        for event in events {
            match self.plan_and_commit(None, &[event], 0, sync).await {
                Ok(_) => {}
                Err(StoreError::Rejected(error)) => {
                    tracing::warn!(event_id = %event.env.event_id, kind = %event.env.kind, %error, "event refused by the database; skipped");
                    self.metrics.event("any", Outcome::Rejected.as_str());
                }
                Err(other) => return Err(other),
            }
        }
        for _ in 0..unparsed {
            self.metrics.event("unknown", Outcome::Malformed.as_str());
        }
        let Some(txn) = txn else {
            return Ok(Applied::Committed);
        };
        let batch = crate::db::Batch {
            txn: Some(txn),
            ..Default::default()
        };
        Ok(if self.store.apply(&batch).await? {
            Applied::Committed
        } else {
            Applied::Replay
        })
    }

    async fn plan_and_commit(
        &self,
        txn: Option<TxnRecord>,
        events: &[&Parsed<'_>],
        unparsed: usize,
        sync: bool,
    ) -> Result<Applied, StoreError> {
        let input = self.load(events, sync).await?;
        let mut planner = Planner::new(input);
        for _ in 0..unparsed {
            planner.count_unparsed();
        }
        for event in events {
            planner.event(&event.env, event.raw);
        }
        let mut plan = planner.finish(txn);
        if plan.batch.txn.is_none() && plan.batch.is_empty() {
            self.count(&plan);
            return Ok(Applied::Committed);
        }
        self.resolve_slugs(&mut plan).await?;
        if !self.store.apply(&plan.batch).await? {
            return Ok(Applied::Replay);
        }
        // Committed: count what it did (a replay or a failed write counts nothing), and let the
        // caches learn what the database holds.
        self.count(&plan);
        for room in &plan.ignored {
            self.log_ignored(room, "no channel, no city.daarion.channel state, no invite");
        }
        self.caches.remember_rooms(plan.rooms);
        self.caches.remember_users(plan.users);
        if plan.wakes.jobs {
            self.wakers.jobs.notify_one();
        }
        if plan.wakes.runs {
            self.wakers.runs.notify_one();
        }
        Ok(Applied::Committed)
    }

    fn count(&self, plan: &Plan) {
        // A handful of distinct (type, outcome) pairs per transaction: a linear scan beats a map.
        let mut sums: Vec<(&'static str, &'static str, u64)> = Vec::new();
        for (kind, outcome) in &plan.outcomes {
            let outcome = outcome.as_str();
            match sums.iter_mut().find(|(k, o, _)| k == kind && *o == outcome) {
                Some(sum) => sum.2 += 1,
                None => sums.push((kind, outcome, 1)),
            }
        }
        for (kind, outcome, n) in sums {
            self.metrics.events_n(kind, outcome, n);
        }
        for outcome in &plan.media {
            self.metrics.media_part(outcome);
        }
    }

    /// Room states, senders and microDAOs the events need, from the caches, else with one
    /// query per kind.
    async fn load(&self, events: &[&Parsed<'_>], sync: bool) -> Result<PlanInput<'_>, StoreError> {
        let envelopes: Vec<&Envelope<'_>> = events.iter().map(|p| &p.env).collect();
        let (room_ids, user_ids) = touched(&envelopes);
        let mut rooms = HashMap::default();
        let mut missing = Vec::new();
        for room in room_ids {
            match self.caches.room(room) {
                Some(state) => {
                    rooms.insert(room.to_owned(), state);
                }
                None => missing.push(room.as_str()),
            }
        }
        for (room_id, stored, agents) in self.store.rooms().load(&missing).await? {
            let name_source = stored.name_source.unwrap_or(NameSource::Platform);
            rooms.insert(
                room_id,
                Arc::new(RoomState {
                    channel_id: stored.channel_id,
                    microdao_id: stored.microdao_id,
                    name: stored.name,
                    name_source,
                    alias: stored.canonical_alias,
                    topic: stored.topic,
                    visibility: stored.visibility,
                    visibility_pinned: stored.visibility_pinned.unwrap_or(true),
                    power: stored.power_levels.map(|j| j.0).unwrap_or_default(),
                    is_direct: stored.is_direct.unwrap_or(false),
                    agents: agents.into_iter().collect(),
                }),
            );
        }
        let mut users: HashMap<OwnedUserId, UserRowId> = HashMap::default();
        let mut unknown = Vec::new();
        let mut unknown_puppet = false;
        for user in &user_ids {
            let Ok(user) = UserId::parse(user.as_str()) else {
                continue;
            };
            if self.namespace.is_puppet(&user) {
                unknown_puppet |= self.registry.get(&user).is_none();
                continue;
            }
            if user == self.namespace.bot() {
                continue;
            }
            match self.caches.user(&user) {
                Some(id) => {
                    users.insert(user, id);
                }
                None => unknown.push(user),
            }
        }
        let unknown_refs: Vec<&str> = unknown.iter().map(|u| u.as_str()).collect();
        // Only what the database just returned is new to the cache: re-inserting every cached
        // sender would cost an allocation and a hash per sender per transaction.
        let mut found = Vec::new();
        for (user, id) in self.store.rooms().known_users(&unknown_refs).await? {
            found.push((user.clone(), id));
            users.insert(user, id);
        }
        if !found.is_empty() {
            self.caches.remember_users(found);
        }
        // A puppet the registry does not know may be an agent another service just created.
        if unknown_puppet {
            self.registry.reload().await?;
        }
        let mut microdaos = HashMap::default();
        let placed: HashSet<String> = envelopes
            .iter()
            .filter(|e| e.kind == DAARION_CHANNEL)
            .filter_map(|e| e.content::<DaarionChannelContent>().ok())
            .map(|c| c.microdao)
            // No row can hold NUL (PostgreSQL text cannot), so such a name places nothing; asking
            // the database would fail the statement.
            .filter(|external| !external.contains('\0'))
            .collect();
        for external in placed {
            if let Some(id) = self
                .store
                .rooms()
                .microdao_by_external_id(&external)
                .await?
            {
                microdaos.insert(external, id);
            }
        }
        Ok(PlanInput {
            namespace: &self.namespace,
            registry: &self.registry,
            settings: &self.settings,
            rooms,
            users,
            microdaos,
            sync,
        })
    }

    /// New channels get a slug free in their microDAO (the only read a new room costs).
    async fn resolve_slugs(&self, plan: &mut Plan) -> Result<(), StoreError> {
        let mut planned: HashMap<MicrodaoId, Vec<String>> = HashMap::default();
        for channel in &mut plan.batch.channels {
            let Some(create) = &mut channel.create else {
                continue;
            };
            let mut taken = self
                .store
                .rooms()
                .taken_slugs(create.microdao_id, &create.slug)
                .await?;
            let ours = planned.entry(create.microdao_id).or_default();
            taken.extend(ours.iter().cloned());
            let slug = pick_slug(&create.slug, &taken);
            ours.push(slug.clone());
            create.slug = slug.into();
        }
        Ok(())
    }

    /// Logs once per room that its events are ignored.
    fn log_ignored(&self, room_id: &RoomId, why: &str) {
        if self.caches.first_ignored(room_id) {
            tracing::info!(%room_id, why, "ignoring events of a room that is not mirrored");
        }
    }
}

/// Lower-case hex (the `hex` crate, already in the dependency tree, encodes from a table; two
/// digests per transaction go through here).
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    /// Stored transaction hashes must not change across versions: the table gives what
    /// `{:02x}` gave, byte for byte.
    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex(&bytes), expected);
        assert_eq!(super::hex(&[]), "");
    }
}
