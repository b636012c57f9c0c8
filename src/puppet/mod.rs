//! Agents as Matrix users: registration and profile of puppets (`profile`), what they send
//! ([`content`]), the durable, per-room ordered outbox through which every send reaches the
//! homeserver exactly once ([`outbox`]), media people sent, fetched as the agent ([`media`]),
//! and [`PuppetIntent`], the one way the rest of the
//! bridge acts as an agent (like bridgev2's `GhostIntent`).

mod bot;
pub mod content;
mod ghost;
mod history;
mod intent;
pub mod media;
pub mod outbox;
mod profile;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::RoomId;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

pub use self::{bot::BotIntent, ghost::GhostIntent, intent::PuppetIntent};
use crate::{
    db::{
        Store, StoreError,
        outbox::{Enqueued, NewOutbox, OutboxItem},
        text::clean_json,
    },
    matrix::{Homeserver, HsError},
    metrics::Metrics,
    model::{
        Agent, OutboxKind, OutboxStatus,
        ids::{AgentId, OutboxId},
    },
};

/// Idempotency-key prefix of a run's answer: `run:{run id}` (a run resumed after a restart finds
/// the answer it already queued instead of posting a second one).
pub const RUN_KEY_PREFIX: &str = "run:";

/// Errors of acting as a puppet.
#[derive(Debug, thiserror::Error)]
pub enum PuppetError {
    /// The homeserver refused or is unreachable.
    #[error(transparent)]
    Hs(#[from] HsError),
    /// The database refused or is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The agent no longer exists.
    #[error("agent {0} no longer exists")]
    Gone(String),
    /// The configured avatar cannot be read.
    #[error("cannot read avatar {path}: {source}")]
    Avatar {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Encrypting for an encrypted room failed.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    /// A stored value is not a valid Matrix id.
    #[error("invalid id in the outbox: {0}")]
    InvalidId(String),
    /// Content that does not serialize.
    #[error("content does not serialize: {0}")]
    Content(String),
}

impl PuppetError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PuppetError::Hs(e) => e.is_transient(),
            PuppetError::Store(e) => e.is_transient(),
            PuppetError::Crypto(e) => e.is_transient(),
            PuppetError::Gone(_)
            | PuppetError::Avatar { .. }
            | PuppetError::InvalidId(_)
            | PuppetError::Content(_) => false,
        }
    }
}

/// A send to queue.
#[derive(Debug, Clone)]
pub struct Send {
    /// What to send (its type and, for a redaction, its target, come with it).
    pub content: content::Content,
    /// The caller's idempotency key.
    pub key: Option<String>,
    /// Hash of the request behind it (an idempotency key reused with another request is
    /// refused); defaults to a hash of the content.
    pub request_hash: Option<String>,
}

/// Finds an agent by its row id. The agent registry (a layer above) implements it: the delivery
/// worker needs the agent of a queued item, and this layer must not reach up for it.
pub trait Agents: std::marker::Send + Sync {
    /// The agent with row id `id`, if the bridge hosts it.
    fn by_id(&self, id: AgentId) -> Option<Arc<Agent>>;
}

/// The puppets' shared machinery.
pub struct Puppets {
    hs: Homeserver,
    store: Store,
    registry: Arc<dyn Agents>,
    metrics: Arc<Metrics>,
    /// Puppets known to exist on the homeserver with an up-to-date profile.
    ready: Mutex<HashSet<AgentId>>,
    /// Woken when an item is queued.
    outbox_wake: Arc<Notify>,
    /// Woken whenever an outbox item is finished (sent or failed).
    finished: Notify,
    /// The agents' crypto engines, when encryption is on.
    crypto: Option<Arc<crate::crypto::Crypto>>,
    /// The homeserver's upload limit, once it said it.
    upload_limit: tokio::sync::OnceCell<u64>,
}

impl Puppets {
    /// The puppets of `registry`, acting through `hs`; with `crypto`, sends into encrypted rooms
    /// are encrypted by the agent's device.
    pub fn new(
        hs: Homeserver,
        store: Store,
        registry: Arc<dyn Agents>,
        metrics: Arc<Metrics>,
        outbox_wake: Arc<Notify>,
        crypto: Option<Arc<crate::crypto::Crypto>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            hs,
            store,
            registry,
            metrics,
            ready: Mutex::default(),
            outbox_wake,
            finished: Notify::new(),
            crypto,
            upload_limit: tokio::sync::OnceCell::new(),
        })
    }

    /// The largest file the homeserver accepts (`m.upload.size`), asked once; `None` while it
    /// cannot be asked (the bridge's own limit still applies).
    pub async fn upload_limit(&self) -> Option<u64> {
        let asked = self
            .upload_limit
            .get_or_try_init(|| self.hs.upload_limit())
            .await;
        match asked {
            Ok(limit) => Some(*limit),
            Err(error) => {
                tracing::warn!(%error, "cannot read the homeserver's upload limit");
                None
            }
        }
    }

    /// The crypto engines, when encryption is on (the outbox worker encrypts with them).
    fn crypto(&self) -> Option<&Arc<crate::crypto::Crypto>> {
        self.crypto.as_ref()
    }

    /// Acting as `user`, a user that is no agent: see [`GhostIntent`].
    pub fn ghost(&self, user: &ruma::UserId, in_namespace: bool) -> GhostIntent {
        GhostIntent::new(self.hs.clone(), user, in_namespace)
    }

    /// Acting as `agent`.
    pub fn intent(self: &Arc<Self>, agent: Arc<Agent>) -> PuppetIntent {
        PuppetIntent::new(self.clone(), agent)
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, HashSet<AgentId>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a send as `agent` in `room` and wakes the delivery worker. The client transaction
    /// id is derived from the agent, room and content (plus the idempotency key), so every retry
    /// reuses it and the homeserver deduplicates.
    pub(crate) async fn enqueue(
        &self,
        agent: &Agent,
        room: &RoomId,
        send: Send,
    ) -> Result<Enqueued, StoreError> {
        let event_type = send.content.event_type();
        let redacts = send.content.redacts().cloned();
        let mut content = send.content.to_json();
        clean_json(&mut content);
        let body = content.to_string();
        let mut hash = Sha256::new();
        hash.update(agent.id.0.as_bytes());
        hash.update(room.as_str().as_bytes());
        hash.update(event_type.as_bytes());
        hash.update(body.as_bytes());
        hash.update(
            redacts
                .as_ref()
                .map(|r| r.as_str())
                .unwrap_or("")
                .as_bytes(),
        );
        match &send.key {
            Some(key) => hash.update(key.as_bytes()),
            // Without a key, two identical sends are two messages: make them distinct.
            None => hash.update(OutboxId::new().0.as_bytes()),
        }
        let txn_id = format!("daarion-{}", &hex::encode(hash.finalize())[..40]);
        let request_hash = send
            .request_hash
            .unwrap_or_else(|| hex::encode(Sha256::digest(body.as_bytes())));
        let item = NewOutbox {
            agent_id: agent.id,
            room_id: room.to_owned(),
            kind: if redacts.is_some() {
                OutboxKind::Redaction
            } else {
                OutboxKind::Message
            },
            event_type: event_type.to_owned(),
            content,
            redacts,
            txn_id,
            idempotency_key: send.key,
            request_hash,
        };
        let queued = self.store.outbox().enqueue(&item).await?;
        self.outbox_wake.notify_one();
        Ok(queued)
    }

    /// Waits until the item is sent or failed, or `timeout` passes; returns its latest state.
    pub async fn wait(&self, id: OutboxId, timeout: Duration) -> Result<OutboxItem, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let finished = self.finished.notified();
            let item = self
                .store
                .outbox()
                .get(id)
                .await?
                .ok_or(StoreError::NotFound {
                    what: "outbox item",
                    key: id.to_string(),
                })?;
            if item.status != OutboxStatus::Pending {
                return Ok(item);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(item);
            }
            // Woken by this process's delivery; re-read now and then all the same, because on a
            // standby the leader delivers (another process: no wake-up reaches this one).
            let nap = (tokio::time::Instant::now() + Duration::from_millis(250)).min(deadline);
            let _ = tokio::time::timeout_at(nap, finished).await;
        }
    }
}
