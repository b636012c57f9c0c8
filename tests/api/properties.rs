//! Property test over HTTP: any transaction a hostile homeserver could send, built from
//! arbitrary JSON, gets `200 {}` or a Matrix 4xx, and the bridge keeps serving.

use rstest::rstest;
use serde_json::{Value, json};

use crate::support::{Backend, HS_TOKEN, TestApp, ev};

/// Arbitrary JSON, with the strings a hostile client likes.
pub fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        Just(json!("a\u{0}b")),
        Just(json!("@agent_sofia:localhost")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("body".to_owned()),
                    Just("msgtype".to_owned()),
                    Just("membership".to_owned()),
                    Just("m.relates_to".to_owned()),
                    Just("m.new_content".to_owned()),
                    Just("name".to_owned()),
                    Just("users".to_owned()),
                    Just("redacts".to_owned()),
                    "[a-z.]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An event as a homeserver could send it: known types, odd ids, arbitrary content.
pub fn homeserver_event() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    (
        prop_oneof![
            Just("m.room.message"),
            Just("m.room.member"),
            Just("m.room.redaction"),
            Just("m.room.name"),
            Just("m.room.power_levels"),
            Just("m.room.encrypted"),
            Just("m.sticker"),
            Just("city.daarion.channel"),
            Just("x.custom"),
        ],
        prop_oneof![Just("$e1"), Just("$e2"), Just("$\u{0}"), Just("bad")],
        prop_oneof![
            Just("@alice:localhost"),
            Just(ev::SOFIA),
            Just(ev::BOT),
            Just("@x\u{0}:localhost")
        ],
        prop::option::of(prop_oneof![
            Just(""),
            Just("@alice:localhost"),
            Just(ev::SOFIA),
            Just(ev::BOT)
        ]),
        json_value(),
        prop_oneof![Just(ev::ROOM), Just("!other:localhost")],
    )
        .prop_map(|(kind, id, sender, key, content, room)| {
            let mut e = json!({ "type": kind, "event_id": id, "sender": sender, "room_id": room,
                                "origin_server_ts": 1_700_000_000_000u64, "content": content });
            if let Some(k) = key {
                e["state_key"] = json!(k);
            }
            e
        })
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_transaction_gets_200_or_a_matrix_4xx(#[case] b: Backend) {
    use proptest::{
        strategy::Strategy,
        test_runner::{Config, TestRunner},
    };
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let bodies = proptest::prop_oneof![
        proptest::collection::vec(homeserver_event(), 0..12)
            .prop_map(|events| serde_json::to_vec(&json!({ "events": events })).unwrap()),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..200),
    ];
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&bodies, |body| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (status, reply) = tokio::task::block_in_place(|| {
                handle.block_on(app.put_raw(&format!("prop{n}"), body))
            });
            proptest::prop_assert!(
                status == 200 || ((400..500).contains(&status) && reply["errcode"].is_string()),
                "status {status}: {reply}"
            );
            Ok(())
        })
        .unwrap();
    // And the bridge is still healthy after all of it.
    assert_eq!(
        app.put_txn("after", vec![ev::text("after", "@alice:localhost", "fine")])
            .await
            .0,
        200
    );
    let _ = HS_TOKEN;
}
