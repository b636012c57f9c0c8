//! End-to-end encryption for the agents: each agent has its own device (created with MSC4190,
//! its id kept in the database) and its own matrix-sdk-crypto `OlmMachine`, fed from appservice
//! transactions (MSC4203 to-device events, MSC3202 device lists and key counts) instead of
//! `/sync`, with its state in the bridge's database ([`store`]). [`inbound`] decrypts a
//! transaction's encrypted events before the mirror sees them; [`Crypto::encrypt`] encrypts
//! what an agent sends into an encrypted room.

mod history;
pub mod inbound;
mod probe;
mod requests;
pub mod store;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use matrix_sdk_crypto::{
    CollectStrategy, EncryptionSettings, OlmMachine, OlmMachineBuilder, store::CryptoStoreError,
};
use matrix_sdk_store_encryption::StoreCipher;
use ruma::{
    OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::client::device::{delete_device, get_devices, update_device},
    events::{AnyMessageLikeEventContent, room::history_visibility::HistoryVisibility},
    serde::Raw,
};

pub use self::probe::Delivery;
use self::store::DbCryptoStore;
use crate::{
    db::{
        StoreError,
        crypto::{CryptoItem, CryptoTables},
    },
    matrix::{Homeserver, HsError},
};

/// Errors of the crypto layer.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The homeserver refused or is unreachable.
    #[error(transparent)]
    Hs(#[from] HsError),
    /// The database refused or is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// matrix-sdk-crypto's store failed (usually the database underneath).
    #[error("crypto store: {0}")]
    CryptoStore(#[from] CryptoStoreError),
    /// An Olm operation failed.
    #[error("olm: {0}")]
    Olm(#[from] matrix_sdk_crypto::OlmError),
    /// A Megolm operation failed.
    #[error("megolm: {0}")]
    Megolm(#[from] matrix_sdk_crypto::MegolmError),
    /// The agent's cross-signing identity could not be created.
    #[error("cross-signing bootstrap: {0}")]
    CrossSigning(String),
    /// The stored key of the crypto store cannot be opened with the configured pickle key.
    #[error("the crypto store key cannot be opened with encryption.pickle_key: {0}")]
    PickleKey(String),
}

impl CryptoError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            CryptoError::Hs(e) => e.is_transient(),
            CryptoError::Store(e) => e.is_transient(),
            CryptoError::CryptoStore(_) => true,
            CryptoError::Olm(_)
            | CryptoError::Megolm(_)
            | CryptoError::CrossSigning(_)
            | CryptoError::PickleKey(_) => false,
        }
    }
}

/// What an operator should read when an agent's device cannot be set up.
pub fn explain(error: &CryptoError) -> &'static str {
    match error {
        CryptoError::Hs(HsError::Matrix(e))
            if matches!(e.status_code.as_u16(), 400 | 404 | 405) =>
        {
            "the homeserver refused to create the agent's device: it needs appservice device management (MSC4190: `io.element.msc4190: true` in the registration; Synapse ≥ 1.125, tuwunel ≥ 1.8.2). Agents keep working in plaintext rooms"
        }
        CryptoError::PickleKey(_) => {
            "the crypto store cannot be opened: encryption.pickle_key differs from the one the store was created with"
        }
        _ => {
            "cannot set up the agent's device for end-to-end encryption; agents keep working in plaintext rooms"
        }
    }
}

/// Crypto store row holding the store cipher (sealed under the pickle key), under no user.
const CIPHER_KIND: &str = "store_cipher";
/// Display name of agent devices.
const DEVICE_NAME: &str = "daarion-bridge";

/// One agent's device and crypto engine.
pub struct AgentMachine {
    /// The agent.
    pub user: OwnedUserId,
    /// Its device.
    pub device: OwnedDeviceId,
    /// Its engine.
    pub machine: OlmMachine,
    /// Serializes the request round trips of this machine (the machine expects each request to
    /// be sent once and marked once).
    outgoing: tokio::sync::Mutex<()>,
    /// Whether this process made sure the device exists on the homeserver with its keys.
    ready: AtomicBool,
}

/// The agents' crypto engines.
pub struct Crypto {
    db: CryptoTables,
    hs: Homeserver,
    cipher: Arc<StoreCipher>,
    machines: tokio::sync::Mutex<HashMap<OwnedUserId, Arc<AgentMachine>>>,
    /// Opened machines, readable without awaiting (for decryption in the transaction path).
    opened: Mutex<Vec<Arc<AgentMachine>>>,
    /// Rooms known to be encrypted (their `m.room.encryption` content) or not (`None`).
    rooms: Mutex<
        HashMap<OwnedRoomId, Option<ruma::events::room::encryption::RoomEncryptionEventContent>>,
    >,
    /// Whether decrypted text may be stored as previews.
    pub store_previews: bool,
    /// What the start-up probe found out about to-device delivery.
    delivery: Mutex<Delivery>,
}

tokio::task_local! {
    /// The decryption lane a task decrypts in (0 unless set): each lane reads its own copy of
    /// an inbound session from the store, so lanes never wait on each other's session lock.
    pub(crate) static LANE: usize;
}

/// How many lanes decrypt a transaction's events at once: one per core of the 2-core machines
/// the bridge is sized for. The signature check of every Megolm message is most of the cost.
pub(crate) const DECRYPT_LANES: usize = 2;

impl Crypto {
    /// Opens the engines' shared store key: created (random) on first start and kept in the
    /// database sealed under `pickle_key`.
    pub async fn open(
        db: CryptoTables,
        hs: Homeserver,
        pickle_key: &str,
        store_previews: bool,
    ) -> Result<Arc<Self>, CryptoError> {
        let stored = |rows: Vec<CryptoItem>| rows.into_iter().find(|r| r.kind == CIPHER_KIND);
        let mut row = stored(db.items("").await?);
        if row.is_none() {
            let sealed = StoreCipher::new()
                .and_then(|cipher| cipher.export(pickle_key))
                .map_err(|e| CryptoError::PickleKey(e.to_string()))?;
            let item = CryptoItem {
                kind: CIPHER_KIND.into(),
                key: String::new(),
                value: sealed,
            };
            // Another process (a replica starting at the same time) may have stored one first:
            // never overwrite it (the data it sealed would no longer open), use whichever is
            // stored.
            db.insert_absent("", &item).await?;
            row = stored(db.items("").await?);
        }
        let row = row.ok_or_else(|| {
            CryptoError::PickleKey("the store key vanished after it was written".into())
        })?;
        let cipher = StoreCipher::import(pickle_key, &row.value)
            .map_err(|e| CryptoError::PickleKey(e.to_string()))?;
        let crypto = Arc::new(Self {
            db,
            hs,
            cipher: Arc::new(cipher),
            machines: tokio::sync::Mutex::default(),
            opened: Mutex::default(),
            rooms: Mutex::default(),
            store_previews,
            delivery: Mutex::new(Delivery::Unknown),
        });
        let agents = crypto.load().await?;
        tracing::debug!(agents, "agent crypto state loaded");
        Ok(crypto)
    }

    /// The bridge bot, which has a device of its own like the agents.
    pub fn bot(&self) -> &UserId {
        self.hs.bot()
    }

    /// Forgets every opened machine: the next use opens it again from the database. A replica
    /// does this when it takes the lease and when it loses it, because only the leader writes
    /// the crypto state and another replica may have moved it on meanwhile (same device and
    /// keys: opening reads them, it makes none).
    pub async fn forget_machines(&self) {
        let mut machines = self.machines.lock().await;
        machines.clear();
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The machines opened so far.
    pub fn opened(&self) -> Vec<Arc<AgentMachine>> {
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `user`'s machine, opening it on first use: its device is created on the homeserver
    /// (MSC4190; idempotent) under the id stored in the database, its keys are uploaded and its
    /// cross-signing identity is created and uploaded when it has none.
    pub fn machine<'a>(
        &'a self,
        user: &'a UserId,
    ) -> futures_core::future::BoxFuture<'a, Result<Arc<AgentMachine>, CryptoError>> {
        Box::pin(self.open_machine(user))
    }

    async fn open_machine(&self, user: &UserId) -> Result<Arc<AgentMachine>, CryptoError> {
        let mut machines = self.machines.lock().await;
        let agent = match machines.get(user) {
            Some(m) if m.ready.load(Ordering::Acquire) => return Ok(m.clone()),
            Some(m) => m.clone(),
            None => {
                let candidate = format!("DAARION{}", random_suffix());
                let device: OwnedDeviceId = self.db.device(user.as_str(), &candidate).await?.into();
                let agent = self.build_machine(user, device).await?;
                machines.insert(user.to_owned(), agent.clone());
                agent
            }
        };
        // The puppet must exist before it can own a device (both idempotent).
        self.hs.ensure_registered(user.localpart()).await?;
        let mut request = update_device::v3::Request::new(agent.device.clone());
        request.display_name = Some(DEVICE_NAME.to_owned());
        self.hs.send_as(request, Some(user), None).await?;
        self.remove_stale_devices(&agent).await;
        flush_with(&self.hs, &agent).await?;
        self.cross_sign(&agent).await?;
        agent.ready.store(true, Ordering::Release);
        // Everything the agent sends from now on comes from this device.
        self.hs.set_device(user, &agent.device);
        tracing::info!(%user, device = %agent.device, "agent device ready");
        Ok(agent)
    }

    /// Deletes the agent's other devices (left by an earlier database of the bridge, say):
    /// clients would keep encrypting for keys nobody holds. MSC4190 lets an appservice delete
    /// its users' devices without interactive authentication. Best effort.
    async fn remove_stale_devices(&self, agent: &AgentMachine) {
        let listed = self
            .hs
            .send_as(get_devices::v3::Request::new(), Some(&agent.user), None)
            .await;
        let stale: Vec<OwnedDeviceId> = match listed {
            Ok(r) => r
                .devices
                .into_iter()
                .map(|d| d.device_id)
                .filter(|d| *d != agent.device)
                .collect(),
            Err(error) => {
                tracing::debug!(user = %agent.user, %error, "cannot list the agent's devices");
                return;
            }
        };
        for device in stale {
            let request = delete_device::v3::Request::new(device.clone());
            match self.hs.send_as(request, Some(&agent.user), None).await {
                Ok(_) => {
                    tracing::info!(user = %agent.user, %device, "deleted a stale agent device")
                }
                Err(error) => {
                    tracing::warn!(user = %agent.user, %device, %error, "cannot delete a stale agent device")
                }
            }
        }
    }

    /// Builds `user`'s machine over its stored state (no network) and lists it as opened.
    async fn build_machine(
        &self,
        user: &UserId,
        device: OwnedDeviceId,
    ) -> Result<Arc<AgentMachine>, CryptoError> {
        let store =
            DbCryptoStore::open(self.db.clone(), user.to_owned(), self.cipher.clone()).await?;
        let machine = OlmMachineBuilder::new(user, &device)
            .with_crypto_store(store)
            .build()
            .await?;
        let agent = Arc::new(AgentMachine {
            user: user.to_owned(),
            device,
            machine,
            outgoing: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
        });
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(agent.clone());
        Ok(agent)
    }

    /// Opens the machines of every agent that has a device, from the database alone, before the
    /// bridge serves: the first transaction after a restart may carry encrypted events for them.
    pub async fn load(&self) -> Result<usize, CryptoError> {
        let devices = self.db.devices().await?;
        let mut machines = self.machines.lock().await;
        for (user, device) in &devices {
            if machines.contains_key(user) {
                continue;
            }
            let agent = self.build_machine(user, device.as_str().into()).await?;
            machines.insert(user.clone(), agent);
        }
        Ok(devices.len())
    }

    /// Creates and uploads the agent's cross-signing identity when it has none, and signs its
    /// device with it, so clients see a device its owner signed.
    async fn cross_sign(&self, agent: &AgentMachine) -> Result<(), CryptoError> {
        let status = agent.machine.cross_signing_status().await;
        if status.has_master && status.has_self_signing {
            return Ok(());
        }
        let requests = agent
            .machine
            .bootstrap_cross_signing(false)
            .await
            .map_err(|e| CryptoError::CrossSigning(e.to_string()))?;
        if let Some(upload) = requests.upload_keys_req {
            requests::send(
                &self.hs,
                &agent.machine,
                &agent.user,
                &agent.device,
                &upload,
            )
            .await?;
        }
        requests::upload_signing_keys(
            &self.hs,
            &agent.user,
            &agent.device,
            requests.upload_signing_keys_req,
        )
        .await?;
        let signatures = requests.upload_signatures_req;
        self.hs
            .send_as(signatures, Some(&agent.user), Some(&agent.device))
            .await?;
        Ok(())
    }

    /// Remembers a room's encryption state seen in a transaction.
    pub fn note_room(
        &self,
        room: &RoomId,
        content: Option<ruma::events::room::encryption::RoomEncryptionEventContent>,
    ) {
        self.rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(room.to_owned(), content);
    }

    /// The room's encryption settings (`None`: not encrypted), read from the homeserver as
    /// `user` when not known yet. An unknown state is an error, never "not encrypted": nothing
    /// is sent in clear into a room that may be encrypted.
    async fn room_encryption(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<Option<ruma::events::room::encryption::RoomEncryptionEventContent>, CryptoError>
    {
        if let Some(known) = self
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room)
            .cloned()
        {
            return Ok(known);
        }
        let content = self.hs.encryption_state(room, user).await?;
        // Encryption cannot be turned off: only the encrypted answer is cached for good.
        if content.is_some() {
            self.note_room(room, content.clone());
        }
        Ok(content)
    }

    /// Whether `room` is encrypted, as `user` sees it; an unknown state is an error.
    pub async fn is_encrypted(&self, room: &RoomId, user: &UserId) -> Result<bool, CryptoError> {
        Ok(self.room_encryption(room, user).await?.is_some())
    }

    /// Prepares a message `user` sends into `room`: in an encrypted room it shares the room key
    /// with every joined member's devices (tracking them, claiming missing Olm sessions) and
    /// returns the `m.room.encrypted` content; in a plaintext room it returns `None`.
    pub fn encrypt<'a>(
        &'a self,
        user: &'a UserId,
        room: &'a RoomId,
        event_type: &'a str,
        content: &'a Raw<AnyMessageLikeEventContent>,
    ) -> futures_core::future::BoxFuture<
        'a,
        Result<Option<Raw<AnyMessageLikeEventContent>>, CryptoError>,
    > {
        // Boxed with its `Send` bound stated here: inferred through the caller's future, the
        // proof fails on matrix-sdk-crypto's higher-ranked lifetimes.
        Box::pin(self.encrypt_inner(user, room, event_type, content))
    }

    async fn encrypt_inner(
        &self,
        user: &UserId,
        room: &RoomId,
        event_type: &str,
        content: &Raw<AnyMessageLikeEventContent>,
    ) -> Result<Option<Raw<AnyMessageLikeEventContent>>, CryptoError> {
        let Some(settings) = self.room_encryption(room, user).await? else {
            return Ok(None);
        };
        let agent = self.machine(user).await?;
        let members = self.hs.joined_member_ids(room, user).await?;
        // Plain slices of references: closures in these iterators trip the `Send` proof of the
        // futures that hold them.
        let members: Vec<&UserId> = members.iter().map(AsRef::as_ref).collect();
        agent.machine.update_tracked_users(members.clone()).await?;
        flush_with(&self.hs, &agent).await?;
        {
            let _one = agent.outgoing.lock().await;
            if let Some((id, claim)) = agent
                .machine
                .get_missing_sessions(members.clone().into_iter())
                .await?
            {
                let response = self
                    .hs
                    .send_as(claim, Some(user), Some(&agent.device))
                    .await?;
                agent.machine.mark_request_as_sent(&id, &response).await?;
            }
            let settings = EncryptionSettings::new(
                settings,
                HistoryVisibility::Shared,
                CollectStrategy::AllDevices,
            );
            let shares = agent
                .machine
                .share_room_key(room, members.clone().into_iter(), settings)
                .await?;
            for share in shares {
                let response =
                    requests::to_device(&self.hs, user, Some(&agent.device), &share).await?;
                agent
                    .machine
                    .mark_request_as_sent(&share.txn_id, &response)
                    .await?;
            }
        }
        let encrypted = agent
            .machine
            .encrypt_room_event_raw(room, event_type, content)
            .await?;
        Ok(Some(encrypted.content.cast_unchecked()))
    }
}

/// Sends everything `agent`'s machine asks for, until it asks for nothing (bounded).
pub(crate) async fn flush_with(hs: &Homeserver, agent: &AgentMachine) -> Result<(), CryptoError> {
    let _one = agent.outgoing.lock().await;
    for _ in 0..4 {
        let outgoing = agent.machine.outgoing_requests().await?;
        if outgoing.is_empty() {
            break;
        }
        for request in &outgoing {
            requests::send(hs, &agent.machine, &agent.user, &agent.device, request).await?;
        }
    }
    Ok(())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}
