//! What a runtime gets of the files people send (issue #24), on SQLite and PostgreSQL, with the
//! (fake) homeserver serving the media: an image as an `image_url` to a model that sees, the
//! same from an `EncryptedFile`, a text file's text, a voice message's transcript; and every bad
//! input (a tampered file, a wrong key, 404, 5xx, 0 bytes, over the cap, a type that lies, a URL
//! that is not `mxc://`, a malformed `info`) named with its reason, counted, and never failing
//! the run.

use std::io::{Cursor, Read};

use base64::Engine;
use rstest::rstest;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    agents::setup,
    model::FakeModel,
    runs::{mention, runtime_config, wait_runs},
    support::{Backend, TestApp, ev},
};

const A: &str = "@alice:localhost";

/// A small PNG, as far as a sniffer can tell.
fn png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.extend((0..2000u32).map(|i| (i % 253) as u8));
    bytes
}

/// `bytes` encrypted as a client encrypts an attachment: the ciphertext, and the event's
/// `file` (key, iv, hashes) pointing at `url`.
fn seal(bytes: &[u8], url: &str) -> (Vec<u8>, Value) {
    let mut cursor = Cursor::new(bytes.to_vec());
    let mut encryptor = matrix_sdk_crypto::AttachmentEncryptor::new(&mut cursor);
    let mut cipher = Vec::new();
    encryptor.read_to_end(&mut cipher).unwrap();
    let mut file = serde_json::to_value(encryptor.finish()).unwrap();
    file["url"] = json!(url);
    (cipher, file)
}

/// A one-page PDF whose page shows `text` (made with lopdf, as a PDF writer would).
fn pdf(text: &str) -> Vec<u8> {
    use lopdf::{
        Document, Object, Stream,
        content::{Content, Operation},
        dictionary,
    };
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font = doc.add_object(dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
    });
    let resources = doc.add_object(dictionary! { "Font" => dictionary! { "F1" => font } });
    let content = Content {
        operations: vec![
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec!["F1".into(), 12.into()]),
            Operation::new("Td", vec![72.into(), 720.into()]),
            Operation::new("Tj", vec![Object::string_literal(text)]),
            Operation::new("ET", vec![]),
        ],
    };
    let contents = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
    let page = doc.add_object(dictionary! {
        "Type" => "Page", "Parent" => pages_id, "Contents" => contents,
    });
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages", "Kids" => vec![page.into()], "Count" => 1,
            "Resources" => resources,
            "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
        }),
    );
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog);
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).unwrap();
    bytes
}

/// A bridge whose agent runs on a fake OpenAI-compatible model with `openai` settings added.
async fn with_model(b: Backend, openai: &str, bridge: &str) -> (FakeModel, TestApp) {
    let (model, url) = FakeModel::spawn("plain").await;
    let extra = format!("[blueprints.openai]\nbase_url = \"{url}\"\n{openai}");
    let bridge = bridge.to_owned();
    let app = TestApp::spawn_with(b, move |c| {
        let c = runtime_config("openai", &extra)(c);
        c.replace("[bridge]\n", &format!("{bridge}[bridge]\n"))
    })
    .await;
    setup(&app).await;
    (model, app)
}

fn message(id: &str, content: Value) -> Value {
    ev::at(
        ev::base("m.room.message", id, A, content),
        1_700_000_000_000,
    )
}

/// The history holds `events` (newest first); Alice asks Sofia about them; the model's request.
async fn ask(app: &TestApp, model: &FakeModel, events: Vec<Value>) -> Value {
    app.hs.history.lock().unwrap().extend(
        std::iter::once(mention("q", "Sofia, what did I send?", &[ev::SOFIA])).chain(events),
    );
    let (status, _) = app
        .put_txn(
            "ask",
            vec![mention("q", "Sofia, what did I send?", &[ev::SOFIA])],
        )
        .await;
    assert_eq!(status, 200);
    wait_runs(app, 1, "completed").await;
    model.requests.lock().unwrap()[0].clone()
}

/// The content of the user turn that holds `needle`.
fn turn_with<'a>(req: &'a Value, needle: &str) -> &'a Value {
    req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["content"])
        .find(|c| c.to_string().contains(needle))
        .unwrap_or_else(|| panic!("no turn with {needle}: {req}"))
}

/// The bytes of the `data:` URI of a content-parts turn's image.
fn image_bytes(content: &Value) -> Vec<u8> {
    let url = content
        .as_array()
        .unwrap_or_else(|| panic!("content parts: {content}"))
        .iter()
        .find(|p| p["type"] == "image_url")
        .unwrap_or_else(|| panic!("an image_url part: {content}"))["image_url"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let (head, data) = url.split_once(',').unwrap();
    assert_eq!(head, "data:image/png;base64");
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap()
}

async fn metric(app: &TestApp, outcome: &str) -> bool {
    app.metrics().await.contains(&format!(
        "daarion_bridge_media_total{{outcome=\"{outcome}\"}}"
    ))
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_sees_gets_the_image(#[case] b: Backend) {
    let (model, app) = with_model(b, "vision = true\n", "").await;
    let original = png();
    app.hs
        .media
        .lock()
        .unwrap()
        .insert("localhost/cat".into(), Ok(original.clone()));
    let image = message(
        "img",
        json!({ "msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/cat",
            "info": { "mimetype": "image/png", "size": original.len(), "w": 64, "h": 48 } }),
    );
    let req = ask(&app, &model, vec![image]).await;
    let content = turn_with(&req, "[image: cat.png");
    assert_eq!(
        Sha256::digest(image_bytes(content)),
        Sha256::digest(&original),
        "the model sees the very bytes sent"
    );
    // Fetched as the agent, through the authenticated media API.
    let download = app
        .hs
        .calls_to("/_matrix/client/v1/media/download/localhost/cat");
    assert_eq!(download.len(), 1);
    assert!(
        download[0].query.contains("user_id=%40agent_sofia"),
        "{:?}",
        download[0].query
    );
    assert!(metric(&app, "given").await);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_image_is_decrypted_for_the_model(#[case] b: Backend) {
    let (model, app) = with_model(b, "vision = true\n", "").await;
    let original = png();
    let (cipher, file) = seal(&original, "mxc://localhost/secret-cat");
    app.hs
        .media
        .lock()
        .unwrap()
        .insert("localhost/secret-cat".into(), Ok(cipher.clone()));
    // A tampered copy of the same file under another id: refused, never passed on.
    let mut tampered = cipher;
    tampered[20] ^= 0xff;
    app.hs
        .media
        .lock()
        .unwrap()
        .insert("localhost/tampered".into(), Ok(tampered));
    let mut bad_file = file.clone();
    bad_file["url"] = json!("mxc://localhost/tampered");
    let events = vec![
        message(
            "bad",
            json!({ "msgtype": "m.image", "body": "swapped.png", "file": bad_file }),
        ),
        message(
            "img",
            json!({ "msgtype": "m.image", "body": "secret.png", "file": file,
                "info": { "mimetype": "image/png" } }),
        ),
    ];
    let req = ask(&app, &model, events).await;
    let content = turn_with(&req, "[image: secret.png");
    assert_eq!(
        Sha256::digest(image_bytes(content)),
        Sha256::digest(&original)
    );
    let refused = turn_with(&req, "[image: swapped.png");
    assert!(
        refused.is_string() && !refused.to_string().contains("image_url"),
        "{refused}"
    );
    assert!(metric(&app, "hash_mismatch").await);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_vision_an_image_is_named_and_not_fetched(#[case] b: Backend) {
    let (model, app) = with_model(b, "", "").await;
    let image = message(
        "img",
        json!({ "msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/cat",
            "info": { "mimetype": "image/png", "size": 204800 } }),
    );
    let req = ask(&app, &model, vec![image]).await;
    assert_eq!(
        turn_with(&req, "cat.png"),
        &json!("Alice Liddell: [image: cat.png, 200 KB]")
    );
    assert!(app.hs.calls_to("/media/download/").is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_text_file_is_read_and_a_voice_message_heard(#[case] b: Backend) {
    let (model, app) = with_model(b, "transcription_model = \"whisper-1\"\n", "").await;
    let voice = {
        let mut ogg = b"OggS\0\x02".to_vec();
        ogg.extend([7u8; 3000]);
        ogg
    };
    {
        let mut media = app.hs.media.lock().unwrap();
        media.insert(
            "localhost/notes".into(),
            Ok(b"buy papayas\nand mangoes\n".to_vec()),
        );
        media.insert("localhost/voice".into(), Ok(voice.clone()));
        media.insert(
            "localhost/report".into(),
            Ok(pdf("Quarterly revenue grew by nine percent")),
        );
        media.insert(
            "localhost/broken".into(),
            Ok(b"%PDF-1.4 nothing else".to_vec()),
        );
    }
    let events = vec![
        message(
            "p2",
            json!({ "msgtype": "m.file", "body": "broken.pdf", "url": "mxc://localhost/broken",
                "info": { "mimetype": "application/pdf" } }),
        ),
        message(
            "p1",
            json!({ "msgtype": "m.file", "body": "report.pdf", "url": "mxc://localhost/report",
                "info": { "mimetype": "application/pdf" } }),
        ),
        message(
            "v",
            json!({ "msgtype": "m.audio", "body": "Voice message.ogg", "url": "mxc://localhost/voice",
                "info": { "mimetype": "audio/ogg", "duration": 2500, "size": voice.len() },
                "org.matrix.msc1767.audio": { "duration": 2500 }, "org.matrix.msc3245.voice": {} }),
        ),
        message(
            "f",
            json!({ "msgtype": "m.file", "body": "notes.txt", "url": "mxc://localhost/notes",
                "info": { "mimetype": "text/plain", "size": 24 } }),
        ),
    ];
    // Mirrored first (no mention: no run), so that their parts exist.
    let (status, _) = app.put_txn("files", events.clone()).await;
    assert_eq!(status, 200);
    let req = ask(&app, &model, events).await;
    let notes = turn_with(&req, "[file: notes.txt");
    assert_eq!(
        notes[1],
        json!({ "type": "text", "text": "notes.txt:\nbuy papayas\nand mangoes\n" }),
        "{notes}"
    );
    // A PDF's text, extracted; one whose text cannot be read is named, with why.
    let report = turn_with(&req, "[file: report.pdf");
    assert!(
        report[1]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Quarterly revenue grew by nine percent")),
        "{report}"
    );
    let broken = turn_with(&req, "[file: broken.pdf");
    assert!(
        broken.as_str().is_some_and(|t| t.contains("unavailable")),
        "{broken}"
    );
    // The transcript is the turn's text.
    let heard = turn_with(&req, "[voice message: Voice message.ogg");
    assert!(heard.as_str().unwrap().contains("I said papaya"), "{heard}");
    let uploads = model.transcriptions.lock().unwrap().clone();
    assert_eq!(uploads.len(), 1);
    assert!(
        uploads[0]
            .windows(voice.len())
            .any(|w| w == voice.as_slice()),
        "the voice message's bytes went to the transcription endpoint"
    );
    // What the run read is kept with each message's part.
    let kept = app
        .rows(
            "SELECT m.matrix_event_id, p.text FROM message_parts p \
             JOIN messages m ON m.id = p.message_id WHERE p.position = 0 ORDER BY m.matrix_event_id",
        )
        .await;
    let text_of = |id: &str| {
        kept.iter()
            .find(|r| r[0].as_deref() == Some(id))
            .and_then(|r| r[1].clone())
            .unwrap_or_default()
    };
    assert!(text_of("$v").starts_with("I said papaya"), "{kept:?}");
    assert_eq!(text_of("$f"), "buy papayas\nand mangoes\n");
    assert!(text_of("$p1").contains("Quarterly revenue"), "{kept:?}");
    assert_eq!(text_of("$p2"), "", "nothing read, nothing kept");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_media_is_named_with_its_reason_and_never_fails_the_run(#[case] b: Backend) {
    let (model, app) =
        with_model(b, "vision = true\n", "[media]\nimage_max_bytes = 4096\n\n").await;
    {
        let mut media = app.hs.media.lock().unwrap();
        media.insert("localhost/empty".into(), Ok(Vec::new()));
        media.insert("localhost/huge".into(), Ok(vec![0x89; 10_000]));
        media.insert(
            "localhost/liar".into(),
            Ok(b"plain text, not a picture".to_vec()),
        );
        media.insert("localhost/down".into(), Err(502));
    }
    let image = |id: &str, name: &str, url: &str, info: Value| {
        message(
            id,
            json!({ "msgtype": "m.image", "body": name, "url": url, "info": info }),
        )
    };
    let events = vec![
        image("i1", "empty.png", "mxc://localhost/empty", json!({})),
        image("i2", "huge.png", "mxc://localhost/huge", json!({})),
        image(
            "i3",
            "declared-huge.png",
            "mxc://localhost/huge",
            json!({ "size": 99_999_999 }),
        ),
        image(
            "i4",
            "liar.png",
            "mxc://localhost/liar",
            json!({ "mimetype": "image/png" }),
        ),
        image("i5", "gone.png", "mxc://localhost/gone", json!({})),
        image("i6", "down.png", "mxc://localhost/down", json!({})),
        image("i7", "web.png", "https://example.org/web.png", json!({})),
        image(
            "i8",
            "odd-info.png",
            "mxc://localhost/liar",
            json!({ "size": "big", "w": [] }),
        ),
    ];
    let req = ask(&app, &model, events).await;
    for name in [
        "empty.png",
        "huge.png",
        "declared-huge.png",
        "liar.png",
        "gone.png",
        "down.png",
        "web.png",
        "odd-info.png",
    ] {
        let turn = turn_with(&req, name);
        assert!(
            turn.is_string(),
            "{name} is named, never given as an image: {turn}"
        );
    }
    for outcome in [
        "empty",
        "too_large",
        "wrong_type",
        "not_found",
        "status",
        "bad_uri",
    ] {
        assert!(metric(&app, outcome).await, "counted: {outcome}");
    }
    // The declared size over the cap is refused before any download.
    assert_eq!(
        app.hs.calls_to("/media/download/localhost/huge").len(),
        1,
        "only the undeclared one was fetched (and cut off)"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_runtime_fetches_files_through_signed_links(#[case] b: Backend) {
    let (hook, url) = crate::runtimes::FakeWebhook::spawn("reply").await;
    let app = TestApp::spawn_with(b, move |c| {
        runtime_config(
            "webhook",
            &format!("[blueprints.webhook]\nurl = \"{url}\"\nsecret = \"webhook-test-secret\"\n"),
        )(c)
    })
    .await;
    let (_, key) = setup(&app).await;
    // An encrypted image: the link serves it decrypted; the payload never holds its key.
    let original = png();
    let (cipher, file) = seal(&original, "mxc://localhost/sealed");
    app.hs
        .media
        .lock()
        .unwrap()
        .insert("localhost/sealed".into(), Ok(cipher));
    let image = message(
        "img",
        json!({ "msgtype": "m.image", "body": "sealed.png", "file": file.clone() }),
    );
    app.hs
        .events
        .lock()
        .unwrap()
        .insert("$img".into(), image.clone());
    app.hs
        .history
        .lock()
        .unwrap()
        .extend([mention("q", "Sofia, what did I send?", &[ev::SOFIA]), image]);
    let (status, _) = app
        .put_txn(
            "ask",
            vec![mention("q", "Sofia, what did I send?", &[ev::SOFIA])],
        )
        .await;
    assert_eq!(status, 200);
    wait_runs(&app, 1, "completed").await;
    let payload = hook.calls.lock().unwrap()[0].1.clone();
    let text = payload.to_string();
    let k = file["key"]["k"].as_str().unwrap();
    assert!(!text.contains(k), "no file key in the payload");
    assert!(!text.contains(crate::support::AS_TOKEN), "no Matrix token");
    let part = payload["context"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|t| t["parts"].as_array().map(|p| p[0].clone()))
        .unwrap_or_else(|| panic!("a turn with parts: {payload}"));
    assert_eq!(part["kind"], "image");
    assert_eq!(part["name"], "sealed.png");
    let link = part["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with("/api/v1/media/"), "{link}");
    let get = |path: String, key: String| {
        let app = &app;
        async move {
            let r = app
                .http
                .get(app.url(&path))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let kind = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, kind, r.bytes().await.unwrap().to_vec())
        }
    };
    let (status, kind, bytes) = get(link.clone(), key.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(kind.as_deref(), Some("image/png"));
    assert_eq!(bytes, original, "the link serves the decrypted original");
    // Another agent's key, a forged token, no key: refused.
    let (_, other) = daarion_bridge::keys::create(
        &app.store,
        "agent:free",
        "other",
        &[],
        &["agent.runtime".into()],
        None,
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    assert_eq!(get(link.clone(), other).await.0, 403);
    let forged = format!("{}x", &link[..link.len() - 1]);
    assert_eq!(get(forged, key.clone()).await.0, 404);
    assert_eq!(get(link.clone(), "dab_nope".into()).await.0, 401);
    // Once the message is gone (redacted: the homeserver no longer serves it), so is the file.
    app.hs.events.lock().unwrap().clear();
    assert_eq!(get(link, key).await.0, 404);
}
