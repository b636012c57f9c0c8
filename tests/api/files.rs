//! An agent sends a file (issue #24): `POST /api/v1/channels/{id}/files`, on SQLite and
//! PostgreSQL against the fake homeserver: uploaded as the agent, the message typed by what the
//! bytes are, with `info`; idempotent; bounded by the bridge's and the homeserver's limits; bad
//! requests refused with Matrix errors; in an encrypted room only ciphertext is uploaded, and
//! the event's `file` opens it to the original bytes. (Real Synapse and a real client: e2e.)

use std::io::{Cursor, Read};

use rstest::rstest;
use serde_json::{Value, json};

use crate::{
    agents::setup,
    support::{Backend, TestApp},
};

/// A PNG whose header says 64×48.
fn png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bytes.extend(64u32.to_be_bytes());
    bytes.extend(48u32.to_be_bytes());
    bytes.extend([8, 6, 0, 0, 0]);
    bytes.extend((0..3000u32).map(|i| (i % 241) as u8));
    bytes
}

/// POSTs `bytes` as a file; `(status, body)`.
async fn post_file(
    app: &TestApp,
    channel: &str,
    key: &str,
    query: &str,
    bytes: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = app
        .http
        .post(app.url(&format!("/api/v1/channels/{channel}/files{query}")))
        .bearer_auth(key)
        .body(bytes);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sends_an_image(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = setup(&app).await;
    let image = png();
    // The declared type is wrong: the bytes say PNG.
    let (status, body) = post_file(
        &app,
        &channel,
        &key,
        "?filename=chart.png&caption=Q3%20numbers",
        image.clone(),
        &[("content-type", "application/octet-stream")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["event_id"].is_string(), "{body}");
    let uploads = app.hs.uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].1, image, "uploaded as sent, in a plaintext room");
    assert!(
        uploads[0].0.contains("user_id=%40agent_sofia"),
        "as the agent: {}",
        uploads[0].0
    );
    let sent = app.hs.sent_messages();
    let content = &sent.last().unwrap().1.body;
    assert_eq!(content["msgtype"], "m.image", "{content}");
    assert_eq!(content["url"], "mxc://localhost/up1");
    assert_eq!(content["body"], "Q3 numbers");
    assert_eq!(content["filename"], "chart.png");
    assert_eq!(
        content["info"],
        json!({ "mimetype": "image/png", "size": image.len(), "w": 64, "h": 48 })
    );

    // A text file, named by Content-Disposition: an m.file.
    let (status, _) = post_file(
        &app,
        &channel,
        &key,
        "",
        b"plain notes".to_vec(),
        &[
            ("content-type", "text/plain"),
            ("content-disposition", "attachment; filename=\"notes.txt\""),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let sent = app.hs.sent_messages();
    let content = &sent.last().unwrap().1.body;
    assert_eq!(content["msgtype"], "m.file", "{content}");
    assert_eq!(content["body"], "notes.txt");
    assert_eq!(content["info"]["mimetype"], "text/plain");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_upload_is_sent_once(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = setup(&app).await;
    let send = |bytes: Vec<u8>| {
        let (app, channel, key) = (&app, channel.clone(), key.clone());
        async move {
            post_file(
                app,
                &channel,
                &key,
                "?filename=a.png",
                bytes,
                &[("idempotency-key", "file-1")],
            )
            .await
        }
    };
    let (first, a) = send(png()).await;
    let (second, b2) = send(png()).await;
    assert_eq!((first, second), (200, 200));
    assert_eq!(a["event_id"], b2["event_id"], "the first outcome again");
    assert_eq!(app.hs.uploads.lock().unwrap().len(), 1, "uploaded once");
    let (status, body) = send(b"another file".to_vec()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(app.hs.uploads.lock().unwrap().len(), 1);
}

/// Sends `chunks` chunks of `size` bytes with `Transfer-Encoding: chunked` (no length known in
/// advance); the answer's status.
async fn chunked_upload(
    app: &TestApp,
    channel: &str,
    key: &str,
    chunks: usize,
    size: usize,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/channels/{channel}/files?filename=s.bin HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..chunks {
        // The bridge may answer and stop reading before the end: a failed write is fine.
        let chunk = [
            format!("{size:x}\r\n").into_bytes(),
            vec![7u8; size],
            b"\r\n".to_vec(),
        ]
        .concat();
        if tcp.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[9..12]).parse().unwrap()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_matrix_errors(#[case] b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[api]\nmax_upload_bytes = 4000\n\n[bridge]\n")
    })
    .await;
    let (channel, key) = setup(&app).await;
    let post =
        |query: &'static str, bytes: Vec<u8>, headers: &'static [(&'static str, &'static str)]| {
            let (app, channel, key) = (&app, channel.clone(), key.clone());
            async move { post_file(app, &channel, &key, query, bytes, headers).await }
        };
    let cases: Vec<(u16, &str, (u16, Value))> = vec![
        (
            413,
            "M_TOO_LARGE",
            post("?filename=big.bin", vec![1; 5000], &[]).await,
        ),
        (
            400,
            "M_INVALID_PARAM",
            post("?filename=empty.bin", Vec::new(), &[]).await,
        ),
        (400, "M_INVALID_PARAM", post("", png(), &[]).await),
        (
            400,
            "M_INVALID_PARAM",
            post("?filename=a%00b.png", png(), &[]).await,
        ),
        (
            400,
            "M_INVALID_PARAM",
            post("?filename=..%2Fetc%2Fpasswd", png(), &[]).await,
        ),
        (
            400,
            "M_INVALID_PARAM",
            post(
                "?filename=f.txt",
                b"--x\r\n".to_vec(),
                &[("content-type", "multipart/form-data; boundary=x")],
            )
            .await,
        ),
    ];
    for (status, errcode, (got, body)) in cases {
        assert_eq!(got, status, "{body}");
        assert_eq!(body["errcode"], errcode, "{body}");
    }
    // Streamed without a length (chunked), over the limit: cut off while it is read.
    assert_eq!(chunked_upload(&app, &channel, &key, 10, 1000).await, 413);
    // The homeserver's limit, when smaller, wins (a fresh bridge: the limit is asked once).
    let fresh = TestApp::spawn_with(b, |c| {
        c.replace("[bridge]\n", "[api]\nmax_upload_bytes = 4000\n\n[bridge]\n")
    })
    .await;
    *fresh.hs.upload_size.lock().unwrap() = Some(1000);
    let (channel, key) = setup(&fresh).await;
    let (status, body) = post_file(
        &fresh,
        &channel,
        &key,
        "?filename=mid.bin",
        vec![3; 2000],
        &[],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        app.hs.uploads.lock().unwrap().is_empty() && fresh.hs.uploads.lock().unwrap().is_empty()
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_encrypted_room_only_ciphertext_is_uploaded(#[case] b: Backend) {
    let app = crate::crypto::encrypted_bridge(b, "").await;
    let (channel, key) = setup(&app).await;
    let room: ruma::OwnedRoomId = crate::ev::ROOM.try_into().unwrap();
    app.crypto.as_ref().unwrap().note_room(
        &room,
        Some(
            ruma::events::room::encryption::RoomEncryptionEventContent::with_recommended_defaults(),
        ),
    );
    let image = png();
    let (status, body) = post_file(
        &app,
        &channel,
        &key,
        "?filename=secret.png",
        image.clone(),
        &[],
    )
    .await;
    // Uploaded. The message itself cannot be encrypted against this fake homeserver (it has no
    // key endpoints): the e2e suite delivers one through Synapse to a real client.
    assert_eq!(status, 502, "{body}");
    let uploads = app.hs.uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 1);
    let cipher = uploads[0].1.clone();
    assert_eq!(cipher.len(), image.len());
    assert_ne!(cipher, image, "never the plaintext");
    assert!(
        !uploads[0].0.contains("secret.png"),
        "no name on the ciphertext: {}",
        uploads[0].0
    );
    let content: Value = serde_json::from_str(
        &app.col("SELECT CAST(content AS TEXT) FROM agent_outbox")
            .await[0],
    )
    .unwrap();
    assert!(content.get("url").is_none(), "{content}");
    assert_eq!(content["file"]["url"], "mxc://localhost/up1");
    let info: matrix_sdk_crypto::MediaEncryptionInfo =
        serde_json::from_value(content["file"].clone()).unwrap();
    let mut reader = Cursor::new(cipher);
    let mut decryptor = matrix_sdk_crypto::AttachmentDecryptor::new(&mut reader, info).unwrap();
    let mut clear = Vec::new();
    decryptor.read_to_end(&mut clear).unwrap();
    assert_eq!(
        clear, image,
        "the event's key opens the upload to the original"
    );
}

/// The uploads and the file messages Sofia sent, after `runs` completed runs.
async fn answered_files(app: &TestApp) -> (Vec<crate::fake_hs::Upload>, Vec<Value>) {
    crate::runs::wait_runs(app, 1, "completed").await;
    let uploads = app.hs.uploads.lock().unwrap().clone();
    let files = app
        .hs
        .sent_messages()
        .into_iter()
        .map(|(_, c)| c.body)
        .filter(|b| b["msgtype"] == "m.image" || b["msgtype"] == "m.file")
        .collect();
    (uploads, files)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_answer_with_files(#[case] b: Backend) {
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(crate::model::IMAGE_B64)
        .unwrap();
    // A webhook: one file inline, one by URL, one without content and one that cannot be
    // fetched (both skipped, the rest still goes).
    let (_hook, url) = crate::runtimes::FakeWebhook::spawn("files").await;
    let app = TestApp::spawn_with(b, move |c| {
        crate::runs::runtime_config(
            "webhook",
            &format!("[blueprints.webhook]\nurl = \"{url}\"\nsecret = \"webhook-test-secret\"\n"),
        )(c)
    })
    .await;
    setup(&app).await;
    let ask = crate::runs::mention("q", "Sofia, the files?", &[crate::ev::SOFIA]);
    assert_eq!(app.put_txn("q", vec![ask]).await.0, 200);
    let (uploads, files) = answered_files(&app).await;
    assert_eq!(uploads.len(), 2, "two files fetched and uploaded");
    assert_eq!(uploads[0].1, png);
    assert_eq!(uploads[1].1, b"notes from the runtime");
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0]["body"], "chart.png");
    assert_eq!(files[0]["info"]["w"], 1);
    assert_eq!(files[1]["body"], "notes.txt");
    assert_eq!(files[1]["m.relates_to"]["m.in_reply_to"]["event_id"], "$q");

    // An OpenAI-compatible answer with an image part: the text, then the image.
    let (_model, model_url) = crate::model::FakeModel::spawn("image").await;
    let app = TestApp::spawn_with(b, move |c| {
        crate::runs::runtime_config(
            "openai",
            &format!("[blueprints.openai]\nbase_url = \"{model_url}\"\nstream = false\n"),
        )(c)
    })
    .await;
    setup(&app).await;
    let ask = crate::runs::mention("q", "Sofia, a chart?", &[crate::ev::SOFIA]);
    assert_eq!(app.put_txn("q", vec![ask]).await.0, 200);
    let (uploads, files) = answered_files(&app).await;
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].1, png);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["info"]["mimetype"], "image/png");
    let texts: Vec<String> = app
        .hs
        .sent_messages()
        .into_iter()
        .filter_map(|(_, c)| c.body["body"].as_str().map(str::to_owned))
        .collect();
    assert!(
        texts.contains(&"Here is the chart.".to_owned()),
        "{texts:?}"
    );
}
