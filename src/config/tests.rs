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
    let nats_without_server = format!(
        "{BASE}[[blueprints]]\ncode = \"n\"\nruntime = \"nats\"\n[blueprints.nats]\ntimeout = \"30s\"\n"
    );
    assert!(err(&nats_without_server).contains("events.nats_url"));
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

/// A blueprint with one tool of each kind, an agent narrowing them, and the `[tools]` bounds.
const TOOLS: &str = r#"
[tools]
allowed_hosts = ["*.example.org"]
max_parallel = 2
run_budget = "1m"
[secrets]
weather_key = "s3cret-value"
[[blueprints]]
code = "botanist"
show_tools = "full"
max_tool_rounds = 3
[[blueprints.tools]]
type = "http"
name = "weather"
description = "The weather in a city"
url = "https://tools.example.org/weather"
secret_ref = "weather_key"
timeout = "5s"
parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }
[[blueprints.tools]]
type = "mcp"
name = "files"
url = "https://mcp.example.org/mcp"
allow = ["read_*", "list_dir"]
[[blueprints.tools]]
type = "builtin"
name = "matrix.read_history"
[[agents]]
external_id = "agent:helix"
name = "Helix"
blueprint = "botanist"
tools = ["weather", "files.read_*"]
"#;

#[test]
fn blueprint_tools_parse() {
    use crate::model::tools::{ShowTools, ToolSpec};
    let c = Config::from_toml_str(&format!("{BASE}{TOOLS}")).unwrap();
    c.validate().unwrap();
    assert_eq!(c.tools.allowed_hosts, ["*.example.org"]);
    assert_eq!(c.tools.max_parallel, 2);
    assert_eq!(c.tools.run_budget, std::time::Duration::from_secs(60));
    // Unset keys keep their defaults.
    assert_eq!(c.tools.max_result_bytes, 32 * 1024);
    let b = &c.blueprints[0];
    assert_eq!((b.show_tools, b.max_tool_rounds), (ShowTools::Full, 3));
    let [ToolSpec::Http(h), ToolSpec::Mcp(m), ToolSpec::Builtin(r)] = &b.tools[..] else {
        panic!("{:?}", b.tools);
    };
    assert_eq!(h.name, "weather");
    assert_eq!(h.secret_ref.as_deref(), Some("weather_key"));
    assert_eq!(
        h.secret, None,
        "the config names the secret; the registry resolves it"
    );
    assert_eq!(h.timeout, std::time::Duration::from_secs(5));
    assert_eq!(h.parameters["required"], serde_json::json!(["city"]));
    assert_eq!(m.allow, ["read_*", "list_dir"]);
    assert_eq!(m.timeout, std::time::Duration::from_secs(30));
    assert_eq!(r.name, "matrix.read_history");
    assert_eq!(
        c.agents[0].tools.as_deref(),
        Some(&["weather".to_owned(), "files.read_*".to_owned()][..])
    );
    // Without tools a blueprint has none, shown as a summary, in at most 5 rounds.
    let plain = Config::from_toml_str(&format!("{BASE}[[blueprints]]\ncode = \"p\"\n")).unwrap();
    let p = &plain.blueprints[0];
    assert!(p.tools.is_empty());
    assert_eq!((p.show_tools, p.max_tool_rounds), (ShowTools::Summary, 5));
}

#[test]
fn bad_tools_are_refused_naming_the_field() {
    let all = format!("{BASE}{TOOLS}");
    for (from, to, field) in [
        (
            "\"matrix.read_history\"",
            "\"matrix.send_everything\"",
            "`tools[2].name`: unknown built-in",
        ),
        (
            "https://tools.example.org/weather",
            "https://evil.test/weather",
            "`tools[0].url`: the host `evil.test` is not in the bridge's tools.allowed_hosts",
        ),
        (
            "secret_ref = \"weather_key\"",
            "secret_ref = \"nope\"",
            "`tools[0].secret_ref`: the secret `nope` is not defined",
        ),
        (
            "parameters = { type = \"object\"",
            "parameters = { type = \"string\"",
            "`tools[0].parameters`",
        ),
        ("[\"read_*\", \"list_dir\"]", "[]", "`tools[1].allow`"),
    ] {
        assert!(all.contains(from), "{from}");
        let e = err(&all.replace(from, to));
        assert!(e.contains("blueprints.tools"), "{e}");
        assert!(e.contains("blueprint `botanist`"), "{e}");
        assert!(e.contains(field), "{field}: {e}");
    }
    // `[tools]` bounds that would make every call useless.
    for (from, to, field) in [
        ("max_parallel = 2", "max_parallel = 0", "tools.max_parallel"),
        (
            "run_budget = \"1m\"",
            "run_budget = \"0s\"",
            "tools.run_budget",
        ),
        (
            "max_parallel = 2",
            "max_parallel = 2\nmax_result_bytes = 0",
            "tools.max_result_bytes",
        ),
    ] {
        assert!(all.contains(from), "{from}");
        let e = err(&all.replace(from, to));
        assert!(e.contains(field), "{to}: {e}");
    }
    let e = err(&all.replace("max_tool_rounds = 3", "max_tool_rounds = 21"));
    assert!(e.contains("blueprints.max_tool_rounds"), "{e}");
    let e = err(&all.replace("\"files.read_*\"]", "\"files read\"]"));
    assert!(
        e.contains("agents.tools") && e.contains("`tools[1]`"),
        "{e}"
    );
    // An unknown kind or a field a tool does not have fails the parse, naming it.
    let e = Config::from_toml_str(&all.replace("type = \"mcp\"", "type = \"ftp\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ftp"), "{e}");
    // A tool holds no secret value, only the name of one.
    let e = Config::from_toml_str(
        &all.replace("secret_ref = \"weather_key\"", "secret = \"s3cret-value\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unknown field") && e.contains("`secret`") && e.contains("blueprints.0.tools.0"),
        "{e}"
    );
    let e = Config::from_toml_str(&all.replace("show_tools = \"full\"", "show_tools = \"loud\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("loud"), "{e}");
}

#[test]
fn events_unpublished_retention_and_dead_letters_parse() {
    use super::Keep;
    let c = Config::from_toml_str(BASE).unwrap();
    assert_eq!(c.events.unpublished_retention, None);
    assert_eq!(c.events.dead_letter_after, 5);
    let never =
        format!("{BASE}[events]\nunpublished_retention = \"never\"\ndead_letter_after = 3\n");
    let c = Config::from_toml_str(&never).unwrap();
    c.validate().unwrap();
    assert_eq!(c.events.unpublished_retention, Some(Keep::Forever));
    assert_eq!(c.events.unpublished_cutoff(), None);
    assert_eq!(c.events.dead_letter_after, 3);
    let days = format!("{BASE}[events]\nunpublished_retention = \"30d\"\n");
    let c = Config::from_toml_str(&days).unwrap();
    assert_eq!(
        c.events.unpublished_cutoff(),
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    let bad = format!("{BASE}[events]\nunpublished_retention = \"sometimes\"\n");
    assert!(Config::from_toml_str(&bad).is_err());
    let short = format!("{BASE}[events]\nunpublished_retention = \"5s\"\n");
    assert!(err(&short).contains("events.unpublished_retention"));
    let zero = format!("{BASE}[events]\ndead_letter_after = 0\n");
    assert!(err(&zero).contains("events.dead_letter_after"));
}

#[test]
fn failed_retention_parses_and_is_checked() {
    let c = Config::from_toml_str(BASE).unwrap();
    assert_eq!(
        c.bridge.failed_retention,
        std::time::Duration::from_secs(30 * 86_400)
    );
    let set = format!("{BASE}[bridge]\nfailed_retention = \"90d\"\n");
    let c = Config::from_toml_str(&set).unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.bridge.failed_retention,
        std::time::Duration::from_secs(90 * 86_400)
    );
    let short = format!("{BASE}[bridge]\nfailed_retention = \"10m\"\n");
    assert!(err(&short).contains("bridge.failed_retention"));
}
