//! Agents as Matrix users: registration and profile of puppets, and the durable, per-room
//! ordered outbox through which everything a puppet sends reaches the homeserver exactly once.

pub mod content;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedEventId, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UserId};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::{
    config::Config,
    db::{
        Batch, Edit, NewMessage, SessionChange, SessionOp, Store, StoreError, StoredAgent,
        agents::{NewOutbox, OutboxItem, PuppetState},
        types::Ts,
    },
    homeserver::{Homeserver, HsError},
    ids::OutboxId,
    mirror::{Mirror, preview},
};

/// Errors of puppet operations.
#[derive(Debug, thiserror::Error)]
pub enum PuppetError {
    #[error(transparent)]
    Hs(#[from] HsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl PuppetError {
    pub fn is_transient(&self) -> bool {
        match self {
            PuppetError::Hs(e) => e.is_transient(),
            PuppetError::Store(_) => true,
            PuppetError::Other(_) => false,
        }
    }
}

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

pub struct Puppets {
    hs: Homeserver,
    store: Store,
    config: Arc<Config>,
    mirror: Arc<Mirror>,
    /// Puppets known to exist on the homeserver with an up-to-date profile.
    ready: Mutex<HashSet<OwnedUserId>>,
    /// Rooms with a running delivery worker, and how to wake it.
    workers: Mutex<HashMap<OwnedRoomId, Arc<Notify>>>,
    /// Woken whenever an outbox item is finished (sent or failed).
    pub finished: Notify,
}

impl Puppets {
    pub fn new(
        hs: Homeserver,
        store: Store,
        config: Arc<Config>,
        mirror: Arc<Mirror>,
    ) -> Arc<Self> {
        Arc::new(Self {
            hs,
            store,
            config,
            mirror,
            ready: Mutex::default(),
            workers: Mutex::default(),
            finished: Notify::new(),
        })
    }

    pub fn hs(&self) -> &Homeserver {
        &self.hs
    }

    /// Starts delivery workers for rooms with pending sends (after a restart).
    pub async fn resume(self: &Arc<Self>) -> Result<(), StoreError> {
        for room in self.store.outbox_pending_rooms().await? {
            if let Ok(room) = RoomId::parse(&room) {
                self.wake(&room);
            }
        }
        Ok(())
    }

    /// Registers the puppet once and keeps its display name and avatar in sync with the agent.
    pub async fn ensure_ready(&self, agent: &StoredAgent) -> Result<OwnedUserId, PuppetError> {
        let user =
            UserId::parse(&agent.matrix_id).map_err(|e| PuppetError::Other(e.to_string()))?;
        if self.ready.lock().expect("ready lock").contains(&user) {
            return Ok(user);
        }
        let mut state = self.store.puppet_state(agent.id).await?;
        let before = state.clone();
        if !state.registered {
            self.hs.ensure_registered(user.localpart()).await?;
            state.registered = true;
        }
        if state.display_name.as_deref() != Some(agent.name.as_str()) {
            self.hs.set_display_name(&user, &agent.name).await?;
            state.display_name = Some(agent.name.clone());
        }
        let avatar = self.config.agent_decl(&user).and_then(|d| d.avatar.clone());
        if let Some(source) = avatar
            && state.avatar_source.as_deref() != Some(source.as_str())
        {
            let mxc = self.avatar_mxc(&source).await?;
            self.hs.set_avatar_url(&user, mxc.clone()).await?;
            state.avatar_url = Some(mxc.to_string());
            state.avatar_source = Some(source);
        }
        if !same(&before, &state) {
            self.store.set_puppet_state(agent.id, &state).await?;
        }
        self.ready.lock().expect("ready lock").insert(user.clone());
        Ok(user)
    }

    /// Reloads the agents and re-applies the profile of every registered puppet whose display
    /// name no longer matches its agent's name. Returns how many were updated.
    pub async fn sync_profiles(&self, mirror: &Mirror) -> Result<usize, PuppetError> {
        mirror.reload_agents().await?;
        let mut updated = 0;
        for agent in mirror.agents() {
            let state = self.store.puppet_state(agent.id).await?;
            if !state.registered || state.display_name.as_deref() == Some(agent.name.as_str()) {
                continue;
            }
            let Ok(user) = UserId::parse(&agent.matrix_id) else {
                continue;
            };
            self.profile_changed(&user);
            self.ensure_ready(&agent).await?;
            tracing::info!(user_id = %user, name = %agent.name, "puppet profile updated");
            updated += 1;
        }
        Ok(updated)
    }

    /// Forgets profile state so the next action re-syncs it (the agent row changed).
    pub fn profile_changed(&self, user: &UserId) {
        self.ready.lock().expect("ready lock").remove(user);
    }

    async fn avatar_mxc(&self, source: &str) -> Result<OwnedMxcUri, PuppetError> {
        if source.starts_with("mxc://") {
            return Ok(OwnedMxcUri::from(source));
        }
        let bytes = tokio::fs::read(source)
            .await
            .map_err(|e| PuppetError::Other(format!("cannot read avatar {source}: {e}")))?;
        let mime = match source
            .rsplit('.')
            .next()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("png") => "image/png",
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("gif") => "image/gif",
            Some("webp") => "image/webp",
            _ => "application/octet-stream",
        };
        let name = std::path::Path::new(source)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("avatar");
        Ok(self.hs.upload(bytes, mime, name).await?)
    }

    /// Joins the room as the puppet unless the mirror already knows it is a member: actions
    /// such as typing fail, or worse are silently dropped, before the join.
    pub async fn ensure_joined(
        &self,
        room: &OwnedRoomId,
        agent: &StoredAgent,
        user: &UserId,
    ) -> Result<(), PuppetError> {
        if self.store.agent_in_room(room.as_str(), agent.id).await? {
            return Ok(());
        }
        self.hs.join(room, user).await?;
        Ok(())
    }

    /// Queues a send and wakes the room's worker. The client transaction id is derived from
    /// the agent, room and content (plus the idempotency key), so every retry reuses it.
    pub async fn enqueue(
        self: &Arc<Self>,
        agent: &StoredAgent,
        room: &RoomId,
        event_type: &str,
        content: serde_json::Value,
        redacts: Option<String>,
        idempotency_key: Option<String>,
    ) -> Result<(OutboxItem, bool), StoreError> {
        let mut hash = Sha256::new();
        hash.update(agent.id.0.as_bytes());
        hash.update(room.as_str().as_bytes());
        hash.update(event_type.as_bytes());
        hash.update(content.to_string().as_bytes());
        hash.update(redacts.as_deref().unwrap_or("").as_bytes());
        match &idempotency_key {
            Some(key) => hash.update(key.as_bytes()),
            // Without a key, two identical sends are two messages: make them distinct.
            None => hash.update(OutboxId::new().0.as_bytes()),
        }
        let txn_id = format!("daarion-{}", &hex(&hash.finalize())[..40]);
        let item = NewOutbox {
            agent_id: agent.id,
            room_id: room.to_string(),
            kind: if redacts.is_some() {
                "redaction"
            } else {
                "message"
            },
            event_type: event_type.to_owned(),
            content,
            redacts,
            txn_id,
            idempotency_key,
        };
        let queued = self.store.outbox_enqueue(&item).await?;
        self.wake(room);
        Ok(queued)
    }

    /// Waits until the item is sent or failed, or `timeout` passes; returns its latest state.
    pub async fn wait(&self, id: OutboxId, timeout: Duration) -> Result<OutboxItem, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let finished = self.finished.notified();
            let item = self
                .store
                .outbox_get(id)
                .await?
                .expect("queued items are never deleted");
            if item.status != "pending" {
                return Ok(item);
            }
            if tokio::time::timeout_at(deadline, finished).await.is_err() {
                return Ok(item);
            }
        }
    }

    fn wake(self: &Arc<Self>, room: &RoomId) {
        let mut workers = self.workers.lock().expect("workers lock");
        if let Some(notify) = workers.get(room) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        workers.insert(room.to_owned(), notify.clone());
        let this = self.clone();
        let room = room.to_owned();
        tokio::spawn(async move { this.worker(room, notify).await });
    }

    /// Delivers a room's queue in order, one item at a time, retrying transient failures.
    async fn worker(self: Arc<Self>, room: OwnedRoomId, notify: Arc<Notify>) {
        loop {
            let next = match self.store.outbox_next(room.as_str()).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(room_id = %room, %error, "outbox unreadable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(item) = next else {
                // Idle: wait for new work (or re-check now and then in case a wake was missed).
                let _ = tokio::time::timeout(Duration::from_secs(30), notify.notified()).await;
                continue;
            };
            self.deliver(&room, item).await;
            self.finished.notify_waiters();
        }
    }

    async fn deliver(&self, room: &OwnedRoomId, item: OutboxItem) {
        let mut delay = BACKOFF_START;
        loop {
            match self.try_deliver(room, &item).await {
                Ok(event_id) => {
                    tracing::info!(room_id = %room, event_id = %event_id, txn_id = %item.txn_id, "puppet send delivered");
                    return;
                }
                Err(error) if error.is_transient() => {
                    let wait = match &error {
                        PuppetError::Hs(e) => e.retry_after().unwrap_or(delay),
                        _ => delay,
                    };
                    tracing::warn!(room_id = %room, txn_id = %item.txn_id, %error, retry_in_ms = wait.as_millis() as u64, "puppet send failed; will retry");
                    let _ = self
                        .store
                        .outbox_attempt(item.id, Some(&error.to_string()), false)
                        .await;
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
                Err(error) => {
                    tracing::error!(room_id = %room, txn_id = %item.txn_id, %error, "puppet send failed for good");
                    if let Err(e) = self
                        .store
                        .outbox_attempt(item.id, Some(&error.to_string()), true)
                        .await
                    {
                        tracing::error!(error = %e, "cannot record the failure; will retry the send");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return;
                }
            }
        }
    }

    async fn try_deliver(
        &self,
        room: &OwnedRoomId,
        item: &OutboxItem,
    ) -> Result<OwnedEventId, PuppetError> {
        let agent = self.mirror.agent(&item.agent_matrix_id).ok_or_else(|| {
            PuppetError::Other(format!("agent {} no longer exists", item.agent_matrix_id))
        })?;
        let user = self.ensure_ready(&agent).await?;
        self.ensure_joined(room, &agent, &user).await?;
        let event_id = match &item.redacts {
            Some(target) => {
                let target = OwnedEventId::try_from(target.as_str())
                    .map_err(|e| PuppetError::Other(e.to_string()))?;
                let reason = item
                    .content
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .map(str::to_owned);
                self.hs
                    .redact(room, &user, target, &item.txn_id, reason)
                    .await?
            }
            None => {
                self.hs
                    .send_event(room, &user, &item.txn_id, &item.event_type, &item.content)
                    .await?
            }
        };
        // Mirror what was sent at once (the echo in a later transaction is then a no-op), and
        // count it as the agent's activity in the channel.
        let batch = self.mirror_sent(room, &agent, item, &event_id);
        self.store.apply(&batch).await?;
        self.store.outbox_sent(item.id, event_id.as_str()).await?;
        Ok(event_id)
    }

    fn mirror_sent(
        &self,
        room: &RoomId,
        agent: &StoredAgent,
        item: &OutboxItem,
        event_id: &OwnedEventId,
    ) -> Batch {
        let now = Ts::now();
        let mut batch = Batch::default();
        batch.sessions.push(SessionOp {
            room_id: room.to_string(),
            agent: Some(agent.matrix_id.clone()),
            change: SessionChange::Activate,
            at: now,
        });
        if item.redacts.is_some() || item.event_type != "m.room.message" {
            return batch;
        }
        let Ok(content) = serde_json::from_value::<
            ruma::events::room::message::RoomMessageEventContent,
        >(item.content.clone()) else {
            return batch;
        };
        let localpart = agent
            .matrix_id
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap_or_default();
        let max = self.config.bridge.preview_chars;
        match &content.relates_to {
            Some(ruma::events::room::message::Relation::Replacement(r)) => {
                batch.edits.push(Edit {
                    target_event_id: r.event_id.to_string(),
                    sender: agent.matrix_id.clone(),
                    preview: preview::truncate(
                        &preview::of_msgtype(&r.new_content.msgtype, localpart, false),
                        max,
                    ),
                    at: now,
                });
            }
            _ => batch.messages.push(NewMessage {
                room_id: room.to_string(),
                event_id: event_id.to_string(),
                sender: agent.matrix_id.clone(),
                is_agent: true,
                preview: preview::truncate(
                    &preview::of_msgtype(&content.msgtype, localpart, false),
                    max,
                ),
                at: now,
                thread_root: match &content.relates_to {
                    Some(ruma::events::room::message::Relation::Thread(t)) => {
                        Some(t.event_id.to_string())
                    }
                    _ => None,
                },
            }),
        }
        batch
    }
}

fn same(a: &PuppetState, b: &PuppetState) -> bool {
    a.registered == b.registered
        && a.display_name == b.display_name
        && a.avatar_url == b.avatar_url
        && a.avatar_source == b.avatar_source
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Re-syncs puppet profiles when agent rows change (a name edited by another service, say):
/// every minute, see [`Puppets::sync_profiles`].
pub async fn watch_profiles(puppets: Arc<Puppets>, mirror: Arc<Mirror>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(error) = puppets.sync_profiles(&mirror).await {
            tracing::warn!(%error, "cannot re-sync puppet profiles");
        }
    }
}
