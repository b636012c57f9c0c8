//! Unit tests of loading and validation.

use ruma::UserId;

use super::*;

const BASE: &str = r#"
[homeserver]
url = "http://127.0.0.1:8008"
server_name = "example.org"
[appservice]
id = "daarion"
listen = "127.0.0.1:29333"
url = "http://127.0.0.1:29333"
as_token = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
hs_token = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
"#;

fn err(toml: &str) -> String {
    Config::from_toml_str(toml)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string()
}

#[test]
fn defaults_apply() {
    let c = Config::from_toml_str(BASE).unwrap();
    c.validate().unwrap();
    assert_eq!(c.appservice.agent_prefix, "agent_");
    assert_eq!(c.appservice.bot_localpart, "daarion");
    assert_eq!(c.bridge.preview_chars, 500);
    assert_eq!(c.server.max_connections, 1024);
    assert_eq!(
        c.bridge.retention,
        std::time::Duration::from_secs(7 * 86_400)
    );
    assert!(c.database.url.starts_with("sqlite://"));
    assert_eq!(
        c.namespace().unwrap().bot().as_str(),
        "@daarion:example.org"
    );
}

#[test]
fn validation_names_the_offending_key() {
    assert!(
        err(&BASE.replace("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "CHANGE_ME"))
            .contains("appservice.as_token")
    );
    assert!(
        err(&BASE.replace("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "short")).contains("at least 32")
    );
    assert!(
        err(&BASE.replace(
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ))
        .contains("appservice.hs_token")
    );
    assert!(
        err(&BASE.replace("http://127.0.0.1:8008", "127.0.0.1:8008")).contains("homeserver.url")
    );
    let bad_db = format!("{BASE}[database]\nurl = \"mysql://x\"\n");
    assert!(err(&bad_db).contains("database.url"));
    let bad_agent = format!("{BASE}[[agents]]\nexternal_id = \"sofia\"\nname = \"Sofia\"\n");
    assert!(err(&bad_agent).contains("agents.external_id"));
    // An unknown blueprint may exist in the database: the seed checks it, not the config.
    let bad_kind = format!(
        "{BASE}[[agents]]\nexternal_id = \"agent:sofia\"\nname = \"Sofia\"\nkind = \"bot\"\n"
    );
    assert!(err(&bad_kind).contains("agents.kind"));
    let bad_respond = format!(
        "{BASE}[[agents]]\nexternal_id = \"agent:sofia\"\nname = \"Sofia\"\nrespond = \"always\"\n"
    );
    assert!(err(&bad_respond).contains("agents.respond"));
    let missing_secret = format!(
        "{BASE}[[blueprints]]\ncode = \"w\"\nruntime = \"webhook\"\n[blueprints.webhook]\nurl = \"http://x\"\nsecret_ref = \"nope\"\n"
    );
    assert!(
        err(&missing_secret).contains("blueprints.webhook"),
        "{}",
        err(&missing_secret)
    );
    let bad_prefix = format!("{BASE}[bridge]\ncommand_prefix = \"two words\"\n");
    assert!(err(&bad_prefix).contains("bridge.command_prefix"));
    let bad_server = format!("{BASE}[server]\nmax_connections = 0\n");
    assert!(err(&bad_server).contains("server.max_connections"));
    let short_retention = format!("{BASE}[bridge]\nretention = \"10m\"\n");
    assert!(err(&short_retention).contains("bridge.retention"));
}

#[test]
fn unknown_keys_are_refused() {
    let e = Config::from_toml_str(&format!("{BASE}[bridge]\npreview_char = 3\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("preview_char"), "{e}");
}

#[test]
fn puppets_are_recognised() {
    let ns = Config::from_toml_str(BASE).unwrap().namespace().unwrap();
    assert!(ns.is_puppet(&UserId::parse("@agent_sofia:example.org").unwrap()));
    assert!(!ns.is_puppet(&UserId::parse("@agent_sofia:other.org").unwrap()));
    assert!(!ns.is_puppet(&UserId::parse("@alice:example.org").unwrap()));
}
