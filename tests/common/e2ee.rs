//! A person's side of end-to-end encryption for the tests and the benchmark: a
//! matrix-sdk-crypto `OlmMachine` (Alice, in memory) that meets an agent's device, with the
//! homeserver's part (key upload, query, claim, to-device delivery) played in-process.
//! Included with `#[path]` by `tests/api` and `benches/transactions`.

use std::collections::BTreeMap;

use matrix_sdk_crypto::{
    EncryptionSettings, OlmMachine,
    types::requests::{AnyOutgoingRequest, ToDeviceRequest},
};
use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedUserId, UInt,
    api::client::{
        keys::{claim_keys, get_keys, upload_keys},
        to_device::send_event_to_device,
    },
    events::AnyMessageLikeEventContent,
    owned_room_id,
    serde::Raw,
};
use serde_json::{Value, json};

/// The agent Alice talks to, and its device.
pub const SOFIA: &str = "@agent_sofia:localhost";
/// Sofia's device in these tests.
pub const SOFIA_DEVICE: &str = "SOFIADEVICE";
/// The person.
pub const ALICE: &str = "@alice:localhost";

/// Uploads `machine`'s keys (the test plays the homeserver) and returns what was uploaded.
pub async fn upload(machine: &OlmMachine) -> upload_keys::v3::Request {
    for request in machine.outgoing_requests().await.unwrap() {
        if let AnyOutgoingRequest::KeysUpload(upload) = request.request() {
            let counts = BTreeMap::from([(
                OneTimeKeyAlgorithm::SignedCurve25519,
                UInt::from(upload.one_time_keys.len() as u32),
            )]);
            machine
                .mark_request_as_sent(
                    request.request_id(),
                    &upload_keys::v3::Response::new(counts),
                )
                .await
                .unwrap();
            return upload.clone();
        }
    }
    panic!("no key upload requested");
}

/// A person's client with an Olm session to Sofia's device and a Megolm session for `room`.
pub struct Alice {
    /// Her engine.
    pub machine: OlmMachine,
    /// The room she writes in.
    pub room: ruma::OwnedRoomId,
}

impl Alice {
    /// Alice learns Sofia's device from what Sofia uploaded, claims one of her one-time keys.
    pub async fn meet(sofia_upload: &upload_keys::v3::Request) -> Self {
        let alice: OwnedUserId = ALICE.try_into().unwrap();
        let machine = OlmMachine::new(&alice, "ALICEDEVICE".into()).await;
        upload(&machine).await;
        let sofia: OwnedUserId = SOFIA.try_into().unwrap();
        let device: OwnedDeviceId = SOFIA_DEVICE.into();
        machine
            .update_tracked_users([sofia.as_ref()])
            .await
            .unwrap();
        for request in machine.outgoing_requests().await.unwrap() {
            if let AnyOutgoingRequest::KeysQuery(_) = request.request() {
                let mut response = get_keys::v3::Response::new();
                response.device_keys = BTreeMap::from([(
                    sofia.clone(),
                    BTreeMap::from([(device.clone(), sofia_upload.device_keys.clone().unwrap())]),
                )]);
                machine
                    .mark_request_as_sent(request.request_id(), &response)
                    .await
                    .unwrap();
            }
        }
        let (id, _claim) = machine
            .get_missing_sessions([sofia.as_ref()].into_iter())
            .await
            .unwrap()
            .expect("a session to claim");
        let (key_id, key) = sofia_upload.one_time_keys.iter().next().unwrap();
        let response = claim_keys::v3::Response::new(BTreeMap::from([(
            sofia.clone(),
            BTreeMap::from([(device, BTreeMap::from([(key_id.clone(), key.clone())]))]),
        )]));
        machine.mark_request_as_sent(&id, &response).await.unwrap();
        Alice {
            machine,
            room: owned_room_id!("!secret:localhost"),
        }
    }

    /// The to-device events carrying Alice's room key to Sofia, as a transaction delivers them.
    pub async fn share_key(&self) -> Vec<Value> {
        self.share_key_with(EncryptionSettings::default()).await
    }

    /// Like [`Alice::share_key`], with these session settings (rotation, say).
    pub async fn share_key_with(&self, settings: EncryptionSettings) -> Vec<Value> {
        let sofia: OwnedUserId = SOFIA.try_into().unwrap();
        let requests = self
            .machine
            .share_room_key(&self.room, [sofia.as_ref()].into_iter(), settings)
            .await
            .unwrap();
        let mut events = Vec::new();
        for request in requests {
            events.extend(to_device_events(&request));
            self.machine
                .mark_request_as_sent(&request.txn_id, &send_event_to_device::v3::Response::new())
                .await
                .unwrap();
        }
        assert!(!events.is_empty());
        events
    }

    /// An encrypted message of Alice's, as a transaction delivers it.
    pub async fn say(&self, event_id: &str, body: &str) -> Value {
        self.say_content(event_id, json!({ "msgtype": "m.text", "body": body }))
            .await
    }

    /// An encrypted message of Alice's with this content.
    pub async fn say_content(&self, event_id: &str, content: Value) -> Value {
        self.send_content(event_id, "m.room.message", content).await
    }

    /// An encrypted event of Alice's of type `kind` (`m.sticker`, …) with this content.
    pub async fn send_content(&self, event_id: &str, kind: &str, content: Value) -> Value {
        let content: Raw<AnyMessageLikeEventContent> = Raw::new(&content).unwrap().cast_unchecked();
        let encrypted = self
            .machine
            .encrypt_room_event_raw(&self.room, kind, &content)
            .await
            .unwrap();
        json!({
            "type": "m.room.encrypted",
            "event_id": event_id,
            "room_id": self.room,
            "sender": ALICE,
            "origin_server_ts": 1_700_000_000_000u64,
            "content": encrypted.content,
        })
    }
}

pub fn to_device_events(request: &ToDeviceRequest) -> Vec<Value> {
    let mut out = Vec::new();
    for (user, devices) in &request.messages {
        for (device, content) in devices {
            out.push(json!({
                "type": request.event_type.to_string(),
                "sender": ALICE,
                "to_user_id": user,
                "to_device_id": device.to_string(),
                "content": content,
            }));
        }
    }
    out
}
