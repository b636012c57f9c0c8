//! The crypto tables: each agent's device id (`bridge_crypto_devices`), the encrypted items of
//! its crypto store (`bridge_crypto_items`, written by `crypto::store`) and encrypted events
//! waiting for their room key (`bridge_crypto_pending`).

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{
    db::{
        Store, StoreError, both,
        decode::{BadRow, Decoded, RawRow, decode_all, decode_good, parse_ids},
    },
    model::Ts,
};

/// One item of an agent's crypto store: what it is, its key within the kind, its encrypted value.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CryptoItem {
    /// The kind (`account`, `session`, `inbound`, …).
    pub kind: String,
    /// The key within the kind.
    pub key: String,
    /// The value, encrypted.
    pub value: Vec<u8>,
}

/// An encrypted event waiting for its room key.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// Its Matrix event id.
    pub event_id: OwnedEventId,
    /// Its room.
    pub room_id: OwnedRoomId,
    /// The Megolm session that encrypted it.
    pub session_id: String,
    /// The event as received (JSON).
    pub event: String,
    /// When it arrived.
    pub received_at: Ts,
}

/// A [`PendingEvent`] as stored, its ids still text (see [`crate::db::decode`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawPendingEvent {
    /// Its Matrix event id.
    pub event_id: String,
    /// Its room.
    pub room_id: String,
    /// The Megolm session that encrypted it.
    pub session_id: String,
    /// The event as received (JSON).
    pub event: String,
    /// When it arrived.
    pub received_at: Ts,
}

impl RawRow for RawPendingEvent {
    type Row = PendingEvent;
    const TABLE: &'static str = "bridge_crypto_pending";

    fn key(&self) -> String {
        self.event_id.clone()
    }

    fn decode(self) -> Result<PendingEvent, BadRow<Self>> {
        let (r, (event_id, room_id)) = parse_ids(self, |r| {
            Ok((EventId::parse(&r.event_id)?, RoomId::parse(&r.room_id)?))
        })?;
        Ok(PendingEvent {
            event_id,
            room_id,
            session_id: r.session_id,
            event: r.event,
            received_at: r.received_at,
        })
    }
}

/// An agent's device as stored: (user id, device id), the user id still text.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawDevice {
    /// The agent's Matrix user id.
    pub user_id: String,
    /// Its device.
    pub device_id: String,
}

impl RawRow for RawDevice {
    type Row = (OwnedUserId, String);
    const TABLE: &'static str = "bridge_crypto_devices";

    fn key(&self) -> String {
        self.user_id.clone()
    }

    fn decode(self) -> Result<Self::Row, BadRow<Self>> {
        let (r, user) = parse_ids(self, |r| UserId::parse(&r.user_id))?;
        Ok((user, r.device_id))
    }
}

/// The store's view of the crypto tables: devices, encrypted store items and messages waiting for
/// room keys. A component given this handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct CryptoTables {
    store: Store,
}

impl Store {
    /// The queries of the crypto tables: devices, encrypted store items and messages waiting for
    /// room keys.
    pub fn crypto(&self) -> CryptoTables {
        CryptoTables {
            store: self.clone(),
        }
    }
}

impl CryptoTables {
    /// The device of `user_id`, creating the row with `device_id` when it has none. Returns the
    /// stored device (which is `device_id` unless another process stored one first).
    pub async fn device(&self, user_id: &str, device_id: &str) -> Result<String, StoreError> {
        both!(self.store, pool => {
            sqlx::query(
                "INSERT INTO bridge_crypto_devices (user_id, device_id) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user_id)
            .bind(device_id)
            .execute(pool)
            .await?;
            let (device,): (String,) =
                sqlx::query_as("SELECT device_id FROM bridge_crypto_devices WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_one(pool)
                    .await?;
            Ok(device)
        })
    }

    /// Every agent device: (user id, device id); a row whose user id is invalid is left out.
    pub async fn devices(&self) -> Result<Vec<(OwnedUserId, String)>, StoreError> {
        both!(self.store, pool => {
            let raws: Vec<RawDevice> = sqlx::query_as("SELECT user_id, device_id FROM bridge_crypto_devices ORDER BY user_id")
                .fetch_all(pool)
                .await?;
            Ok(decode_good(raws))
        })
    }

    /// Every item of `user_id`'s crypto store.
    pub async fn items(&self, user_id: &str) -> Result<Vec<CryptoItem>, StoreError> {
        both!(self.store, pool => {
            Ok(sqlx::query_as::<_, CryptoItem>(
                "SELECT kind, key, value FROM bridge_crypto_items WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Stores `item` for `user_id` unless one with its kind and key is stored already (the
    /// first writer wins, and nothing is overwritten); unfenced, so it can run before this
    /// process knows whether it leads: replicas starting at once create the crypto store key
    /// this way, and all use the one stored.
    pub async fn insert_absent(&self, user_id: &str, item: &CryptoItem) -> Result<(), StoreError> {
        both!(self.store, pool => {
            sqlx::query(
                "INSERT INTO bridge_crypto_items (user_id, kind, key, value, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, kind, key) DO NOTHING",
            )
            .bind(user_id)
            .bind(&item.kind)
            .bind(&item.key)
            .bind(&item.value)
            .bind(Ts::now())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Writes (upserts) and deletes items of `user_id`'s crypto store in one commit, so a crash
    /// never leaves half of one change of the crypto state on disk.
    pub async fn write(
        &self,
        user_id: &str,
        put: &[CryptoItem],
        delete: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        if put.is_empty() && delete.is_empty() {
            return Ok(());
        }
        let now = Ts::now();
        // One row per item, the last written winning: PostgreSQL refuses an upsert that touches
        // a row twice (one change may carry, say, the same Olm session twice).
        let mut seen = std::collections::HashSet::new();
        let mut latest: Vec<&CryptoItem> = put
            .iter()
            .rev()
            .filter(|item| seen.insert((item.kind.as_str(), item.key.as_str())))
            .collect();
        latest.reverse();
        // Exactly one writer of the crypto state: a standby refuses here, and on PostgreSQL a
        // leader's commit carries its epoch (`db::lease`), so a leader that lost the lease
        // cannot fork the Olm and Megolm sessions the new leader now owns.
        let epoch = self.store.fence.write_epoch()?;
        let fenced = epoch.filter(|_| self.store.is_postgres());
        let token = self.store.fence.token();
        both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            if let Some(epoch) = fenced {
                sqlx::query("SELECT bridge_leader_check($1, $2)")
                    .bind(epoch)
                    .bind(token)
                    .execute(&mut *tx)
                    .await?;
            }
            // One statement per chunk, not per item (5 parameters a row, well under SQLite's
            // 32,766).
            for chunk in latest.chunks(1000) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO bridge_crypto_items (user_id, kind, key, value, updated_at) ",
                );
                insert.push_values(chunk, |mut row, item| {
                    row.push_bind(user_id)
                        .push_bind(&item.kind)
                        .push_bind(&item.key)
                        .push_bind(&item.value)
                        .push_bind(now);
                });
                insert.push(
                    " ON CONFLICT (user_id, kind, key) \
                     DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                );
                insert.build().execute(&mut *tx).await?;
            }
            for (kind, key) in delete {
                sqlx::query(
                    "DELETE FROM bridge_crypto_items WHERE user_id = $1 AND kind = $2 AND key = $3",
                )
                .bind(user_id)
                .bind(kind)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Whether a room key can come for events of `room_id`: an agent is a member there, or
    /// (`bot_has_device`) it is a mirrored room, which the bot is in.
    pub async fn room_key_can_come(
        &self,
        room_id: &str,
        bot_has_device: bool,
    ) -> Result<bool, StoreError> {
        both!(self.store, pool => {
            let found: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM channels c WHERE c.matrix_room_id = $1 AND ($2 OR EXISTS ( \
                 SELECT 1 FROM channel_members cm WHERE cm.channel_id = c.id \
                 AND cm.member_agent_id IS NOT NULL AND cm.left_at IS NULL)) LIMIT 1",
            )
            .bind(room_id)
            .bind(bot_has_device)
            .fetch_optional(pool)
            .await?;
            Ok(found.is_some())
        })
    }

    /// Keeps encrypted events whose room key is missing (a replayed event changes nothing).
    pub async fn pending_add(&self, events: &[PendingEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        both!(self.store, pool => {
            for chunk in events.chunks(1000) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO bridge_crypto_pending (event_id, room_id, session_id, event, received_at) ",
                );
                insert.push_values(chunk, |mut row, e| {
                    row.push_bind(e.event_id.as_str())
                        .push_bind(e.room_id.as_str())
                        .push_bind(&e.session_id)
                        .push_bind(&e.event)
                        .push_bind(e.received_at);
                });
                insert.push(" ON CONFLICT (event_id) DO NOTHING");
                insert.build().execute(pool).await?;
            }
        });
        Ok(())
    }

    /// The pending events of a Megolm session, oldest first (one with an invalid id is left
    /// out: [`Self::pending_expired`] settles it).
    pub async fn pending_for(
        &self,
        room_id: &str,
        session_id: &str,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        both!(self.store, pool => {
            Ok(decode_good(sqlx::query_as::<_, RawPendingEvent>(
                "SELECT event_id, room_id, session_id, event, received_at FROM bridge_crypto_pending \
                 WHERE room_id = $1 AND session_id = $2 ORDER BY received_at, event_id",
            )
            .bind(room_id)
            .bind(session_id)
            .fetch_all(pool)
            .await?))
        })
    }

    /// Pending events received before `before` (past the bound), oldest first, at most `limit`.
    /// One with an invalid id comes back in [`Decoded::bad`], to be mirrored as it is.
    pub async fn pending_expired(
        &self,
        before: Ts,
        limit: i64,
    ) -> Result<Decoded<RawPendingEvent>, StoreError> {
        both!(self.store, pool => {
            Ok(decode_all(sqlx::query_as::<_, RawPendingEvent>(
                "SELECT event_id, room_id, session_id, event, received_at FROM bridge_crypto_pending \
                 WHERE received_at < $1 ORDER BY received_at, event_id LIMIT $2",
            )
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await?))
        })
    }

    /// How many events wait for their key.
    pub async fn pending_count(&self) -> Result<i64, StoreError> {
        both!(self.store, pool => {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM bridge_crypto_pending")
                .fetch_one(pool)
                .await?;
            Ok(n)
        })
    }

    /// Forgets pending events (decrypted and mirrored, or given up on).
    pub async fn pending_remove(&self, event_id: &str) -> Result<(), StoreError> {
        both!(self.store, pool => {
            sqlx::query("DELETE FROM bridge_crypto_pending WHERE event_id = $1")
                .bind(event_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
