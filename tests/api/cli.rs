//! The command line, run as the real binary: configuration errors name the key (also when the
//! value comes from the environment), access keys, response settings.

use std::process::Command;
use std::time::Duration;

use rstest::rstest;

use crate::support::{Backend, TestApp, ev};

pub(crate) fn bridge(config: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_daarion-bridge"));
    cmd.arg("-c").arg(config);
    cmd
}

pub(crate) fn write_config(app: &TestApp) -> (crate::support::TempDir, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("daarion-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, crate::support::base_config(&app.db_url, &app.hs_url)).unwrap();
    (crate::support::TempDir(dir), path)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (_dir, config) = write_config(&app);
    let ok = bridge(&config).arg("check-config").output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // An environment override is applied, and validated with the key named.
    let bad = bridge(&config)
        .env("DAARION_BRIDGE__DATABASE__URL", "mysql://nope")
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("database.url"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = bridge(&config)
        .env("DAARION_BRIDGE__APPSERVICE__HS_TOKEN", "CHANGE_ME")
        .arg("check-config")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("appservice.hs_token"));
    // access-key create: the key alone on the last line; it works against the API.
    let out = bridge(&config)
        .args([
            "access-key",
            "create",
            "--agent",
            "agent:sofia",
            "--cap",
            "chat.message.read",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("dab_") && !key.contains(' '), "{stdout}");
    let r = app
        .http
        .get(app.url("/api/v1/agent"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list = bridge(&config)
        .args(["access-key", "list", "--agent", "agent:sofia"])
        .output()
        .unwrap();
    let listing = String::from_utf8(list.stdout).unwrap();
    assert!(
        listing.contains(&key[..12]) && listing.contains("active") && !listing.contains(&key),
        "{listing}"
    );
    let revoke = bridge(&config)
        .args(["access-key", "revoke", &key[..12]])
        .output()
        .unwrap();
    assert!(revoke.status.success());
    let r = app
        .http
        .get(app.url("/api/v1/agent"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // respond: by Matrix room id.
    assert_eq!(
        app.put_txn(
            "s",
            vec![
                ev::invite_bot("inv", "@alice:localhost", "Room"),
                ev::now(ev::member("sj", ev::SOFIA, ev::SOFIA, "join"))
            ]
        )
        .await
        .0,
        200
    );
    let set = bridge(&config)
        .args([
            "respond",
            "--agent",
            "agent:sofia",
            "--channel",
            ev::ROOM,
            "--set",
            "all",
        ])
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(
        app.col("SELECT respond FROM agent_channel_settings").await,
        vec!["all"]
    );
    let bad = bridge(&config)
        .args([
            "respond",
            "--agent",
            "agent:sofia",
            "--channel",
            ev::ROOM,
            "--set",
            "loud",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppet_avatar_is_uploaded_once(#[case] b: Backend) {
    let dir =
        std::env::temp_dir().join(format!("daarion-avatar-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("sofia.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\nnot really an image").unwrap();
    let avatar = png.display().to_string();
    let app = TestApp::spawn_with(b, move |c| {
        c.replace(
            "name = \"Sofia\"\n",
            &format!("name = \"Sofia\"\navatar = \"{avatar}\"\n"),
        )
    })
    .await;
    let (channel, key) = crate::agents::setup(&app).await;
    for text in ["one", "two"] {
        let (s, _, _) = crate::agents::api(
            &app,
            reqwest::Method::POST,
            &format!("/api/v1/channels/{channel}/messages"),
            &key,
            Some(serde_json::json!({ "text": text })),
        )
        .await;
        assert_eq!(s, 200);
    }
    let uploads = app.hs.calls_to("/upload");
    assert_eq!(uploads.len(), 1, "uploaded once");
    let set = app.hs.calls_to("/avatar_url");
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].body["avatar_url"], "mxc://localhost/avatar");
    assert_eq!(
        app.col("SELECT avatar_url FROM bridge_puppets").await,
        vec!["mxc://localhost/avatar"]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_agents_get_their_new_name(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let (channel, key) = crate::agents::setup(&app).await;
    let (s, _, _) = crate::agents::api(
        &app,
        reqwest::Method::POST,
        &format!("/api/v1/channels/{channel}/messages"),
        &key,
        Some(serde_json::json!({ "text": "hi" })),
    )
    .await;
    assert_eq!(s, 200);
    // Another service renames the agent: the puppet follows within a second, without a
    // restart (PostgreSQL: NOTIFY from the agents trigger; SQLite: the 1 s reconcile).
    let renamed = std::time::Instant::now();
    app.exec("UPDATE agents SET name = 'Sofia Prime' WHERE external_id = 'agent:sofia'")
        .await;
    while app.hs.calls_to("/displayname").len() < 2 {
        assert!(
            renamed.elapsed() < std::time::Duration::from_secs(1),
            "the rename reached the profile within a second"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let took = renamed.elapsed();
    eprintln!("rename reached the profile in {took:?}");
    let names: Vec<serde_json::Value> = app
        .hs
        .calls_to("/displayname")
        .into_iter()
        .map(|c| c.body["displayname"].clone())
        .collect();
    assert_eq!(
        names,
        vec![serde_json::json!("Sofia"), serde_json::json!("Sofia Prime")]
    );
    app.eventually(
        "the puppet row has the new name",
        Duration::from_secs(5),
        || async {
            app.col("SELECT display_name FROM bridge_puppets").await == vec!["Sofia Prime"]
        },
    )
    .await;
    assert_eq!(app.sync_profiles().await, 0, "once");
}
