//! The crypto part of an appservice transaction, run before the mirror sees its events:
//! to-device events (MSC4203), device-list changes and key counts (MSC3202) go to the agents'
//! machines first (a room key often arrives in the same transaction as the event it opens),
//! then every `m.room.encrypted` event is decrypted by the machine of an agent that holds its
//! key. An event whose key is missing is kept durably in `bridge_crypto_pending` (committed
//! before the transaction is acknowledged) and re-enters a later transaction once its key
//! arrives. Nothing here fails a transaction but the database being down.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use matrix_sdk_crypto::{
    DecryptionSettings, EncryptionSyncChanges, MegolmError, TrustRequirement,
    types::events::room::encrypted::EncryptedEvent,
};
use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedRoomId, OwnedUserId, UInt,
    api::{appservice::event::push_events, client::sync::sync_events::DeviceLists},
    events::AnyToDeviceEvent,
    serde::Raw,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{AgentMachine, Crypto, CryptoError};
use crate::{db::crypto::PendingEvent, metrics::Metrics, model::Ts};

/// A transaction's events after decryption.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The events to mirror: late events whose key arrived now (first, being older), then the
    /// transaction's own, encrypted ones replaced by their decrypted form.
    pub events: Vec<Box<RawValue>>,
    /// Pending events decrypted now: forget them once the transaction is committed.
    pub late: Vec<String>,
}

/// What the transaction path needs to know of an event.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    room_id: Option<OwnedRoomId>,
    #[serde(default, borrow)]
    event_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    state_key: Option<std::borrow::Cow<'a, str>>,
}

/// The target of an appservice to-device event.
#[derive(Deserialize)]
struct Target {
    to_user_id: OwnedUserId,
    #[serde(default)]
    to_device_id: Option<OwnedDeviceId>,
}

/// The Megolm session of an encrypted event, to find it again when its key arrives.
#[derive(Deserialize)]
struct SessionOf {
    content: SessionContent,
}

#[derive(Deserialize)]
struct SessionContent {
    #[serde(default)]
    session_id: Option<String>,
}

enum Outcome {
    Decrypted(Box<RawValue>),
    MissingKey,
    Failed,
}

impl Crypto {
    /// Feeds the transaction's to-device events, device lists and key counts to the machines,
    /// then decrypts its encrypted events. Only a database that is down fails it.
    pub async fn prepare(
        &self,
        request: &push_events::v1::Request,
        metrics: &Metrics,
    ) -> Result<Option<Prepared>, CryptoError> {
        if !concerns_crypto(request) {
            // The common case: nothing encrypted, no device data. The events go to the mirror
            // untouched, at no cost but one substring scan each.
            return Ok(None);
        }
        let machines = self.opened();
        let keys = self
            .receive_device_data(request, &machines, metrics)
            .await?;
        let mut prepared = Prepared::default();
        // Late events first: keys that arrived now may open events of earlier transactions.
        for (room, session) in keys {
            for pending in self.db.pending_for(room.as_str(), &session).await? {
                let Ok(raw) = RawValue::from_string(pending.event.clone()) else {
                    continue;
                };
                let raw = Raw::<EncryptedEvent>::from_json(raw);
                if let Outcome::Decrypted(event) = self.decrypt(&raw, &room, &machines).await? {
                    metrics.crypto("late");
                    prepared.events.push(event);
                    prepared.late.push(pending.event_id.to_string());
                }
            }
        }
        let mut decrypted = self.decrypt_in_lanes(request, &machines).await?;
        let mut pending = Vec::new();
        let bot_has_device = machines.iter().any(|m| *m.user == *self.hs.bot());
        // Rooms where an agent (or the bot, with a device) is a member: learned from the database, or from an agent's join
        // earlier in this very transaction (not committed yet).
        let mut agent_rooms: HashMap<OwnedRoomId, bool> = HashMap::new();
        for (index, event) in request.events.iter().enumerate() {
            let raw = event.json();
            let Ok(peek) = serde_json::from_str::<Peek<'_>>(raw.get()) else {
                prepared.events.push(raw.to_owned());
                continue;
            };
            if let (Some("m.room.member"), Some(room), Some(key)) = (
                peek.kind.as_deref(),
                &peek.room_id,
                peek.state_key.as_deref(),
            ) && machines.iter().any(|m| m.user.as_str() == key)
                && raw.get().contains("\"join\"")
            {
                agent_rooms.insert(room.clone(), true);
            }
            match (peek.kind.as_deref(), &peek.room_id) {
                (Some("m.room.encryption"), Some(room))
                    if peek.state_key.as_deref() == Some("") =>
                {
                    #[derive(Deserialize)]
                    struct Content {
                        content: ruma::events::room::encryption::RoomEncryptionEventContent,
                    }
                    if let Ok(c) = serde_json::from_str::<Content>(raw.get()) {
                        self.note_room(room, Some(c.content));
                    }
                    prepared.events.push(raw.to_owned());
                }
                (Some("m.room.encrypted"), Some(room)) if !machines.is_empty() => {
                    let outcome = match decrypted.remove(&index) {
                        Some(outcome) => outcome,
                        None => {
                            self.decrypt(event.cast_ref_unchecked(), room, &machines)
                                .await?
                        }
                    };
                    match outcome {
                        Outcome::Decrypted(event) => {
                            metrics.crypto("decrypted");
                            prepared.events.push(event);
                        }
                        Outcome::MissingKey => {
                            let session = serde_json::from_str::<SessionOf>(raw.get())
                                .ok()
                                .and_then(|s| s.content.session_id);
                            // A key can only come where a device of the bridge's is in the room:
                            // elsewhere waiting would only delay the mirror.
                            let awaited = match agent_rooms.get(room) {
                                Some(known) => *known,
                                None => {
                                    let found = self
                                        .db
                                        .room_key_can_come(room.as_str(), bot_has_device)
                                        .await?;
                                    agent_rooms.insert(room.clone(), found);
                                    found
                                }
                            };
                            if !awaited {
                                metrics.crypto("no_agent");
                                prepared.events.push(raw.to_owned());
                                continue;
                            }
                            let event_id =
                                peek.event_id.and_then(|e| ruma::EventId::parse(&*e).ok());
                            match (session, event_id) {
                                (Some(session_id), Some(event_id)) => {
                                    metrics.crypto("pending");
                                    pending.push(PendingEvent {
                                        event_id,
                                        room_id: room.clone(),
                                        session_id,
                                        event: raw.get().to_owned(),
                                        received_at: Ts::now(),
                                    });
                                }
                                _ => {
                                    metrics.crypto("undecryptable");
                                    prepared.events.push(raw.to_owned());
                                }
                            }
                        }
                        Outcome::Failed => {
                            metrics.crypto("undecryptable");
                            prepared.events.push(raw.to_owned());
                        }
                    }
                }
                _ => prepared.events.push(raw.to_owned()),
            }
        }
        self.db.pending_add(&pending).await?;
        Ok(Some(prepared))
    }

    /// One more try at a pending event (its key may have come another way): the decrypted
    /// event, or `None`.
    pub async fn retry_pending(
        &self,
        raw: &RawValue,
        room: &OwnedRoomId,
    ) -> Result<Option<Box<RawValue>>, CryptoError> {
        let raw = Raw::<EncryptedEvent>::from_json(raw.to_owned());
        Ok(match self.decrypt(&raw, room, &self.opened()).await? {
            Outcome::Decrypted(event) => Some(event),
            _ => None,
        })
    }

    /// Decrypts `event` with the first machine holding its key.
    async fn decrypt(
        &self,
        event: &Raw<EncryptedEvent>,
        room: &OwnedRoomId,
        machines: &[Arc<AgentMachine>],
    ) -> Result<Outcome, CryptoError> {
        decrypt_with(machines, event, room, !self.store_previews).await
    }

    /// Decrypts the transaction's encrypted events up front, by index, when there are enough
    /// of them to share: the second half on a blocking-pool thread (so the OS runs it on the
    /// other core: a task spawned on the runtime would wait in this worker's LIFO slot until
    /// this task yields, which decryption never does), each lane with its own copies of the
    /// sessions. Events left out are decrypted in order by the caller.
    async fn decrypt_in_lanes(
        &self,
        request: &push_events::v1::Request,
        machines: &[Arc<AgentMachine>],
    ) -> Result<HashMap<usize, Outcome>, CryptoError> {
        if machines.is_empty() {
            return Ok(HashMap::new());
        }
        let mut jobs: Vec<Job> = request
            .events
            .iter()
            .enumerate()
            .filter_map(|(index, event)| {
                let json = event.json().get();
                if !json.contains("m.room.encrypted") {
                    return None;
                }
                let peek = serde_json::from_str::<Peek<'_>>(json).ok()?;
                (peek.kind.as_deref() == Some("m.room.encrypted")).then_some(())?;
                Some((index, event.clone().cast_unchecked(), peek.room_id?))
            })
            .collect();
        if jobs.len() < LANES_FROM {
            return Ok(HashMap::new());
        }
        let hide = !self.store_previews;
        let second = jobs.split_off(jobs.len() / super::DECRYPT_LANES);
        let others = machines.to_vec();
        let runtime = tokio::runtime::Handle::current();
        let helper = tokio::task::spawn_blocking(move || {
            runtime.block_on(super::LANE.scope(1, decrypt_jobs(second, others, hide)))
        });
        let mut outcomes = super::LANE
            .scope(0, decrypt_jobs(jobs, machines.to_vec(), hide))
            .await?;
        match helper.await {
            Ok(result) => outcomes.extend(result?),
            // The helper's events are decrypted again, in order, by the caller.
            Err(error) => tracing::error!(%error, "a decryption lane failed"),
        }
        Ok(outcomes)
    }

    /// Hands to-device events, device lists and key counts to the machines they concern.
    /// Returns the (room, session) of every room key received.
    async fn receive_device_data(
        &self,
        request: &push_events::v1::Request,
        machines: &[Arc<AgentMachine>],
        metrics: &Metrics,
    ) -> Result<Vec<(OwnedRoomId, String)>, CryptoError> {
        let mut to_device: HashMap<OwnedUserId, Vec<Raw<AnyToDeviceEvent>>> = HashMap::new();
        for raw in &request.to_device {
            if raw.get_field::<String>("type").ok().flatten().as_deref()
                == Some(super::probe::PROBE_TYPE)
            {
                metrics.crypto("probe");
                self.probe_arrived();
                continue;
            }
            match raw.deserialize_as_unchecked::<Target>() {
                Ok(target) => {
                    let mine = machines.iter().any(|m| {
                        m.user == target.to_user_id
                            && target.to_device_id.as_ref().is_none_or(|d| *d == m.device)
                    });
                    if mine {
                        metrics.crypto("to_device");
                        to_device
                            .entry(target.to_user_id)
                            .or_default()
                            .push(raw.clone().cast_unchecked());
                    } else {
                        metrics.crypto("to_device_ignored");
                    }
                }
                Err(_) => metrics.crypto("to_device_ignored"),
            }
        }
        let mut lists = DeviceLists::new();
        lists.changed = request.device_lists.changed.clone();
        lists.left = request.device_lists.left.clone();
        let no_counts = BTreeMap::new();
        let settings = decryption_settings();
        let mut keys = Vec::new();
        for agent in machines {
            let events = to_device.remove(&agent.user).unwrap_or_default();
            let counts: &BTreeMap<OneTimeKeyAlgorithm, UInt> = request
                .device_one_time_keys_count
                .get(&agent.user)
                .and_then(|d| d.get(&agent.device))
                .unwrap_or(&no_counts);
            let fallback = request
                .device_unused_fallback_key_types
                .get(&agent.user)
                .and_then(|d| d.get(&agent.device))
                .map(|v| v.as_slice());
            if events.is_empty() && lists.is_empty() && counts.is_empty() && fallback.is_none() {
                continue;
            }
            let counted = !counts.is_empty();
            // The MSC4186 variant: a transaction without a count for this device says nothing
            // about it, where a /sync without one would mean "no keys left" (and trigger an
            // upload the server refuses past its limit).
            let (_, room_keys) = agent
                .machine
                .receive_sync_changes_msc4186(
                    EncryptionSyncChanges {
                        to_device_events: events,
                        changed_devices: &lists,
                        one_time_keys_counts: counts,
                        unused_fallback_keys: fallback,
                        next_batch_token: None,
                    },
                    &settings,
                )
                .await?;
            keys.extend(room_keys.into_iter().map(|k| (k.room_id, k.session_id)));
            if counted || !lists.is_empty() {
                // Top-ups and key queries go out after the acknowledgement: the homeserver's
                // next transaction must not wait for them.
                let this_hs = self.hs.clone();
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(error) = super::flush_with(&this_hs, &agent).await {
                        tracing::warn!(user = %agent.user, %error, "cannot send crypto requests");
                    }
                });
            }
        }
        Ok(keys)
    }
}

/// An encrypted event to decrypt: its index in the transaction, the event, its room.
type Job = (usize, Raw<EncryptedEvent>, OwnedRoomId);

/// From this many encrypted events on, a transaction is decrypted in lanes (below, handing
/// work to another thread costs more than it saves).
const LANES_FROM: usize = 8;

/// Decrypts `jobs` in order.
async fn decrypt_jobs(
    jobs: Vec<Job>,
    machines: Vec<Arc<AgentMachine>>,
    hide_preview: bool,
) -> Result<HashMap<usize, Outcome>, CryptoError> {
    let mut out = HashMap::with_capacity(jobs.len());
    for (index, event, room) in jobs {
        let outcome = decrypt_with(&machines, &event, &room, hide_preview).await?;
        out.insert(index, outcome);
    }
    Ok(out)
}

/// Decrypts `event` with the first machine holding its key. Decryption failures other than a
/// missing key (a wrong algorithm, a forged or replayed message, garbage) are final.
async fn decrypt_with(
    machines: &[Arc<AgentMachine>],
    event: &Raw<EncryptedEvent>,
    room: &OwnedRoomId,
    hide_preview: bool,
) -> Result<Outcome, CryptoError> {
    let settings = decryption_settings();
    // Only a machine holding the event's session tries it: every other machine's attempt would
    // log matrix-sdk-crypto's WARN "Failed to decrypt a room event" (an agent's own echo used
    // to raise one per message and per streamed edit from the other agents' machines). When
    // none holds it, one machine tries, to tell a missing key (wait for it) from an event that
    // can never decrypt.
    let mut holding = Vec::new();
    for agent in machines {
        // An event that does not even parse is not "available" to anyone: the one machine that
        // then tries it calls it what it is (never an error that would fail the transaction).
        if agent
            .machine
            .is_room_key_available(event, room)
            .await
            .unwrap_or(false)
        {
            holding.push(agent);
        }
    }
    if holding.is_empty() {
        holding.extend(machines.first());
    }
    let mut missing = false;
    for agent in holding {
        match agent
            .machine
            .decrypt_room_event(event, room, &settings)
            .await
        {
            Ok(decrypted) => {
                return Ok(Outcome::Decrypted(decrypted_event(
                    decrypted.event.json(),
                    hide_preview,
                )));
            }
            Err(MegolmError::MissingRoomKey(_)) => missing = true,
            Err(MegolmError::Store(e)) => return Err(CryptoError::CryptoStore(e)),
            Err(error) => {
                tracing::debug!(user = %agent.user, %error, "cannot decrypt an event");
            }
        }
    }
    Ok(if missing {
        Outcome::MissingKey
    } else {
        Outcome::Failed
    })
}

/// Whether the transaction carries anything for the crypto engines: device data, encrypted
/// events or encryption state.
fn concerns_crypto(request: &push_events::v1::Request) -> bool {
    !request.to_device.is_empty()
        || !request.device_lists.is_empty()
        || !request.device_one_time_keys_count.is_empty()
        || !request.device_unused_fallback_key_types.is_empty()
        || request.events.iter().any(|e| {
            // `m.room.encrypted` and `m.room.encryption`.
            e.json().get().contains("m.room.encrypt")
        })
}

/// How the agents decrypt: any sender's device (they answer whoever writes to them; clients
/// show the trust state).
pub(super) fn decryption_settings() -> DecryptionSettings {
    DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    }
}

/// The decrypted event as the mirror takes it, marked when its text must not become a preview
/// (`encryption.store_previews = false`). Its `room_id` is already right: matrix-sdk-crypto only
/// returns an event whose plaintext `room_id` is the session's room.
fn decrypted_event(event: &RawValue, hide_preview: bool) -> Box<RawValue> {
    if !hide_preview {
        return event.to_owned();
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(event.get()) {
        Ok(mut map) => {
            map.insert(crate::model::HIDE_PREVIEW.into(), true.into());
            serde_json::value::to_raw_value(&map).unwrap_or_else(|_| event.to_owned())
        }
        Err(_) => event.to_owned(),
    }
}
