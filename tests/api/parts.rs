//! `message_parts` (issue #24, seed 004): images, files, voice messages, videos and stickers
//! are mirrored with their parts in the message's own transaction, an encrypted file without
//! anything of its key, bad media as far as it parses (never failing the transaction); a
//! redaction deletes the parts, a replay writes none twice; `chat.message.created`, the agent
//! API's message pages and the export name them; the migration goes down and up. On SQLite and
//! PostgreSQL.

use daarion_bridge::export::{self, Format, Range};
use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    agents::{api, setup},
    e2ee::{Alice, SOFIA, upload},
    events::stored,
    support::{Backend, TestApp, ev},
};

const ALICE: &str = "@alice:localhost";

/// An `m.room.message` of Alice's.
fn message(id: &str, content: Value) -> Value {
    ev::base("m.room.message", id, ALICE, content)
}

/// An encrypted file as Element sends it (v2); its key, IV and hash must never be stored.
fn encrypted_file() -> Value {
    json!({
        "url": "mxc://localhost/encryptedblob",
        "key": { "kty": "oct", "key_ops": ["encrypt", "decrypt"], "alg": "A256CTR",
                 "k": KEY, "ext": true },
        "iv": IV,
        "hashes": { "sha256": HASH },
        "v": "v2",
    })
}
const KEY: &str = "qcHVMSgYg-71CauWBezXI5qkaRb0LuIy-Wx5kIaHMIA";
const IV: &str = "X85+XgHN+HEAAAAAAAAAAA";
const HASH: &str = "5qG4fFnbbVdlAB1Q72JDKwCagV6Dbkx9uds4rSak37c";

/// One media message of each kind, a captioned image, and plain text.
fn media() -> Vec<Value> {
    vec![
        message(
            "img",
            json!({ "msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/cat",
                    "info": { "mimetype": "image/png", "size": 1234, "w": 640, "h": 480 } }),
        ),
        message(
            "cap",
            json!({ "msgtype": "m.image", "body": "look at this dog", "filename": "dog.jpg",
                    "url": "mxc://localhost/dog", "info": { "mimetype": "image/jpeg" } }),
        ),
        message(
            "pdf",
            json!({ "msgtype": "m.file", "body": "report.pdf", "url": "mxc://localhost/pdf",
                    "info": { "mimetype": "application/pdf", "size": 99999 } }),
        ),
        message(
            "voice",
            json!({ "msgtype": "m.audio", "body": "Voice message.ogg", "url": "mxc://localhost/voice",
                    "info": { "mimetype": "audio/ogg", "size": 5000, "duration": 3200 },
                    "org.matrix.msc1767.audio": { "duration": 3200, "waveform": [0, 512, 1024] },
                    "org.matrix.msc3245.voice": {} }),
        ),
        message(
            "song",
            json!({ "msgtype": "m.audio", "body": "song.mp3", "url": "mxc://localhost/song",
                    "info": { "duration": 180000 } }),
        ),
        message(
            "clip",
            json!({ "msgtype": "m.video", "body": "clip.mp4", "url": "mxc://localhost/clip",
                    "info": { "mimetype": "video/mp4", "size": 123456, "w": 1920, "h": 1080, "duration": 10000 } }),
        ),
        ev::base(
            "m.sticker",
            "stk",
            ALICE,
            json!({ "body": "thumbs up", "url": "mxc://localhost/stk",
                    "info": { "mimetype": "image/webp", "w": 256, "h": 256, "size": 100 } }),
        ),
        ev::text("txt", ALICE, "just text"),
    ]
}

/// Every part, as text: event, position, kind, mimetype, size, name, w, h, duration, voice,
/// source, text.
const PARTS: &str = "SELECT m.matrix_event_id, CAST(p.position AS TEXT), p.kind, p.mimetype, \
     CAST(p.size_bytes AS TEXT), p.name, CAST(p.width AS TEXT), CAST(p.height AS TEXT), \
     CAST(p.duration_ms AS TEXT), CASE WHEN p.voice THEN 'voice' ELSE '' END, p.source, p.text \
     FROM message_parts p JOIN messages m ON m.id = p.message_id ORDER BY m.matrix_event_id, p.position";

/// The rows of [`PARTS`], NULL as "-".
async fn parts(app: &TestApp) -> Vec<String> {
    app.rows(PARTS)
        .await
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|c| c.unwrap_or_else(|| "-".into()))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// The `parts` of each `chat.message.created` payload, by event id.
async fn created_parts(app: &TestApp) -> Vec<(String, Value)> {
    stored(app)
        .await
        .into_iter()
        .filter(|e| e.topic == "chat.message.created")
        .map(|e| {
            (
                e.payload["matrix_event_id"].as_str().unwrap().to_owned(),
                e.payload["parts"].clone(),
            )
        })
        .collect()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_messages_store_their_parts(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    assert_eq!(app.put_txn("media", media()).await.0, 200);
    assert_eq!(
        parts(&app).await,
        [
            "$cap|0|image|image/jpeg|-|dog.jpg|-|-|-||mxc://localhost/dog|-",
            "$cap|1|text|-|-|-|-|-|-||-|look at this dog",
            "$clip|0|video|video/mp4|123456|clip.mp4|1920|1080|10000||mxc://localhost/clip|-",
            "$img|0|image|image/png|1234|cat.png|640|480|-||mxc://localhost/cat|-",
            "$pdf|0|file|application/pdf|99999|report.pdf|-|-|-||mxc://localhost/pdf|-",
            "$song|0|audio|-|-|song.mp3|-|-|180000||mxc://localhost/song|-",
            "$stk|0|image|image/webp|100|-|256|256|-||mxc://localhost/stk|-",
            "$voice|0|audio|audio/ogg|5000|Voice message.ogg|-|-|3200|voice|mxc://localhost/voice|-",
        ]
    );
    // Previews are what they were.
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE matrix_event_id IN ('$cap', '$stk', '$txt') ORDER BY matrix_event_id")
            .await,
        ["[image] dog.jpg", "[sticker] thumbs up", "just text"]
    );
    // The events name the parts: kind and metadata, never the text or the source.
    let events = created_parts(&app).await;
    let of = |id: &str| {
        events
            .iter()
            .find(|(e, _)| e == id)
            .map(|(_, p)| p.clone())
            .unwrap()
    };
    assert_eq!(of("$txt"), json!([]));
    assert_eq!(
        of("$cap"),
        json!([
            { "kind": "image", "mimetype": "image/jpeg", "size": null, "name": "dog.jpg", "width": null,
              "height": null, "duration_ms": null, "voice": false, "encrypted": false },
            { "kind": "text", "mimetype": null, "size": null, "name": null, "width": null,
              "height": null, "duration_ms": null, "voice": false, "encrypted": false },
        ])
    );
    assert_eq!(of("$voice")[0]["voice"], true);
    assert_eq!(of("$voice")[0]["duration_ms"], 3200);
    assert_eq!(of("$clip")[0]["width"], 1920);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"daarion_bridge_media_parts_total{outcome="plain"} 7"#),
        "{metrics}"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_file_stores_nothing_of_its_key(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let events = vec![
        message(
            "enc",
            json!({ "msgtype": "m.image", "body": "secret.png", "file": encrypted_file(),
                    "info": { "mimetype": "image/png", "size": 2048, "w": 10, "h": 20 } }),
        ),
        message(
            "encfile",
            json!({ "msgtype": "m.file", "body": "plan.pdf", "file": encrypted_file() }),
        ),
    ];
    assert_eq!(app.put_txn("enc", events).await.0, 200);
    assert_eq!(
        parts(&app).await,
        [
            "$enc|0|image|image/png|2048|secret.png|10|20|-||encrypted|-",
            "$encfile|0|file|-|-|plan.pdf|-|-|-||encrypted|-",
        ]
    );
    assert_no_key(&app).await;
    let events = created_parts(&app).await;
    assert!(
        events.iter().all(|(_, p)| p[0]["encrypted"] == true),
        "{events:?}"
    );
    assert!(
        app.metrics()
            .await
            .contains(r#"daarion_bridge_media_parts_total{outcome="encrypted"} 2"#)
    );
}

/// Nothing of the test file's key, IV, hash or URI in the parts, the messages or the events.
async fn assert_no_key(app: &TestApp) {
    let everything = [
        "SELECT COALESCE(name, '') || COALESCE(source, '') || COALESCE(text, '') || COALESCE(mimetype, '') \
         FROM message_parts",
        "SELECT content_preview FROM messages",
        "SELECT CAST(payload AS TEXT) FROM outbox_events",
    ];
    for sql in everything {
        for value in app.col(sql).await {
            for secret in [KEY, IV, HASH, "encryptedblob"] {
                assert!(!value.contains(secret), "{secret} stored: {value}");
            }
        }
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_media_is_stored_as_far_as_it_parses(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    let mut no_key = encrypted_file();
    no_key.as_object_mut().unwrap().remove("key");
    let events = vec![
        // A URL that is not mxc://: no source, everything else kept.
        message(
            "https",
            json!({ "msgtype": "m.image", "body": "web.png", "url": "https://example.org/web.png",
                    "info": { "mimetype": "image/png", "w": 1, "h": 2 } }),
        ),
        // No URL at all, and one that is not a string.
        message("nourl", json!({ "msgtype": "m.file", "body": "ghost.txt" })),
        message(
            "numurl",
            json!({ "msgtype": "m.video", "body": "v.mp4", "url": 42 }),
        ),
        // An info that is no object, and one with values of the wrong type.
        message(
            "strinfo",
            json!({ "msgtype": "m.image", "body": "s.png", "url": "mxc://localhost/s", "info": "big" }),
        ),
        message(
            "badinfo",
            json!({ "msgtype": "m.image", "body": "b.png", "url": "mxc://localhost/b",
                    "info": { "mimetype": "image/png", "w": "wide", "h": -5, "size": 77 } }),
        ),
        // Too wide for its column, and a duration that is text.
        message(
            "huge",
            json!({ "msgtype": "m.video", "body": "h.mp4", "url": "mxc://localhost/h",
                    "info": { "w": 9_000_000_000u64, "h": 10, "duration": "long" } }),
        ),
        // An EncryptedFile without its key: cannot be decrypted, so no source.
        message(
            "nokey",
            json!({ "msgtype": "m.audio", "body": "k.ogg", "file": no_key }),
        ),
        // A sticker with a bad info is still mirrored, with its image.
        ev::base(
            "m.sticker",
            "badstk",
            ALICE,
            json!({ "body": "wave", "url": "mxc://localhost/w", "info": { "w": "x" } }),
        ),
        ev::text("after", ALICE, "still here"),
    ];
    assert_eq!(app.put_txn("bad", events).await.0, 200);
    assert_eq!(
        parts(&app).await,
        [
            "$badinfo|0|image|image/png|77|b.png|-|-|-||mxc://localhost/b|-",
            "$badstk|0|image|-|-|-|-|-|-||mxc://localhost/w|-",
            "$https|0|image|image/png|-|web.png|1|2|-||-|-",
            "$huge|0|video|-|-|h.mp4|-|10|-||mxc://localhost/h|-",
            "$nokey|0|audio|-|-|k.ogg|-|-|-||-|-",
            "$nourl|0|file|-|-|ghost.txt|-|-|-||-|-",
            "$numurl|0|video|-|-|v.mp4|-|-|-||-|-",
            "$strinfo|0|image|-|-|s.png|-|-|-||mxc://localhost/s|-",
        ]
    );
    assert_eq!(app.count("messages").await, 9, "every event mirrored");
    let metrics = app.metrics().await;
    for needle in [
        r#"daarion_bridge_media_parts_total{outcome="bad_source"} 4"#,
        r#"daarion_bridge_media_parts_total{outcome="bad_info"} 4"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_deletes_the_parts(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    assert_eq!(app.put_txn("media", media()).await.0, 200);
    let before = parts(&app).await.len();
    let redaction = |id: &str, target: &str| {
        let mut r = ev::base("m.room.redaction", id, ALICE, json!({ "redacts": target }));
        r["redacts"] = json!(target);
        r
    };
    // One message redacted later, one in its own transaction.
    let fresh = message(
        "fresh",
        json!({ "msgtype": "m.image", "body": "oops.png", "filename": "oops.png", "url": "mxc://localhost/oops" }),
    );
    let (status, _) = app
        .put_txn(
            "redact",
            vec![redaction("r1", "$cap"), fresh, redaction("r2", "$fresh")],
        )
        .await;
    assert_eq!(status, 200);
    let after = parts(&app).await;
    assert_eq!(after.len(), before - 2, "{after:?}");
    assert!(
        after
            .iter()
            .all(|p| !p.starts_with("$cap|") && !p.starts_with("$fresh|"))
    );
    assert_eq!(
        app.col("SELECT content_preview FROM messages WHERE matrix_event_id IN ('$cap', '$fresh')")
            .await,
        ["", ""]
    );
    let created = created_parts(&app).await;
    let fresh = created.iter().find(|(e, _)| e == "$fresh").unwrap();
    assert_eq!(
        fresh.1,
        json!([]),
        "a message redacted in its batch names no parts"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_writes_no_part_twice(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    assert_eq!(app.put_txn("media", media()).await.0, 200);
    let first = parts(&app).await;
    let events = stored(&app).await.len();
    // The same transaction again, and the same events under another txnId.
    assert_eq!(app.put_txn("media", media()).await.0, 200);
    assert_eq!(app.put_txn("media-again", media()).await.0, 200);
    assert_eq!(parts(&app).await, first);
    assert_eq!(app.count("message_parts").await, 8);
    assert_eq!(stored(&app).await.len(), events, "no event twice either");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_export_name_the_parts(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = setup(&app).await;
    assert_eq!(app.put_txn("media", media()).await.0, 200);
    let (status, page, _) = api(
        &app,
        reqwest::Method::GET,
        &format!("/api/v1/channels/{channel}/messages?limit=200"),
        &key,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let messages = page["messages"].as_array().unwrap();
    let of = |id: &str| {
        messages
            .iter()
            .find(|m| m["event_id"] == id)
            .unwrap_or_else(|| panic!("{id} in {page}"))["parts"]
            .clone()
    };
    assert_eq!(of("$txt"), json!([]));
    assert_eq!(
        of("$cap"),
        json!([
            { "position": 0, "kind": "image", "mimetype": "image/jpeg", "size": null, "name": "dog.jpg",
              "width": null, "height": null, "duration_ms": null, "voice": false,
              "source": "mxc://localhost/dog", "text": null },
            { "position": 1, "kind": "text", "mimetype": null, "size": null, "name": null,
              "width": null, "height": null, "duration_ms": null, "voice": false,
              "source": null, "text": "look at this dog" },
        ])
    );
    assert_eq!(of("$voice")[0]["voice"], true);
    assert_eq!(of("$img")[0]["width"], 640);

    let channel_id = export::resolve(&app.store, &channel).await.unwrap();
    let mut out = Vec::new();
    export::write(
        &app.store,
        channel_id,
        Format::Jsonl,
        Range::default(),
        &mut out,
    )
    .await
    .unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exported = |id: &str| {
        lines
            .iter()
            .find(|l| l["matrix_event_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(exported("$cap")["parts"], of("$cap"));
    assert_eq!(exported("$txt")["parts"], json!([]));
    assert!(
        lines
            .iter()
            .filter(|l| l["type"] != "message")
            .all(|l| l.get("parts").is_none())
    );

    let mut csv = Vec::new();
    export::write(
        &app.store,
        channel_id,
        Format::Csv,
        Range::default(),
        &mut csv,
    )
    .await
    .unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let headers = reader.headers().unwrap().clone();
    let column = headers.iter().position(|h| h == "parts").unwrap();
    let event = headers.iter().position(|h| h == "matrix_event_id").unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let cell = |id: &str| {
        rows.iter()
            .find(|r| &r[event] == id)
            .map(|r| r[column].to_owned())
            .unwrap()
    };
    assert_eq!(
        serde_json::from_str::<Value>(&cell("$cap")).unwrap(),
        of("$cap")
    );
    assert_eq!(cell("$txt"), "");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parts_migration_goes_down_and_up(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    crate::mirrored(&app).await;
    assert_eq!(app.put_txn("media", media()).await.0, 200);
    // Migrations run with the bridge stopped (docs/deployment.md), on a store of their own as
    // `daarion-bridge migrate` has: a running leader's pool checks its lease on every new
    // connection, and this down step drops the lease table under it.
    app.stop_bridge().await;
    let store = daarion_bridge::db::Store::connect(&app.db_url, 2)
        .await
        .unwrap();
    store.migrate_down_to(9).await.unwrap();
    let tables =
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'message_parts'";
    let sqlite =
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'message_parts'";
    let count = |sql: &str| format!("SELECT CAST(({sql}) AS TEXT)");
    let exists = || async {
        app.col(&count(if b == Backend::Sqlite { sqlite } else { tables }))
            .await
            == ["1"]
    };
    assert!(!exists().await, "the down step drops the table");
    assert_eq!(app.count("messages").await, 8, "and nothing else");
    store.migrate().await.unwrap();
    // The bridge started again leads, and mirrors media into the table made again.
    let again = app.restart().await;
    again.until_leads().await;
    assert!(exists().await);
    assert_eq!(app.count("message_parts").await, 0);
    assert_eq!(again.put_txn("media-2", vec![message(
        "again",
        json!({ "msgtype": "m.image", "body": "again.png", "url": "mxc://localhost/again" }),
    )])
    .await
    .0, 200);
    assert_eq!(app.count("message_parts").await, 1);
}

/// Through the bridge's crypto: Alice's encrypted image decrypts in the transaction and is
/// mirrored with its parts like a plaintext one (source `encrypted`); with
/// `store_previews = false` the file name and caption stay out as the text does.
#[rstest]
#[case::sqlite(Backend::Sqlite, true)]
#[case::postgres(Backend::Postgres, true)]
#[case::sqlite_hidden(Backend::Sqlite, false)]
#[case::postgres_hidden(Backend::Postgres, false)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypted_media_gets_its_parts(#[case] b: Backend, #[case] previews: bool) {
    let app = crate::crypto::encrypted_bridge(b, &format!("store_previews = {previews}")).await;
    assert_eq!(
        app.put_txn("sj", vec![ev::member("sj", SOFIA, SOFIA, "join")])
            .await
            .0,
        200
    );
    let crypto = app.crypto.clone().expect("encryption is on");
    let uploaded = upload(&crypto.opened()[0].machine).await;
    let mut alice = Alice::meet(&uploaded).await;
    alice.room = ev::ROOM.try_into().unwrap();
    let keys = alice.share_key().await;
    let image = alice
        .say_content(
            "$photo",
            json!({ "msgtype": "m.image", "body": "a sunset", "filename": "sunset.jpg",
                    "file": encrypted_file(), "info": { "mimetype": "image/jpeg", "w": 800, "h": 600, "size": 4096 } }),
        )
        .await;
    // A sticker's body is its text too.
    let sticker = alice
        .send_content(
            "$sticker",
            "m.sticker",
            json!({ "body": "a secret wink", "url": "mxc://localhost/wink",
                    "info": { "mimetype": "image/png", "w": 64, "h": 64 } }),
        )
        .await;
    let body = json!({ "events": [image, sticker], "to_device": keys });
    let (status, _) = app
        .put_raw("photo", serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(status, 200);
    if previews {
        assert_eq!(
            parts(&app).await,
            [
                "$photo|0|image|image/jpeg|4096|sunset.jpg|800|600|-||encrypted|-",
                "$photo|1|text|-|-|-|-|-|-||-|a sunset",
                "$sticker|0|image|image/png|-|-|64|64|-||mxc://localhost/wink|-",
            ]
        );
    } else {
        assert_eq!(
            parts(&app).await,
            [
                "$photo|0|image|image/jpeg|4096|-|800|600|-||encrypted|-",
                "$sticker|0|image|image/png|-|-|64|64|-||mxc://localhost/wink|-",
            ]
        );
    }
    let sticker = app
        .col("SELECT content_preview FROM messages WHERE matrix_event_id = '$sticker'")
        .await;
    if previews {
        assert_eq!(sticker, ["[sticker] a secret wink"]);
    } else {
        assert_eq!(
            sticker,
            ["[encrypted]"],
            "a hidden sticker's body stays out"
        );
    }
    assert_no_key(&app).await;
}
