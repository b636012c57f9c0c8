//! A person's E2EE Matrix client for the bridge's end-to-end tests, built on matrix-sdk.
//!
//! `e2ee-client <homeserver> <user id> <password>` logs in with a new device (decrypting only
//! from cross-signed devices: `TrustRequirement::CrossSignedOrLegacy`), syncs in the
//! background and answers one JSON line per command read from stdin:
//! - `dm <user>`: creates a DM as Element does (`is_direct`, `trusted_private_chat`,
//!   `m.room.encryption` in the initial state) → `{"room": …}`
//! - `room <alias-or-id> <user>...`: creates an encrypted private room inviting the users →
//!   `{"room": …}`
//! - `joined <room> <user>`: waits until the user is joined in the client's view → `{"ok": true}`
//! - `send <room> <text>` → `{"event_id": …}`
//! - `mention <room> <user> <text>`: a message with `m.mentions` → `{"event_id": …}`
//! - `join <room>` → `{"ok": true}`
//! - `expect <room> <sender> <words>`: waits until a message from `sender` containing `words`
//!   decrypts (the newest such) → `{"body", "content", "encrypted", "shield", "verification",
//!   "edits"}` (`content`: the event's whole content, as decrypted)
//! - `thread <room> <root event> <text>`: a reply in the thread of `root` → `{"event_id": …}`
//! - `reply <room> <event> <text>`: a reply to `event` in the main timeline → `{"event_id": …}`
//! - `edit <room> <event> <text>`: replaces `event`'s text (`m.replace`) → `{"event_id": …}`
//! - `redact <room> <event>` → `{"event_id": …}` (the redaction's)
//! - `image <room> <name>`: sends a small PNG made here as an attachment (encrypted in an
//!   encrypted room) → `{"event_id", "hex"}` (the bytes sent)
//! - `voice <room>`: sends a short Ogg voice message (MSC3245) → `{"event_id", "hex"}`
//! - `download <room> <sender> <name>`: waits for a file message named `name` from `sender`,
//!   downloads and decrypts it → `{"hex", "msgtype", "encrypted"}`
//! - `late <room> <text>`: sends a message in a new Megolm session whose room key is held back
//!   (not sent) → `{"event_id": …}`
//! - `release`: sends the held room keys now → `{"sent": n}`
//! - `quit`

#![recursion_limit = "256"]

use std::{sync::Arc, time::Duration};

use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::{
    Client, Room, RoomMemberships,
    config::SyncSettings,
    deserialized_responses::ShieldState,
    room::MessagesOptions,
    ruma::{
        OwnedRoomId, OwnedUserId, TransactionId,
        api::client::{
            message::send_message_event::v3::Request as SendMessageEvent,
            room::create_room::v3::{Request as CreateRoom, RoomPreset},
            to_device::send_event_to_device::v3::Request as SendToDevice,
        },
        events::{
            AnySyncMessageLikeEvent, AnySyncTimelineEvent, InitialStateEvent, Mentions,
            MessageLikeEventType, SyncMessageLikeEvent,
            room::{
                encryption::RoomEncryptionEventContent,
                history_visibility::HistoryVisibility,
                member::MembershipState,
                message::{Relation, RoomMessageEventContent},
            },
        },
    },
};
use matrix_sdk_base::crypto::{
    CollectStrategy, DecryptionSettings, EncryptionSettings, TrustRequirement,
    types::requests::ToDeviceRequest,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, homeserver, user, password] = args.as_slice() else {
        eprintln!("usage: e2ee-client <homeserver> <user id> <password>");
        std::process::exit(2);
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::builder()
        .homeserver_url(homeserver)
        // As strict as the issue asks: an event from a device its owner did not cross-sign
        // (and not from before such checks) does not decrypt at all.
        .with_decryption_settings(DecryptionSettings {
            sender_device_trust_requirement: TrustRequirement::CrossSignedOrLegacy,
        })
        .build()
        .await
        .expect("client");
    client
        .matrix_auth()
        .login_username(user, password)
        .initial_device_display_name("e2e matrix-sdk")
        .send()
        .await
        .expect("login");
    client
        .sync_once(SyncSettings::default().timeout(Duration::from_millis(100)))
        .await
        .expect("first sync");
    let syncing = client.clone();
    tokio::spawn(async move {
        let _ = syncing
            .sync(SyncSettings::default().timeout(Duration::from_millis(300)))
            .await;
    });
    say(json!({ "ready": true, "device": client.device_id().map(|d| d.to_string()) }));
    let mut held = Vec::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.splitn(2, ' ');
        let command = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        let answer = match command {
            "dm" => dm(&client, rest).await,
            "room" => room(&client, rest).await,
            "joined" => joined(&client, rest).await,
            "send" => send(&client, rest).await,
            "mention" => mention(&client, rest).await,
            "thread" | "reply" | "edit" => related(&client, command, rest).await,
            "redact" => redact(&client, rest).await,
            "image" | "voice" => attach(&client, command, rest).await,
            "download" => download(&client, rest).await,
            "join" => join(&client, rest).await,
            "expect" => expect(&client, rest).await,
            "late" => late(&client, rest, &mut held).await,
            "release" => release(&client, &mut held).await,
            "quit" => break,
            other => Err(format!("unknown command {other}")),
        };
        say(answer.unwrap_or_else(|e| json!({ "error": e })));
    }
}

fn say(v: Value) {
    println!("{v}");
}

fn the_room(client: &Client, id: &str) -> Result<Room, String> {
    let id: OwnedRoomId = id.try_into().map_err(|e| format!("{e}"))?;
    for _ in 0..100 {
        if let Some(room) = client.get_room(&id) {
            return Ok(room);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("unknown room {id}"))
}

async fn dm(client: &Client, user: &str) -> Result<Value, String> {
    let user: OwnedUserId = user.trim().try_into().map_err(|e| format!("{e}"))?;
    let room = client.create_dm(&user).await.map_err(|e| e.to_string())?;
    Ok(json!({ "room": room.room_id() }))
}

async fn room(client: &Client, users: &str) -> Result<Value, String> {
    let invite: Vec<OwnedUserId> = users
        .split_whitespace()
        .map(|u| u.try_into().map_err(|e| format!("{e}")))
        .collect::<Result<_, _>>()?;
    let mut request = CreateRoom::new();
    request.invite = invite;
    request.preset = Some(RoomPreset::PrivateChat);
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = client
        .create_room(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({ "room": room.room_id() }))
}

async fn joined(client: &Client, rest: &str) -> Result<Value, String> {
    let (room, user) = rest.split_once(' ').ok_or("joined <room> <user>")?;
    let room = the_room(client, room)?;
    let user: OwnedUserId = user.trim().try_into().map_err(|e| format!("{e}"))?;
    for _ in 0..300 {
        let _ = room.sync_members().await;
        if let Ok(Some(member)) = room.get_member_no_sync(&user).await
            && *member.membership() == MembershipState::Join
        {
            return Ok(json!({ "ok": true }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{user} never joined"))
}

async fn send(client: &Client, rest: &str) -> Result<Value, String> {
    let (room, text) = rest.split_once(' ').ok_or("send <room> <text>")?;
    let room = the_room(client, room)?;
    let sent = room
        .send(RoomMessageEventContent::text_plain(text))
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({ "event_id": sent.response.event_id }))
}

async fn mention(client: &Client, rest: &str) -> Result<Value, String> {
    let mut parts = rest.splitn(3, ' ');
    let (Some(room), Some(user), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("mention <room> <user> <text>".into());
    };
    let room = the_room(client, room)?;
    let user: OwnedUserId = user.try_into().map_err(|e| format!("{e}"))?;
    let content =
        RoomMessageEventContent::text_plain(text).add_mentions(Mentions::with_user_ids([user]));
    let sent = room.send(content).await.map_err(|e| e.to_string())?;
    Ok(json!({ "event_id": sent.response.event_id }))
}

/// A message related to another one, as Element sends it (content written out, encrypted by
/// the SDK like any message): a thread reply, a reply, or an edit.
async fn related(client: &Client, kind: &str, rest: &str) -> Result<Value, String> {
    let mut parts = rest.splitn(3, ' ');
    let (Some(room), Some(target), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{kind} <room> <event> <text>"));
    };
    let room = the_room(client, room)?;
    let content = match kind {
        "thread" => json!({ "msgtype": "m.text", "body": text, "m.relates_to": {
            "rel_type": "m.thread", "event_id": target, "is_falling_back": true,
            "m.in_reply_to": { "event_id": target } } }),
        "reply" => json!({ "msgtype": "m.text", "body": text,
            "m.relates_to": { "m.in_reply_to": { "event_id": target } } }),
        _ => json!({ "msgtype": "m.text", "body": format!("* {text}"),
            "m.new_content": { "msgtype": "m.text", "body": text },
            "m.relates_to": { "rel_type": "m.replace", "event_id": target } }),
    };
    let sent = room
        .send_raw("m.room.message", content)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({ "event_id": sent.response.event_id }))
}

async fn redact(client: &Client, rest: &str) -> Result<Value, String> {
    let (room, target) = rest.split_once(' ').ok_or("redact <room> <event>")?;
    let room = the_room(client, room)?;
    let target: matrix_sdk::ruma::OwnedEventId =
        target.trim().try_into().map_err(|e| format!("{e}"))?;
    let response = room
        .redact(&target, None, None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({ "event_id": response.event_id }))
}

/// A small PNG (signature, a 32×24 header, then filler): what a sniffer calls an image.
fn png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bytes.extend(32u32.to_be_bytes());
    bytes.extend(24u32.to_be_bytes());
    bytes.extend([8, 6, 0, 0, 0]);
    bytes.extend((0..4000u32).map(|i| (i * 7 % 251) as u8));
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends an image or a voice message as Element does (the SDK uploads it, encrypted in an
/// encrypted room).
async fn attach(client: &Client, kind: &str, rest: &str) -> Result<Value, String> {
    use matrix_sdk::attachment::{AttachmentConfig, AttachmentInfo, BaseAudioInfo};
    let (room, name) = match rest.split_once(' ') {
        Some((room, name)) => (room, name.to_owned()),
        None => (rest, "Voice message.ogg".to_owned()),
    };
    let room = the_room(client, room.trim())?;
    let (bytes, mime, config) = if kind == "image" {
        (png(), mime::IMAGE_PNG, AttachmentConfig::new())
    } else {
        let mut ogg = b"OggS\0\x02".to_vec();
        ogg.extend((0..6000u32).map(|i| (i % 199) as u8));
        let info = AttachmentInfo::Voice(BaseAudioInfo {
            duration: Some(Duration::from_millis(2400)),
            size: None,
            waveform: Some(vec![0.1, 0.5, 0.9, 0.4]),
        });
        let mime: mime::Mime = "audio/ogg".parse().map_err(|e| format!("{e}"))?;
        (ogg, mime, AttachmentConfig::new().info(info))
    };
    let sent = room
        .send_attachment(name, &mime, bytes.clone(), config)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({ "event_id": sent.event_id, "hex": hex(&bytes) }))
}

/// Finds a file message named `name` from `sender`, downloads and decrypts it.
async fn download(client: &Client, rest: &str) -> Result<Value, String> {
    use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
    let mut parts = rest.splitn(3, ' ');
    let (Some(room), Some(sender), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("download <room> <sender> <name>".into());
    };
    let room = the_room(client, room)?;
    let sender: OwnedUserId = sender.try_into().map_err(|e| format!("{e}"))?;
    for _ in 0..300 {
        let messages = room
            .messages(MessagesOptions::backward())
            .await
            .map_err(|e| e.to_string())?;
        for event in &messages.chunk {
            let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                SyncMessageLikeEvent::Original(message),
            ))) = event.raw().deserialize()
            else {
                continue;
            };
            if message.sender != sender {
                continue;
            }
            use matrix_sdk::ruma::events::room::message::MessageType;
            let (msgtype, source, filename) = match &message.content.msgtype {
                MessageType::Image(m) => ("m.image", m.source.clone(), m.filename().to_owned()),
                MessageType::File(m) => ("m.file", m.source.clone(), m.filename().to_owned()),
                MessageType::Audio(m) => ("m.audio", m.source.clone(), m.filename().to_owned()),
                MessageType::Video(m) => ("m.video", m.source.clone(), m.filename().to_owned()),
                _ => continue,
            };
            if filename != name {
                continue;
            }
            let encrypted = matches!(source, matrix_sdk::ruma::events::room::MediaSource::Encrypted(_));
            let bytes = client
                .media()
                .get_media_content(
                    &MediaRequestParameters { source, format: MediaFormat::File },
                    false,
                )
                .await
                .map_err(|e| e.to_string())?;
            return Ok(json!({ "hex": hex(&bytes), "msgtype": msgtype, "encrypted": encrypted,
                "event_encrypted": event.encryption_info().is_some() }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no file `{name}` from {sender}"))
}

async fn join(client: &Client, room: &str) -> Result<Value, String> {
    let room: OwnedRoomId = room.trim().try_into().map_err(|e| format!("{e}"))?;
    client
        .join_room_by_id(&room)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({ "ok": true }))
}

async fn expect(client: &Client, rest: &str) -> Result<Value, String> {
    let mut parts = rest.splitn(3, ' ');
    let (Some(room), Some(sender), Some(words)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expect <room> <sender> <words>".into());
    };
    let room = the_room(client, room)?;
    let sender: OwnedUserId = sender.try_into().map_err(|e| format!("{e}"))?;
    let mut seen = Vec::new();
    for _ in 0..300 {
        seen.clear();
        let messages = room
            .messages(MessagesOptions::backward())
            .await
            .map_err(|e| e.to_string())?;
        let mut edits = 0;
        let mut found = None;
        for event in &messages.chunk {
            let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                SyncMessageLikeEvent::Original(message),
            ))) = event.raw().deserialize()
            else {
                continue;
            };
            if message.sender != sender {
                continue;
            }
            let body = message.content.body().to_owned();
            if matches!(message.content.relates_to, Some(Relation::Replacement(_))) {
                edits += 1;
            }
            seen.push(body.clone());
            if found.is_none() && body.contains(words) {
                let info = event.encryption_info();
                found = Some(json!({
                    "body": body,
                    "content": event.raw().get_field::<Value>("content").ok().flatten(),
                    "encrypted": info.is_some(),
                    "shield": info.map(|i| match i.verification_state.to_shield_state_lax() {
                        ShieldState::None => "none".to_owned(),
                        ShieldState::Red { message, .. } => format!("red: {message}"),
                        ShieldState::Grey { message, .. } => format!("grey: {message}"),
                    }),
                    "verification": info.map(|i| format!("{:?}", i.verification_state)),
                }));
            }
        }
        if let Some(mut found) = found {
            found["edits"] = json!(edits);
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "no message from {sender} with `{words}`; decrypted: {seen:?}"
    ))
}

/// Sends `text` in a fresh Megolm session as the client's own machine encrypts it, but keeps
/// the to-device requests carrying the session's key: the recipients see the event before
/// its key, as they do when to-device and timeline events travel in different transactions.
async fn late(
    client: &Client,
    rest: &str,
    held: &mut Vec<Arc<ToDeviceRequest>>,
) -> Result<Value, String> {
    let (room, text) = rest.split_once(' ').ok_or("late <room> <text>")?;
    let room = the_room(client, room)?;
    let members: Vec<OwnedUserId> = room
        .members(RoomMemberships::JOIN)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|m| m.user_id().to_owned())
        .collect();
    let guard = client.olm_machine_for_testing().await;
    let machine = guard.as_ref().ok_or("no olm machine")?;
    // A new session, so that no key the recipients hold opens this event.
    machine
        .discard_room_key(room.room_id())
        .await
        .map_err(|e| e.to_string())?;
    if let Some((id, claim)) = machine
        .get_missing_sessions(members.iter().map(|u| u.as_ref()))
        .await
        .map_err(|e| e.to_string())?
    {
        let response = client.send(claim).await.map_err(|e| e.to_string())?;
        machine
            .mark_request_as_sent(&id, &response)
            .await
            .map_err(|e| e.to_string())?;
    }
    let settings = EncryptionSettings::new(
        RoomEncryptionEventContent::with_recommended_defaults(),
        HistoryVisibility::Shared,
        CollectStrategy::AllDevices,
    );
    let requests = machine
        .share_room_key(room.room_id(), members.iter().map(|u| u.as_ref()), settings)
        .await
        .map_err(|e| e.to_string())?;
    if requests.is_empty() {
        return Err("no room key to hold back".into());
    }
    let content = Raw::new(&RoomMessageEventContent::text_plain(text))
        .map_err(|e| e.to_string())?
        .cast_unchecked();
    let encrypted = machine
        .encrypt_room_event_raw(room.room_id(), "m.room.message", &content)
        .await
        .map_err(|e| e.to_string())?;
    let request = SendMessageEvent::new_raw(
        room.room_id().to_owned(),
        TransactionId::new(),
        MessageLikeEventType::RoomEncrypted,
        encrypted.content.cast_unchecked(),
    );
    let sent = client.send(request).await.map_err(|e| e.to_string())?;
    held.extend(requests);
    Ok(json!({ "event_id": sent.event_id }))
}

/// Sends the room keys `late` held back.
async fn release(client: &Client, held: &mut Vec<Arc<ToDeviceRequest>>) -> Result<Value, String> {
    let guard = client.olm_machine_for_testing().await;
    let machine = guard.as_ref().ok_or("no olm machine")?;
    let count = held.len();
    for request in held.drain(..) {
        let send = SendToDevice::new_raw(
            request.event_type.clone(),
            request.txn_id.clone(),
            request.messages.clone(),
        );
        let response = client.send(send).await.map_err(|e| e.to_string())?;
        machine
            .mark_request_as_sent(&request.txn_id, &response)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(json!({ "sent": count }))
}
