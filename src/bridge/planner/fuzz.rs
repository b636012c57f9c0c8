//! The transaction → plan path without a database, for fuzzing and property tests: a body as a
//! homeserver would PUT it is parsed the way the appservice handler parses it, planned against a
//! fixed room and agent, and the plan's invariants are checked (no row written twice by one
//! statement, no text the store refuses). Panics are the fuzzer's findings.

use std::{collections::BTreeSet, sync::Arc};

use foldhash::{HashMap, HashSet};

use ruma::{
    OwnedRoomId,
    api::{IncomingRequestExt, appservice::event::push_events},
};
use serde_json::value::RawValue;

use super::{MirrorSettings, PlanInput, Planner};
use crate::{
    bridge::mirror::parts::TEXT_CHARS,
    bridge::{
        agents::AgentRegistry,
        mirror::{cache::RoomState, event::Envelope},
    },
    db::{PartSource, Party, PowerLevels, SessionChange, TxnRecord},
    model::{
        Agent, Behaviour, NameSource, Namespace, Visibility,
        ids::{AgentId, ChannelId, MicrodaoId},
    },
};

/// Plans `body` (a transaction's JSON) and checks the plan. `Ok` with the number of events
/// planned, `Err` naming a broken invariant; a body that is not a transaction is `Ok(0)` (the
/// handler answers it with a 4xx).
pub fn check_transaction(body: &[u8]) -> Result<usize, String> {
    let text = match std::str::from_utf8(body) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(body),
    };
    let Ok(request) = axum::http::Request::builder()
        .method("PUT")
        .uri("/_matrix/app/v1/transactions/t")
        .header("content-type", "application/json")
        .body(text.as_bytes())
    else {
        return Ok(0);
    };
    let Ok(request) = push_events::v1::Request::try_from_http_request(request, &["t"]) else {
        return Ok(0);
    };
    let raws: Vec<&RawValue> = request.events.iter().map(|r| r.json()).collect();
    plan(&raws)
}

/// Plans already-split events (each a JSON value) and checks the plan.
pub fn plan(raws: &[&RawValue]) -> Result<usize, String> {
    let namespace = Namespace::new(
        "localhost".try_into().map_err(|_| "server name")?,
        "daarion",
        "agent_",
    )
    .ok_or("namespace")?;
    let sofia = Agent {
        id: AgentId::new(),
        external_id: "agent:sofia".into(),
        user_id: namespace.puppet("sofia").ok_or("puppet")?,
        name: "Sofia".into(),
        microdao_id: None,
        kind: "assistant".into(),
        active: true,
        behaviour: Behaviour::default(),
    };
    let sofia_id = sofia.id;
    let registry = AgentRegistry::fixed(namespace.clone(), vec![sofia]);
    let settings = MirrorSettings {
        preview_chars: 40,
        answer_edits: true,
        command_prefix: "!daarion".into(),
        default_microdao: Some(MicrodaoId::new()),
    };
    let room: OwnedRoomId = "!room:localhost".try_into().map_err(|_| "room id")?;
    let mut rooms = HashMap::default();
    rooms.insert(
        room,
        Arc::new(RoomState {
            channel_id: ChannelId::new(),
            microdao_id: MicrodaoId::new(),
            name: "Room".into(),
            name_source: NameSource::Name,
            alias: None,
            topic: None,
            visibility: Visibility::Private,
            visibility_pinned: false,
            power: PowerLevels::default(),
            is_direct: false,
            agents: BTreeSet::from([sofia_id]),
        }),
    );
    let mut planner = Planner::new(PlanInput {
        namespace: &namespace,
        registry: &registry,
        settings: &settings,
        rooms,
        users: HashMap::default(),
        microdaos: HashMap::default(),
        sync: false,
    });
    let mut planned = 0;
    for raw in raws {
        match serde_json::from_str::<Envelope<'_>>(raw.get()) {
            Ok(env) => {
                planner.event(&env, raw);
                planned += 1;
            }
            Err(_) => planner.count_unparsed(),
        }
    }
    let plan = planner.finish(Some(TxnRecord {
        txn_hash: "h".into(),
        fingerprint: "f".into(),
        event_count: raws.len() as i32,
    }));
    let b = &plan.batch;
    unique("message", b.messages.iter().map(|m| m.event_id.to_string()))?;
    unique("edit target", b.edits.iter().map(|e| e.target.to_string()))?;
    unique(
        "redaction target",
        b.redactions.iter().map(|r| r.target.to_string()),
    )?;
    unique(
        "member",
        b.members
            .iter()
            .map(|m| format!("{}{:?}", m.channel_id, m.party)),
    )?;
    unique(
        "role",
        b.roles
            .iter()
            .map(|r| format!("{}{}", r.channel_id, r.user_id)),
    )?;
    unique(
        "session",
        b.sessions
            .iter()
            .map(|s| format!("{}{:?}", s.channel_id, s.agent)),
    )?;
    unique(
        "channel",
        b.channels.iter().map(|c| c.channel_id.to_string()),
    )?;
    unique(
        "candidate",
        b.candidates.iter().map(|c| c.event_id.to_string()),
    )?;
    let members: HashSet<_> = b.members.iter().map(|m| (m.channel_id, m.party)).collect();
    if b.roles
        .iter()
        .any(|r| members.contains(&(r.channel_id, Party::User(r.user_id))))
    {
        return Err("a role change of a member the batch also writes".into());
    }
    let messages: HashSet<_> = b.messages.iter().map(|m| m.event_id.clone()).collect();
    if b.edits.iter().any(|e| messages.contains(&e.target)) {
        return Err("an edit of a message of the same batch left unfolded".into());
    }
    for m in &b.messages {
        if m.redacted_at.is_some() && !m.parts.is_empty() {
            return Err(format!("redacted message {} keeps its parts", m.event_id));
        }
        for p in &m.parts {
            if p.text
                .as_ref()
                .is_some_and(|t| t.len() > TEXT_CHARS * 16 + 64)
            {
                return Err(format!("an unbounded part text in {}", m.event_id));
            }
            if let Some(PartSource::Mxc(uri)) = &p.source
                && !uri.starts_with("mxc://")
            {
                return Err(format!("a source that is no mxc URI: {uri:?}"));
            }
        }
    }
    if b.sessions
        .iter()
        .any(|s| s.agent.is_none() && s.change == SessionChange::Activate)
    {
        return Err("a session activation without an agent".into());
    }
    let ids = b
        .messages
        .iter()
        .map(|m| m.event_id.as_str())
        .chain(b.edits.iter().map(|e| e.target.as_str()))
        .chain(b.redactions.iter().map(|r| r.target.as_str()))
        .chain(
            b.messages
                .iter()
                .filter_map(|m| m.thread_root.as_ref().map(|t| t.as_str())),
        );
    for id in ids {
        if id.contains('\0') {
            return Err(format!("an id with NUL reaches the store: {id:?}"));
        }
    }
    if plan.outcomes.len() != raws.len() {
        return Err(format!(
            "{} events, {} outcomes counted",
            raws.len(),
            plan.outcomes.len()
        ));
    }
    Ok(planned)
}

fn unique(what: &str, keys: impl Iterator<Item = String>) -> Result<(), String> {
    let mut seen = HashSet::default();
    for key in keys {
        if !seen.insert(key.clone()) {
            return Err(format!("{what} {key} written twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// Text a hostile or broken client might send: NUL, combining marks, markup, emoji, long.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z ]{0,20}",
            Just("a\u{0}b".to_owned()),
            Just("e\u{301}".repeat(300)),
            Just("<b>x</b><mx-reply>q</mx-reply>&amp;".to_owned()),
            Just("👨‍👩‍👧‍👦".repeat(50)),
            "\\PC{0,40}",
        ]
    }

    fn event_id() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..6).prop_map(|n| format!("$e{n}")),
            Just("$bad\u{0}id".to_owned()),
            Just("no-sigil".to_owned()),
        ]
    }

    fn user() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("@alice:localhost".to_owned()),
            Just("@bob:localhost".to_owned()),
            Just("@agent_sofia:localhost".to_owned()),
            Just("@agent_unknown:localhost".to_owned()),
            Just("@daarion:localhost".to_owned()),
            Just("@a\u{0}b:localhost".to_owned()),
            Just("not a user".to_owned()),
        ]
    }

    /// Media messages as clients send them, and broken: odd URLs, encrypted files with or
    /// without their key, `info` of any shape, captions.
    fn media() -> impl Strategy<Value = (String, Option<String>, Value)> {
        let kind = prop_oneof![
            Just("m.image"),
            Just("m.file"),
            Just("m.audio"),
            Just("m.video")
        ];
        let source = prop_oneof![
            Just(json!({ "url": "mxc://x/y" })),
            Just(json!({ "url": "https://x/y" })),
            Just(json!({ "url": 7 })),
            Just(json!({})),
            Just(
                json!({ "file": { "url": "mxc://x/e", "key": { "kty": "oct", "key_ops": ["encrypt", "decrypt"],
                "alg": "A256CTR", "k": "qcHVMSgYg-71CauWBezXI5qkaRb0LuIy-Wx5kIaHMIA", "ext": true },
                "iv": "X85+XgHN+HEAAAAAAAAAAA", "hashes": { "sha256": "5qG4fFnbbVdlAB1Q72JDKwCagV6Dbkx9uds4rSak37c" }, "v": "v2" } })
            ),
            Just(json!({ "file": { "url": "mxc://x/e" } })),
        ];
        let info = prop_oneof![
            Just(Value::Null),
            Just(json!("big")),
            Just(json!({ "mimetype": "image/png", "size": 10, "w": 1, "h": 2, "duration": 3 })),
            Just(json!({ "mimetype": 5, "size": -1, "w": "wide", "h": 1e300, "duration": "x" })),
            Just(json!({ "w": 9_000_000_000u64, "size": u64::MAX })),
        ];
        (
            kind,
            text(),
            prop::option::of(text()),
            source,
            info,
            prop::bool::ANY,
        )
            .prop_map(|(kind, body, filename, source, info, voice)| {
                let mut c = source;
                c["msgtype"] = json!(kind);
                c["body"] = json!(body);
                if let Some(f) = filename {
                    c["filename"] = json!(f);
                }
                if !info.is_null() {
                    c["info"] = info;
                }
                if voice {
                    c["org.matrix.msc3245.voice"] = json!({});
                }
                ("m.room.message".to_owned(), None, c)
            })
    }

    fn content() -> impl Strategy<Value = (String, Option<String>, Value)> {
        prop_oneof![
            (text(), prop::option::of(text())).prop_map(|(b, html)| {
                let mut c = json!({ "msgtype": "m.text", "body": b });
                if let Some(h) = html {
                    c["format"] = json!("org.matrix.custom.html");
                    c["formatted_body"] = json!(h);
                }
                ("m.room.message".to_owned(), None, c)
            }),
            (text(), event_id()).prop_map(|(b, target)| (
                "m.room.message".to_owned(),
                None,
                json!({ "msgtype": "m.text", "body": "* e", "m.new_content": { "msgtype": "m.text", "body": b },
                        "m.relates_to": { "rel_type": "m.replace", "event_id": target } })
            )),
            (text(), event_id()).prop_map(|(b, root)| (
                "m.room.message".to_owned(),
                None,
                json!({ "msgtype": "m.text", "body": b, "m.relates_to": { "rel_type": "m.thread", "event_id": root },
                        "m.mentions": { "user_ids": ["@agent_sofia:localhost"] } })
            )),
            event_id().prop_map(|t| ("m.room.redaction".to_owned(), None, json!({ "redacts": t }))),
            (user(), prop_oneof![Just("join"), Just("leave"), Just("invite"), Just("ban"), Just("knock")])
                .prop_map(|(u, m)| ("m.room.member".to_owned(), Some(u), json!({ "membership": m }))),
            text().prop_map(|n| ("m.room.name".to_owned(), Some(String::new()), json!({ "name": n }))),
            Just(("m.room.name".to_owned(), Some(String::new()), json!({}))),
            text().prop_map(|t| ("m.room.topic".to_owned(), Some(String::new()), json!({ "topic": t }))),
            (user(), -10i64..200).prop_map(|(u, l)| (
                "m.room.power_levels".to_owned(),
                Some(String::new()),
                json!({ "users": { u: l } })
            )),
            text().prop_map(|b| ("m.sticker".to_owned(), None, json!({ "body": b, "url": "mxc://x/y", "info": {} }))),
            media(),
            Just(("m.room.encrypted".to_owned(), None, json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x" }))),
            Just(("m.room.tombstone".to_owned(), Some(String::new()), json!({ "body": "moved", "replacement_room": "!n:x" }))),
            Just(("m.room.message".to_owned(), None, {
                let mut deep = json!([]);
                for _ in 0..200 {
                    deep = json!([deep]);
                }
                json!({ "msgtype": "m.text", "body": "deep", "nested": deep })
            })),
            Just(("m.room.message".to_owned(), None, json!("not an object"))),
        ]
    }

    fn event() -> impl Strategy<Value = Value> {
        (event_id(), user(), content(), prop::bool::ANY, 0u64..2_000_000_000_000).prop_map(
            |(id, sender, (kind, state_key, content), in_room, ts)| {
                let mut e = json!({ "type": kind, "event_id": id, "sender": sender, "origin_server_ts": ts, "content": content });
                if in_room {
                    e["room_id"] = json!("!room:localhost");
                } else {
                    e["room_id"] = json!("!elsewhere:localhost");
                }
                if let Some(k) = state_key {
                    e["state_key"] = json!(k);
                }
                e
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_event_list_plans_within_the_invariants(events in prop::collection::vec(event(), 0..40)) {
            let raws: Vec<Box<RawValue>> = events
                .iter()
                .map(|e| serde_json::value::to_raw_value(e).unwrap())
                .collect();
            let refs: Vec<&RawValue> = raws.iter().map(|r| r.as_ref()).collect();
            prop_assert!(plan(&refs).is_ok(), "{:?}", plan(&refs));
        }

        #[test]
        fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(check_transaction(&bytes).is_ok());
        }
    }

    #[test]
    fn a_deep_event_is_skipped_not_fatal() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let body = format!(
            r#"{{"events":[{{"type":"m.room.message","event_id":"$d","sender":"@alice:localhost","room_id":"!room:localhost","origin_server_ts":1,"content":{{"msgtype":"m.text","body":"x","deep":{deep}}}}},{{"type":"m.room.message","event_id":"$ok","sender":"@alice:localhost","room_id":"!room:localhost","origin_server_ts":1,"content":{{"msgtype":"m.text","body":"fine"}}}}]}}"#
        );
        assert_eq!(check_transaction(body.as_bytes()), Ok(2));
    }
}
