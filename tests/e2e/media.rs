//! Media with a real Synapse and a real E2EE client (issue #24): a person sends a PNG into an
//! encrypted DM and into a plaintext room, and the fake vision model receives the very bytes; a
//! voice message is transcribed by the fake transcription endpoint and answered; an agent sends
//! a file into the encrypted DM through the agent API, and the person's client downloads and
//! decrypts it to the original bytes.

use base64::Engine;
use serde_json::{Value, json};

use crate::{e2ee::E2eeClient, encryption::bridge_with_identity, harness::*};

const NOVA: &str = "@agent_nova:localhost";

/// The bytes of the `image_url` data URI in a model request (the first one).
fn image_in(request: &Value) -> Option<Vec<u8>> {
    let url = request["messages"]
        .as_array()?
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|p| p["type"] == "image_url")?["image_url"]["url"]
        .as_str()?
        .to_owned();
    let (_, data) = url.split_once("base64,")?;
    base64::engine::general_purpose::STANDARD.decode(data).ok()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_voice_and_files_between_people_and_agents() {
    let _serial = serial().lock().await;
    let (model, _) = crate::model::FakeModel::spawn_on("plain", "127.0.0.1:29335").await;
    let db_url = fresh_pg().await;
    let bridge = bridge_with_identity(&db_url, NOVA).await;
    let pool = bridge.store.pool().clone();
    let runs = |n: usize| {
        let pool = pool.clone();
        async move {
            let q = "SELECT count(*)::text FROM agent_runs WHERE status = 'completed'";
            wait_rows(&pool, q, "the completed runs", |r| {
                r[0][0].as_deref() == Some(n.to_string().as_str())
            })
            .await;
        }
    };

    // An image in an encrypted DM: Nova's device decrypts the event, the bridge downloads the
    // ciphertext and decrypts the file; the model sees the original bytes.
    let erin = Person::register("erin").await;
    let mut client = E2eeClient::start(&erin).await;
    let dm = client.run(&format!("dm {NOVA}")).await["room"]
        .as_str()
        .unwrap()
        .to_owned();
    client.run(&format!("joined {dm} {NOVA}")).await;
    let sent = client.run(&format!("image {dm} photo.png")).await;
    runs(1).await;
    let original = unhex(sent["hex"].as_str().unwrap());
    let seen = image_in(&model.requests.lock().unwrap()[0]);
    assert_eq!(
        seen.as_deref(),
        Some(original.as_slice()),
        "the model sees the sent PNG"
    );

    // A voice message: transcribed, answered; the transcription endpoint got the audio.
    let voice = client.run(&format!("voice {dm}")).await;
    runs(2).await;
    let heard = model.requests.lock().unwrap()[1].to_string();
    assert!(
        heard.contains("[voice message: Voice message.ogg"),
        "{heard}"
    );
    assert!(
        heard.contains("I said papaya"),
        "the transcript is the turn: {heard}"
    );
    let audio = unhex(voice["hex"].as_str().unwrap());
    let uploads = model.transcriptions.lock().unwrap().clone();
    assert!(
        uploads
            .iter()
            .any(|u| u.windows(audio.len()).any(|w| w == audio.as_slice())),
        "the voice message's bytes reached the transcription endpoint"
    );

    // Nova sends a file through the agent API: the person's client downloads and decrypts it.
    let channel = rows(
        &pool,
        &format!("SELECT id::text FROM channels WHERE matrix_room_id = '{dm}'"),
    )
    .await[0][0]
        .clone()
        .unwrap();
    let (_, key) = daarion_bridge::keys::create(
        &bridge.store,
        "agent:nova",
        "e2e",
        &[],
        &["agent.runtime".into()],
        None,
        &daarion_bridge::db::audit::Actor::cli(),
    )
    .await
    .unwrap();
    let report: Vec<u8> = (0..50_000u32).map(|i| (i % 97) as u8 + 32).collect();
    let posted = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/api/v1/channels/{channel}/files?filename=report.txt",
            bridge_port()
        ))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body(report.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200, "{:?}", posted.text().await);
    let got = client
        .run(&format!("download {dm} {NOVA} report.txt"))
        .await;
    assert_eq!(got["encrypted"], true, "an EncryptedFile: {got}");
    assert_eq!(got["event_encrypted"], true, "{got}");
    assert_eq!(
        unhex(got["hex"].as_str().unwrap()),
        report,
        "the original bytes"
    );

    // The same image in a plaintext room, sent by a person's plain client.
    let room = erin
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "private_chat", "invite": [NOVA] }),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    client.run(&format!("joined {room} {NOVA}")).await;
    let uploaded: Value = erin
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload?filename=plain.png",
            homeserver()
        ))
        .bearer_auth(&erin.token)
        .header("content-type", "image/png")
        .body(original.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mxc = uploaded["content_uri"].as_str().unwrap();
    erin.send(
        &room,
        json!({ "msgtype": "m.image", "body": "plain.png", "url": mxc,
            "info": { "mimetype": "image/png", "size": original.len() },
            "m.mentions": { "user_ids": [NOVA] } }),
    )
    .await;
    erin.send(
        &room,
        json!({ "msgtype": "m.text", "body": "Nova, what is in the picture?",
            "m.mentions": { "user_ids": [NOVA] } }),
    )
    .await;
    let requests = |n: usize| model.requests.lock().unwrap().len() >= n;
    for _ in 0..300 {
        if requests(3) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let last = model.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        image_in(&last).as_deref(),
        Some(original.as_slice()),
        "{last}"
    );

    // message_parts holds each attachment: the encrypted DM's by the word `encrypted`, the
    // plaintext room's by its mxc:// URI; never a key.
    let parts = |room: &str| {
        format!(
            "SELECT p.kind, p.source, p.mimetype, CAST(p.voice AS TEXT) FROM message_parts p \
             JOIN messages m ON m.id = p.message_id JOIN channels c ON c.id = m.channel_id \
             WHERE c.matrix_room_id = '{room}' ORDER BY m.created_at, p.position"
        )
    };
    let in_dm = rows(&pool, &parts(&dm)).await;
    assert!(
        in_dm.contains(&vec![
            Some("image".into()),
            Some("encrypted".into()),
            Some("image/png".into()),
            Some("false".into())
        ]),
        "{in_dm:?}"
    );
    assert!(
        in_dm
            .iter()
            .any(|r| r[0].as_deref() == Some("audio") && r[3].as_deref() == Some("true")),
        "the voice message: {in_dm:?}"
    );
    let in_room = rows(&pool, &parts(&room)).await;
    assert!(
        in_room.contains(&vec![
            Some("image".into()),
            Some(mxc.to_owned()),
            Some("image/png".into()),
            Some("false".into())
        ]),
        "{in_room:?}"
    );
    bridge.stop().await;
}
