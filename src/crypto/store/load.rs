//! Loading an agent's stored crypto state into the memory store at start: the account first
//! (the Olm sessions need its device keys, the outbound group sessions its identity keys), then
//! everything else in one `save_changes`.

use std::{collections::HashMap, sync::Arc};

use matrix_sdk_crypto::{
    Account, DeviceData, Session,
    olm::{
        InboundGroupSession, OutboundGroupSession, PickledAccount, PickledCrossSigningIdentity,
        PickledInboundGroupSession, PickledSession, PrivateCrossSigningIdentity,
    },
    store::{
        CryptoStore,
        types::{
            Changes, DeviceChanges, IdentityChanges, PendingChanges, RoomKeyWithheldEntry,
            RoomSettings, TrackedUser,
        },
    },
};
use ruma::UserId;

use super::{DbCryptoStore, Inf, Result, backend, kind};
use crate::db::crypto::CryptoItem;

impl DbCryptoStore {
    /// Loads every row of the agent into memory.
    pub(super) async fn load(&self) -> Result<()> {
        let rows = self.db.items(self.user.as_str()).await.map_err(backend)?;
        let mut by_kind: HashMap<String, Vec<CryptoItem>> = HashMap::new();
        for row in rows {
            by_kind.entry(row.kind.clone()).or_default().push(row);
        }
        let take = |k: &str, by_kind: &mut HashMap<String, Vec<CryptoItem>>| {
            by_kind.remove(k).unwrap_or_default()
        };
        let Some(account_row) = take(kind::ACCOUNT, &mut by_kind).pop() else {
            return Ok(());
        };
        let pickle: PickledAccount = self.open_value(&account_row.value)?;
        let account = Account::from_pickle(pickle).map_err(backend)?;
        let device_keys = account.device_keys();
        let own_device = DeviceData::from_account(&account);
        let identity_keys = Arc::new(account.identity_keys());
        let device_id = account.device_id().to_owned();
        self.mem
            .save_pending_changes(PendingChanges {
                account: Some(account),
            })
            .await
            .inf()?;
        let mut changes = Changes::default();
        if let Some(row) = take(kind::IDENTITY, &mut by_kind).pop() {
            let pickle: PickledCrossSigningIdentity = self.open_value(&row.value)?;
            changes.private_identity =
                Some(PrivateCrossSigningIdentity::from_pickle(pickle).map_err(backend)?);
        }
        for row in take(kind::SESSION, &mut by_kind) {
            let pickle: PickledSession = self.open_value(&row.value)?;
            changes
                .sessions
                .push(Session::from_pickle(device_keys.clone(), pickle).map_err(backend)?);
        }
        for row in take(kind::INBOUND, &mut by_kind) {
            let pickle: PickledInboundGroupSession = self.open_value(&row.value)?;
            changes
                .inbound_group_sessions
                .push(InboundGroupSession::from_pickle(pickle).map_err(backend)?);
        }
        for row in take(kind::OUTBOUND, &mut by_kind) {
            let pickle = self.open_value(&row.value)?;
            changes.outbound_group_sessions.push(
                OutboundGroupSession::from_pickle(device_id.clone(), identity_keys.clone(), pickle)
                    .map_err(backend)?,
            );
        }
        let mut devices = vec![own_device];
        for row in take(kind::DEVICE, &mut by_kind) {
            devices.push(self.open_value(&row.value)?);
        }
        changes.devices = DeviceChanges {
            new: devices,
            ..Default::default()
        };
        let mut identities = Vec::new();
        for row in take(kind::USER_IDENTITY, &mut by_kind) {
            identities.push(self.open_value(&row.value)?);
        }
        changes.identities = IdentityChanges {
            new: identities,
            ..Default::default()
        };
        for row in take(kind::HASH, &mut by_kind) {
            changes.message_hashes.push(self.open_value(&row.value)?);
        }
        for row in take(kind::ROOM, &mut by_kind) {
            let settings: RoomSettings = self.open_value(&row.value)?;
            if let Ok(room) = ruma::OwnedRoomId::try_from(row.key.as_str()) {
                changes.room_settings.insert(room, settings);
            }
        }
        for row in take(kind::WITHHELD, &mut by_kind) {
            let entry: RoomKeyWithheldEntry = self.open_value(&row.value)?;
            if let Some((room, session)) = row.key.split_once('|')
                && let Ok(room) = ruma::OwnedRoomId::try_from(room)
            {
                changes
                    .withheld_session_info
                    .entry(room)
                    .or_default()
                    .insert(session.to_owned(), entry);
            }
        }
        self.mem.save_changes(changes).await.inf()?;
        let tracked: Vec<TrackedUser> = take(kind::TRACKED, &mut by_kind)
            .iter()
            .map(|row| self.open_value(&row.value))
            .collect::<Result<_>>()?;
        let tracked: Vec<(&UserId, bool)> = tracked
            .iter()
            .map(|t| (t.user_id.as_ref(), t.dirty))
            .collect();
        self.mem.save_tracked_users(&tracked).await.inf()?;
        for row in take(kind::CUSTOM, &mut by_kind) {
            let value: Vec<u8> = self.open_value(&row.value)?;
            self.mem.set_custom_value(&row.key, value).await.inf()?;
        }
        Ok(())
    }
}
