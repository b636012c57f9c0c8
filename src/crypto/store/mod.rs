//! [`DbCryptoStore`]: matrix-sdk-crypto's `CryptoStore` over the bridge's own database, for one
//! agent. matrix-sdk-sqlite cannot be linked next to sqlx's SQLite driver and no PostgreSQL
//! store exists, so the state lives in `bridge_crypto_items`, one encrypted row per item.
//!
//! Design: matrix-sdk-crypto's `MemoryStore` answers every read (an agent's crypto state is
//! small: its account, its sessions with the people it talks to, the room keys of its rooms),
//! and every write goes to the database *first*, then to memory. At start the rows are loaded
//! into the memory store. So the database always holds at least what the machine acted on: a
//! restart reuses the device, its Olm sessions and every room key it had.
//!
//! Kept: account, cross-signing identity, Olm sessions, inbound and outbound group sessions,
//! devices, user identities, tracked users, Olm message hashes (replay protection), room
//! settings, withheld info and custom values. Held in memory only: key-backup state, secret
//! requests and the secret inbox, room-key bundles (agents use none of them).

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use matrix_sdk_common::cross_process_lock::CrossProcessLockGeneration;
use matrix_sdk_crypto::{
    Account, DeviceData, GossipRequest, SecretInfo, Session, UserIdentityData,
    olm::{
        InboundGroupSession, OlmMessageHash, OutboundGroupSession, PrivateCrossSigningIdentity,
        SenderDataType,
    },
    store::{
        CryptoStore, CryptoStoreError, MemoryStore,
        types::{
            BackupKeys, Changes, DehydratedDeviceKey, PendingChanges, RoomKeyCounts,
            RoomKeyWithheldEntry, RoomPendingKeyBundleDetails, RoomSettings,
            StoredRoomKeyBundleData, TrackedUser,
        },
    },
    vodozemac::Curve25519PublicKey,
};
use matrix_sdk_store_encryption::StoreCipher;
use ruma::{
    DeviceId, OwnedDeviceId, OwnedUserId, RoomId, TransactionId, UserId,
    events::secret::request::SecretName,
};
use serde::{Serialize, de::DeserializeOwned};
use zeroize::Zeroizing;

use crate::db::crypto::{CryptoItem, CryptoTables};

mod live;
mod load;

type Result<T, E = CryptoStoreError> = std::result::Result<T, E>;

/// `MemoryStore` never fails; its `Infallible` errors as this store's.
trait Inf<T> {
    fn inf(self) -> Result<T>;
}

impl<T> Inf<T> for std::result::Result<T, std::convert::Infallible> {
    fn inf(self) -> Result<T> {
        self.map_err(|never| match never {})
    }
}

/// Item kinds of `bridge_crypto_items`.
pub(super) mod kind {
    pub(crate) const ACCOUNT: &str = "account";
    pub(crate) const IDENTITY: &str = "identity";
    pub(crate) const SESSION: &str = "session";
    pub(crate) const INBOUND: &str = "inbound";
    pub(crate) const OUTBOUND: &str = "outbound";
    pub(crate) const DEVICE: &str = "device";
    pub(crate) const USER_IDENTITY: &str = "user_identity";
    pub(crate) const TRACKED: &str = "tracked";
    pub(crate) const HASH: &str = "message_hash";
    pub(crate) const ROOM: &str = "room_settings";
    pub(crate) const WITHHELD: &str = "withheld";
    pub(crate) const CUSTOM: &str = "custom";
}

/// An agent's crypto store: memory for reads, the database for durability.
pub struct DbCryptoStore {
    mem: MemoryStore,
    db: CryptoTables,
    user: OwnedUserId,
    cipher: Arc<StoreCipher>,
    /// Live sessions and identities (see [`live`]).
    live: live::Live,
}

impl std::fmt::Debug for DbCryptoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCryptoStore")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> CryptoStoreError {
    CryptoStoreError::backend(e)
}

/// Writes collected for one commit.
#[derive(Default)]
struct Batch {
    put: Vec<CryptoItem>,
    delete: Vec<(&'static str, String)>,
}

impl DbCryptoStore {
    /// Opens `user`'s store: loads every row into memory.
    pub async fn open(
        db: CryptoTables,
        user: OwnedUserId,
        cipher: Arc<StoreCipher>,
    ) -> Result<Self> {
        let this = Self {
            mem: MemoryStore::new(),
            db,
            user,
            cipher,
            live: Default::default(),
        };
        this.load().await?;
        Ok(this)
    }

    fn seal(&self, value: &impl Serialize) -> Result<Vec<u8>> {
        self.cipher.encrypt_value(value).map_err(backend)
    }

    fn open_value<T: DeserializeOwned>(&self, value: &[u8]) -> Result<T> {
        self.cipher.decrypt_value(value).map_err(backend)
    }

    fn put(
        &self,
        batch: &mut Batch,
        kind: &str,
        key: String,
        value: &impl Serialize,
    ) -> Result<()> {
        batch.put.push(CryptoItem {
            kind: kind.to_owned(),
            key,
            value: self.seal(value)?,
        });
        Ok(())
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        let delete: Vec<(&str, &str)> =
            batch.delete.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.db
            .write(self.user.as_str(), &batch.put, &delete)
            .await
            .map_err(backend)
    }

    async fn pickle_inbound(
        &self,
        batch: &mut Batch,
        sessions: &[InboundGroupSession],
    ) -> Result<()> {
        for s in sessions {
            let pickle = s.pickle().await;
            self.put(
                batch,
                kind::INBOUND,
                format!("{}|{}", s.room_id(), s.session_id()),
                &pickle,
            )?;
        }
        Ok(())
    }
}

fn device_key(d: &DeviceData) -> String {
    format!("{}|{}", d.user_id(), d.device_id())
}

#[async_trait]
impl CryptoStore for DbCryptoStore {
    type Error = CryptoStoreError;

    async fn load_account(&self) -> Result<Option<Account>> {
        self.mem.load_account().await.inf()
    }

    async fn load_identity(&self) -> Result<Option<PrivateCrossSigningIdentity>> {
        self.mem.load_identity().await.inf()
    }

    async fn save_changes(&self, changes: Changes) -> Result<()> {
        let mut b = Batch::default();
        if let Some(identity) = &changes.private_identity {
            self.put(
                &mut b,
                kind::IDENTITY,
                String::new(),
                &identity.pickle().await,
            )?;
        }
        for s in &changes.sessions {
            self.put(
                &mut b,
                kind::SESSION,
                s.session_id().to_owned(),
                &s.pickle().await,
            )?;
        }
        self.pickle_inbound(&mut b, &changes.inbound_group_sessions)
            .await?;
        for s in &changes.outbound_group_sessions {
            self.put(
                &mut b,
                kind::OUTBOUND,
                s.room_id().to_string(),
                &s.pickle().await,
            )?;
        }
        for d in changes.devices.new.iter().chain(&changes.devices.changed) {
            self.put(&mut b, kind::DEVICE, device_key(d), d)?;
        }
        for d in &changes.devices.deleted {
            b.delete.push((kind::DEVICE, device_key(d)));
        }
        for i in changes
            .identities
            .new
            .iter()
            .chain(&changes.identities.changed)
        {
            self.put(&mut b, kind::USER_IDENTITY, i.user_id().to_string(), i)?;
        }
        for h in &changes.message_hashes {
            self.put(
                &mut b,
                kind::HASH,
                format!("{}|{}", h.sender_key, h.hash),
                h,
            )?;
        }
        for (room, settings) in &changes.room_settings {
            self.put(&mut b, kind::ROOM, room.to_string(), settings)?;
        }
        for (room, sessions) in &changes.withheld_session_info {
            for (session, entry) in sessions {
                self.put(&mut b, kind::WITHHELD, format!("{room}|{session}"), entry)?;
            }
        }
        self.commit(b).await?;
        // Memory before the live copies: a copy unpickled after `remember` is the saved version.
        let saved = changes.inbound_group_sessions.clone();
        self.live.identities_saved(
            changes
                .identities
                .new
                .iter()
                .chain(&changes.identities.changed),
        );
        self.mem.save_changes(changes).await.inf()?;
        self.live.sessions_saved(&saved);
        Ok(())
    }

    async fn save_pending_changes(&self, changes: PendingChanges) -> Result<()> {
        if let Some(account) = &changes.account {
            let mut b = Batch::default();
            self.put(&mut b, kind::ACCOUNT, String::new(), &account.pickle())?;
            self.commit(b).await?;
        }
        self.mem.save_pending_changes(changes).await.inf()
    }

    async fn save_inbound_group_sessions(
        &self,
        sessions: Vec<InboundGroupSession>,
        backed_up_to_version: Option<&str>,
    ) -> Result<()> {
        let mut b = Batch::default();
        self.pickle_inbound(&mut b, &sessions).await?;
        self.commit(b).await?;
        let saved = sessions.clone();
        self.mem
            .save_inbound_group_sessions(sessions, backed_up_to_version)
            .await
            .inf()?;
        self.live.sessions_saved(&saved);
        Ok(())
    }

    async fn get_sessions(&self, sender_key: &str) -> Result<Option<Vec<Session>>> {
        self.mem.get_sessions(sender_key).await.inf()
    }

    async fn get_inbound_group_session(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<InboundGroupSession>> {
        let key = (room_id.to_owned(), session_id.to_owned());
        let lane = super::LANE.try_with(|lane| *lane).unwrap_or(0);
        let miss = match self.live.session(&key, lane) {
            Ok(copy) => return Ok(Some(copy)),
            Err(miss) => miss,
        };
        let found = self
            .mem
            .get_inbound_group_session(room_id, session_id)
            .await
            .inf()?;
        if let Some(session) = &found {
            self.live.keep_session(key, lane, miss, session);
        }
        Ok(found)
    }

    async fn get_withheld_info(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<RoomKeyWithheldEntry>> {
        self.mem.get_withheld_info(room_id, session_id).await.inf()
    }

    async fn get_withheld_sessions_by_room_id(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<RoomKeyWithheldEntry>> {
        self.mem
            .get_withheld_sessions_by_room_id(room_id)
            .await
            .inf()
    }

    async fn get_inbound_group_sessions(&self) -> Result<Vec<InboundGroupSession>> {
        self.mem.get_inbound_group_sessions().await.inf()
    }

    async fn inbound_group_session_counts(
        &self,
        backup_version: Option<&str>,
    ) -> Result<RoomKeyCounts> {
        self.mem
            .inbound_group_session_counts(backup_version)
            .await
            .inf()
    }

    async fn get_inbound_group_sessions_by_room_id(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<InboundGroupSession>> {
        self.mem
            .get_inbound_group_sessions_by_room_id(room_id)
            .await
            .inf()
    }

    async fn get_inbound_group_sessions_for_device_batch(
        &self,
        curve_key: Curve25519PublicKey,
        sender_data_type: SenderDataType,
        after_session_id: Option<String>,
        limit: usize,
    ) -> Result<Vec<InboundGroupSession>> {
        self.mem
            .get_inbound_group_sessions_for_device_batch(
                curve_key,
                sender_data_type,
                after_session_id,
                limit,
            )
            .await
            .inf()
    }

    async fn inbound_group_sessions_for_backup(
        &self,
        backup_version: &str,
        limit: usize,
    ) -> Result<Vec<InboundGroupSession>> {
        self.mem
            .inbound_group_sessions_for_backup(backup_version, limit)
            .await
            .inf()
    }

    async fn mark_inbound_group_sessions_as_backed_up(
        &self,
        backup_version: &str,
        room_and_session_ids: &[(&RoomId, &str)],
    ) -> Result<()> {
        self.mem
            .mark_inbound_group_sessions_as_backed_up(backup_version, room_and_session_ids)
            .await
            .inf()
    }

    async fn reset_backup_state(&self) -> Result<()> {
        self.mem.reset_backup_state().await.inf()
    }

    async fn load_backup_keys(&self) -> Result<BackupKeys> {
        self.mem.load_backup_keys().await.inf()
    }

    async fn load_dehydrated_device_pickle_key(&self) -> Result<Option<DehydratedDeviceKey>> {
        self.mem.load_dehydrated_device_pickle_key().await.inf()
    }

    async fn delete_dehydrated_device_pickle_key(&self) -> Result<()> {
        self.mem.delete_dehydrated_device_pickle_key().await.inf()
    }

    async fn get_outbound_group_session(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<OutboundGroupSession>> {
        self.mem.get_outbound_group_session(room_id).await.inf()
    }

    async fn load_tracked_users(&self) -> Result<Vec<TrackedUser>> {
        self.mem.load_tracked_users().await.inf()
    }

    async fn save_tracked_users(&self, users: &[(&UserId, bool)]) -> Result<()> {
        let mut b = Batch::default();
        for (user, dirty) in users {
            let tracked = TrackedUser {
                user_id: (*user).to_owned(),
                dirty: *dirty,
            };
            self.put(&mut b, kind::TRACKED, user.to_string(), &tracked)?;
        }
        self.commit(b).await?;
        self.mem.save_tracked_users(users).await.inf()
    }

    async fn get_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Option<DeviceData>> {
        self.mem.get_device(user_id, device_id).await.inf()
    }

    async fn get_user_devices(
        &self,
        user_id: &UserId,
    ) -> Result<HashMap<OwnedDeviceId, DeviceData>> {
        self.mem.get_user_devices(user_id).await.inf()
    }

    async fn get_own_device(&self) -> Result<DeviceData> {
        self.mem.get_own_device().await.inf()
    }

    async fn get_user_identity(&self, user_id: &UserId) -> Result<Option<UserIdentityData>> {
        if let Some(live) = self.live.identity(user_id) {
            return Ok(Some(live));
        }
        let found = self.mem.get_user_identity(user_id).await.inf()?;
        if let Some(identity) = &found {
            self.live.keep_identity(identity);
        }
        Ok(found)
    }

    async fn is_message_known(&self, message_hash: &OlmMessageHash) -> Result<bool> {
        self.mem.is_message_known(message_hash).await.inf()
    }

    async fn get_outgoing_secret_requests(
        &self,
        request_id: &TransactionId,
    ) -> Result<Option<GossipRequest>> {
        self.mem
            .get_outgoing_secret_requests(request_id)
            .await
            .inf()
    }

    async fn get_secret_request_by_info(
        &self,
        secret_info: &SecretInfo,
    ) -> Result<Option<GossipRequest>> {
        self.mem.get_secret_request_by_info(secret_info).await.inf()
    }

    async fn get_unsent_secret_requests(&self) -> Result<Vec<GossipRequest>> {
        self.mem.get_unsent_secret_requests().await.inf()
    }

    async fn delete_outgoing_secret_requests(&self, request_id: &TransactionId) -> Result<()> {
        self.mem
            .delete_outgoing_secret_requests(request_id)
            .await
            .inf()
    }

    async fn get_secrets_from_inbox(
        &self,
        secret_name: &SecretName,
    ) -> Result<Vec<Zeroizing<String>>> {
        self.mem.get_secrets_from_inbox(secret_name).await.inf()
    }

    async fn delete_secrets_from_inbox(&self, secret_name: &SecretName) -> Result<()> {
        self.mem.delete_secrets_from_inbox(secret_name).await.inf()
    }

    async fn get_room_settings(&self, room_id: &RoomId) -> Result<Option<RoomSettings>> {
        self.mem.get_room_settings(room_id).await.inf()
    }

    async fn get_received_room_key_bundle_data(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<StoredRoomKeyBundleData>> {
        self.mem
            .get_received_room_key_bundle_data(room_id, user_id)
            .await
            .inf()
    }

    async fn get_pending_key_bundle_details_for_room(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<RoomPendingKeyBundleDetails>> {
        self.mem
            .get_pending_key_bundle_details_for_room(room_id)
            .await
            .inf()
    }

    async fn get_all_rooms_pending_key_bundles(&self) -> Result<Vec<RoomPendingKeyBundleDetails>> {
        self.mem.get_all_rooms_pending_key_bundles().await.inf()
    }

    async fn has_downloaded_all_room_keys(&self, room_id: &RoomId) -> Result<bool> {
        self.mem.has_downloaded_all_room_keys(room_id).await.inf()
    }

    async fn get_custom_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.mem.get_custom_value(key).await.inf()
    }

    async fn set_custom_value(&self, key: &str, value: Vec<u8>) -> Result<()> {
        let mut b = Batch::default();
        self.put(&mut b, kind::CUSTOM, key.to_owned(), &value)?;
        self.commit(b).await?;
        self.mem.set_custom_value(key, value).await.inf()
    }

    async fn remove_custom_value(&self, key: &str) -> Result<()> {
        self.commit(Batch {
            put: Vec::new(),
            delete: vec![(kind::CUSTOM, key.to_owned())],
        })
        .await?;
        self.mem.remove_custom_value(key).await.inf()
    }

    async fn try_take_leased_lock(
        &self,
        lease_duration_ms: u32,
        key: &str,
        holder: &str,
    ) -> Result<Option<CrossProcessLockGeneration>> {
        // One bridge process owns its agents' machines: an in-process lease is enough.
        self.mem
            .try_take_leased_lock(lease_duration_ms, key, holder)
            .await
            .inf()
    }

    async fn next_batch_token(&self) -> Result<Option<String>> {
        self.mem.next_batch_token().await.inf()
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    async fn reopen(&self) -> Result<()> {
        Ok(())
    }

    async fn get_size(&self) -> Result<Option<usize>> {
        Ok(None)
    }
}
