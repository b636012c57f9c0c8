//! Tools a blueprint names (HTTP endpoints, MCP servers, built-ins), how their calls are shown
//! (`show_tools`), and the checks that keep a declaration usable: names, schemas, URLs, glob
//! patterns. Shared by the config and admin API that declare tools, the registry that loads
//! them and the runs that call them. No I/O here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
pub use super::enums::StepStatus;

/// The built-in tools, on by name.
pub const BUILTINS: &[&str] = &[READ_HISTORY, LIST_CHANNELS];
/// Reads more of the room's history than the context gives.
pub const READ_HISTORY: &str = "matrix.read_history";
/// Lists the microDAO's channels the agent is a member of.
pub const LIST_CHANNELS: &str = "daarion.list_channels";

/// Tool rounds a run makes at most, unless the blueprint says otherwise.
pub const DEFAULT_MAX_ROUNDS: u32 = 5;
/// The bound on `max_tool_rounds`.
pub const MAX_ROUNDS_LIMIT: u32 = 20;

/// One tool of a blueprint's `tools` list (the admin API's and the config's shape).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ToolSpec {
    /// An HTTP endpoint the bridge POSTs the arguments to, signed like a webhook.
    Http(HttpTool),
    /// The tools of an MCP server (Streamable HTTP), as its `allow` list lets through.
    Mcp(McpServer),
    /// A tool the bridge implements ([`BUILTINS`]).
    Builtin(BuiltinTool),
}

impl HttpTool {
    /// The signing secret: the resolved `secret_ref`, else the variable `secret_env` names.
    pub fn signing_secret(&self) -> Option<String> {
        self.secret
            .clone()
            .or_else(|| std::env::var(self.secret_env.as_deref()?).ok())
    }
}

impl ToolSpec {
    /// The name the blueprint gives it (an MCP server's tools are `{name}.{tool}`).
    pub fn name(&self) -> &str {
        match self {
            ToolSpec::Http(t) => &t.name,
            ToolSpec::Mcp(m) => &m.name,
            ToolSpec::Builtin(b) => &b.name,
        }
    }
}

/// `{"type": "http", …}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTool {
    /// What the model calls it (`[A-Za-z0-9_-]`, at most 64 characters).
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of its arguments (an object schema).
    #[serde(default = "empty_object_schema")]
    pub parameters: serde_json::Value,
    /// Where the arguments are POSTed (`http(s)://`).
    pub url: String,
    /// A secret of the bridge's `[secrets]` signing the request (`X-Daarion-Signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// An environment variable holding the signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// The secret `secret_ref` resolved to (by the registry; never serialized or stored).
    #[serde(skip)]
    pub secret: Option<String>,
    /// Bound on one call (default 10 s).
    #[serde(
        default = "default_tool_timeout",
        with = "duration",
        skip_serializing_if = "is_default_timeout"
    )]
    pub timeout: Duration,
}

/// `{"type": "mcp", …}`: an MCP server over Streamable HTTP.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// The server's name; its tools are `{name}.{tool}` to the model and in the audit.
    pub name: String,
    /// Its endpoint (`http(s)://…/mcp`).
    pub url: String,
    /// A secret of the bridge's `[secrets]` sent as `Authorization: Bearer …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_secret_ref: Option<String>,
    /// The secret `header_secret_ref` resolved to (by the registry; never serialized or
    /// stored).
    #[serde(skip)]
    pub header_secret: Option<String>,
    /// The server's tools the agents may use: names or glob patterns (`read_*`). Nothing else
    /// it offers is shown to the model or called.
    pub allow: Vec<String>,
    /// Bound on one call (default 30 s).
    #[serde(
        default = "default_mcp_timeout",
        with = "duration",
        skip_serializing_if = "is_default_mcp_timeout"
    )]
    pub timeout: Duration,
}

/// `{"type": "builtin", "name": "matrix.read_history"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinTool {
    /// One of [`BUILTINS`].
    pub name: String,
}

/// What people see of an agent's tool calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShowTools {
    /// Nothing but typing; the calls are still in the answer's `io.daarion.tool_calls`.
    None,
    /// The tool's name while it runs, and one line naming the tools used under the answer.
    #[default]
    Summary,
    /// The same, with each call's arguments and outcome.
    Full,
}

impl ShowTools {
    /// The SQL and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ShowTools::None => "none",
            ShowTools::Summary => "summary",
            ShowTools::Full => "full",
        }
    }

    /// Parses the SQL spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(ShowTools::None),
            "summary" => Some(ShowTools::Summary),
            "full" => Some(ShowTools::Full),
            _ => None,
        }
    }
}

/// An agent's tools: its blueprint's list, narrowed by the agent's own patterns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Toolset {
    /// The blueprint's tools.
    pub tools: Vec<ToolSpec>,
    /// The agent's narrowing (names or globs over the tools' full names); none: all of them.
    pub narrow: Option<Vec<String>>,
    /// What people see.
    pub show: ShowTools,
    /// Rounds of tool calls a run makes at most.
    pub max_rounds: u32,
}

impl Toolset {
    /// Whether the agent may use the tool with this full name (`weather`, `files.read_file`,
    /// `matrix.read_history`): the blueprint names it (an MCP server's `allow` lets it through)
    /// and the agent's narrowing, if any, keeps it. The bridge checks this on every call: what
    /// the model asks for never widens it.
    pub fn allows(&self, full_name: &str) -> bool {
        let named = self.tools.iter().any(|t| match t {
            ToolSpec::Http(h) => h.name == full_name,
            ToolSpec::Builtin(b) => b.name == full_name,
            ToolSpec::Mcp(m) => full_name
                .strip_prefix(m.name.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|tool| m.allow.iter().any(|p| glob(p, tool))),
        });
        named
            && self
                .narrow
                .as_ref()
                .is_none_or(|n| n.iter().any(|p| glob(p, full_name)))
    }

    /// No tools at all.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// Matches `name` against a glob pattern: `*` any run of characters, `?` one character.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point: linear in practice, no recursion to blow.
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// What a name must be for the model's function list: OpenAI accepts `[A-Za-z0-9_-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The name the model sees for a tool's full name: dots become `__` (function names cannot
/// hold dots), e.g. `matrix__read_history`, `files__read_file`.
pub fn function_name(full_name: &str) -> String {
    full_name.replace('.', "__")
}

/// Why a `tools` list is refused: the field (`tools[1].parameters`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct ToolsInvalid {
    /// The field, e.g. `tools[0].url`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Checks a `tools` list: known built-ins, unique usable names, object schemas, `http(s)` URLs
/// on allowed hosts (`allowed_hosts` empty: any host), non-empty `allow` patterns, timeouts
/// within 1 s–10 min. `has_secret` says whether a `*_ref` names a defined secret.
pub fn validate(
    tools: &[ToolSpec],
    allowed_hosts: &[String],
    has_secret: &dyn Fn(&str) -> bool,
) -> Result<(), ToolsInvalid> {
    let bad = |i: usize, field: &str, message: String| ToolsInvalid {
        field: format!("tools[{i}].{field}"),
        message,
    };
    let mut names = std::collections::HashSet::new();
    for (i, tool) in tools.iter().enumerate() {
        let name = tool.name();
        if !names.insert(name.to_owned()) {
            return Err(bad(i, "name", format!("`{name}` is named twice")));
        }
        let secret = |field: &str, r: &Option<String>| match r {
            Some(r) if !has_secret(r) => Err(bad(
                i,
                field,
                format!("the secret `{r}` is not defined in the bridge's [secrets]"),
            )),
            _ => Ok(()),
        };
        let url = |u: &str| {
            check_url(u, allowed_hosts).map_err(|m| bad(i, "url", m))?;
            Ok::<(), ToolsInvalid>(())
        };
        let timeout = |t: Duration| {
            if t < Duration::from_secs(1) || t > Duration::from_secs(600) {
                return Err(bad(i, "timeout", "must be 1s to 10m".into()));
            }
            Ok(())
        };
        match tool {
            ToolSpec::Builtin(b) => {
                if !BUILTINS.contains(&b.name.as_str()) {
                    return Err(bad(
                        i,
                        "name",
                        format!(
                            "unknown built-in tool `{}`; known: {}",
                            b.name.escape_debug(),
                            BUILTINS.join(", ")
                        ),
                    ));
                }
            }
            ToolSpec::Http(h) => {
                if !valid_name(&h.name) {
                    return Err(bad(i, "name", NAME_RULE.into()));
                }
                check_schema(&h.parameters).map_err(|m| bad(i, "parameters", m))?;
                url(&h.url)?;
                secret("secret_ref", &h.secret_ref)?;
                if h.secret_ref.is_none() && h.secret_env.is_none() {
                    return Err(bad(
                        i,
                        "secret_ref",
                        "an HTTP tool is signed: name its secret with `secret_ref` or `secret_env`"
                            .into(),
                    ));
                }
                timeout(h.timeout)?;
            }
            ToolSpec::Mcp(m) => {
                // `{name}.{tool}` must stay a usable function name.
                if !valid_name(&m.name) || m.name.len() > 24 {
                    return Err(bad(
                        i,
                        "name",
                        "letters, digits, `_` and `-`, at most 24 characters".into(),
                    ));
                }
                url(&m.url)?;
                secret("header_secret_ref", &m.header_secret_ref)?;
                if m.allow.is_empty() {
                    return Err(bad(
                        i,
                        "allow",
                        "name the server's tools agents may use (names or globs such as `read_*`)"
                            .into(),
                    ));
                }
                if let Some(p) = m.allow.iter().find(|p| p.trim().is_empty() || p.len() > 64) {
                    return Err(bad(
                        i,
                        "allow",
                        format!("bad pattern `{}`", p.escape_debug()),
                    ));
                }
                timeout(m.timeout)?;
            }
        }
    }
    Ok(())
}

/// Entries an agent's narrowing holds at most.
pub const MAX_NARROWING: usize = 100;

/// Checks an agent's narrowing of its blueprint's tools: at most [`MAX_NARROWING`] names or
/// globs (`files.read_*`), each 1 to 64 characters without whitespace or control characters
/// (such a pattern could match no tool name). A pattern naming no tool of the blueprint is
/// allowed: the blueprint may gain the tool later, and a narrowing never widens anyway.
pub fn validate_narrowing(patterns: &[String]) -> Result<(), ToolsInvalid> {
    if patterns.len() > MAX_NARROWING {
        return Err(ToolsInvalid {
            field: "tools".into(),
            message: format!("at most {MAX_NARROWING} names or patterns"),
        });
    }
    match patterns.iter().position(|p| {
        p.is_empty()
            || p.chars().count() > 64
            || p.chars().any(|c| c.is_whitespace() || c.is_control())
    }) {
        Some(i) => Err(ToolsInvalid {
            field: format!("tools[{i}]"),
            message: "a tool name or glob, 1 to 64 characters without spaces".into(),
        }),
        None => Ok(()),
    }
}

const NAME_RULE: &str = "letters, digits, `_` and `-`, 1 to 64 characters";

/// An `http(s)` URL whose host the config allows.
pub fn check_url(url: &str, allowed_hosts: &[String]) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must be an http:// or https:// URL")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !allowed_hosts.is_empty() && !allowed_hosts.iter().any(|h| glob(h, host)) {
        return Err(format!(
            "the host `{host}` is not in the bridge's tools.allowed_hosts"
        ));
    }
    Ok(())
}

/// A function's `parameters`: a JSON Schema object of `type: object`, whose `properties` is
/// an object of schemas and whose `required` names only properties it has.
pub fn check_schema(schema: &serde_json::Value) -> Result<(), String> {
    let Some(obj) = schema.as_object() else {
        return Err("must be a JSON Schema object".into());
    };
    if obj.get("type").and_then(|t| t.as_str()) != Some("object") {
        return Err("must be a schema of `\"type\": \"object\"`".into());
    }
    let props = match obj.get("properties") {
        None => None,
        Some(serde_json::Value::Object(p)) => Some(p),
        Some(_) => return Err("`properties` must be an object".into()),
    };
    if let Some((name, _)) = props
        .into_iter()
        .flatten()
        .find(|(_, s)| !s.is_object() && !s.is_boolean())
    {
        return Err(format!("`properties.{name}` must be a schema (an object)"));
    }
    match obj.get("required") {
        None => {}
        Some(serde_json::Value::Array(names)) => {
            for n in names {
                let Some(n) = n.as_str() else {
                    return Err("`required` must list property names".into());
                };
                if !props.is_some_and(|p| p.contains_key(n)) {
                    return Err(format!("`required` names `{n}`, which is not a property"));
                }
            }
        }
        Some(_) => return Err("`required` must be an array".into()),
    }
    if serde_json::to_vec(schema).map_or(0, |v| v.len()) > 16 * 1024 {
        return Err("is over 16 KiB".into());
    }
    Ok(())
}

fn empty_object_schema() -> serde_json::Value {
    serde_json::json!({ "type": "object", "properties": {} })
}

fn default_tool_timeout() -> Duration {
    Duration::from_secs(10)
}

fn is_default_timeout(t: &Duration) -> bool {
    *t == default_tool_timeout()
}

fn default_mcp_timeout() -> Duration {
    Duration::from_secs(30)
}

fn is_default_mcp_timeout(t: &Duration) -> bool {
    *t == default_mcp_timeout()
}

/// One call as the final answer carries it under `io.daarion.tool_calls`: what a client
/// renders, with no result body (results can be large and private to the run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallNote {
    /// The tool's full name.
    pub name: String,
    /// The arguments, shortened for display.
    pub arguments: String,
    /// How it ended.
    pub status: StepStatus,
}

/// The content key an answer's tool calls are carried under.
pub const TOOL_CALLS_KEY: &str = "io.daarion.tool_calls";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("read_*", "read_file"));
        assert!(glob("*", "anything"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("read_*", "write_file"));
        assert!(!glob("list_dir", "list_dirs"));
        assert!(glob("*.example.org", "tools.example.org"));
        assert!(!glob("*.example.org", "example.org.evil"));
    }

    #[test]
    fn the_allow_list_is_the_blueprints_narrowed_by_the_agents() {
        let tools: Vec<ToolSpec> = serde_json::from_value(serde_json::json!([
            {"type": "http", "name": "weather", "url": "https://t.example/w", "secret_ref": "s"},
            {"type": "mcp", "name": "files", "url": "https://m.example/mcp", "allow": ["read_*", "list_dir"]},
            {"type": "builtin", "name": "matrix.read_history"}
        ]))
        .unwrap();
        let mut set = Toolset {
            tools,
            narrow: None,
            ..Default::default()
        };
        assert!(set.allows("weather"));
        assert!(set.allows("files.read_file"));
        assert!(set.allows("files.list_dir"));
        assert!(!set.allows("files.delete_file"));
        assert!(!set.allows("daarion.list_channels"));
        assert!(!set.allows("files"));
        set.narrow = Some(vec!["files.*".into()]);
        assert!(!set.allows("weather"));
        assert!(set.allows("files.read_file"));
        assert!(!set.allows("files.delete_file"), "narrowing never widens");
    }

    #[test]
    fn validation_names_the_field() {
        let check = |v: serde_json::Value| {
            let tools: Vec<ToolSpec> = serde_json::from_value(v).unwrap();
            validate(&tools, &["*.example.org".into()], &|s| s == "known")
        };
        let err =
            check(serde_json::json!([{"type": "builtin", "name": "matrix.nope"}])).unwrap_err();
        assert_eq!(err.field, "tools[0].name");
        let err = check(serde_json::json!([
            {"type": "builtin", "name": "matrix.read_history"},
            {"type": "http", "name": "w", "url": "https://a.example.org/", "secret_ref": "known", "parameters": {"type": "string"}}
        ]))
        .unwrap_err();
        assert_eq!(err.field, "tools[1].parameters");
        let err = check(serde_json::json!([
            {"type": "http", "name": "w", "url": "https://evil.test/", "secret_ref": "known"}
        ]))
        .unwrap_err();
        assert_eq!(err.field, "tools[0].url");
        let err = check(serde_json::json!([
            {"type": "http", "name": "w", "url": "https://a.example.org/", "secret_ref": "unknown"}
        ]))
        .unwrap_err();
        assert_eq!(err.field, "tools[0].secret_ref");
        let err = check(serde_json::json!([
            {"type": "mcp", "name": "m", "url": "https://a.example.org/mcp", "allow": []}
        ]))
        .unwrap_err();
        assert_eq!(err.field, "tools[0].allow");
        check(serde_json::json!([
            {"type": "http", "name": "w", "url": "https://a.example.org/", "secret_ref": "known",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "timeout": "5s"},
            {"type": "mcp", "name": "m", "url": "http://b.example.org:8080/mcp", "allow": ["*"]}
        ]))
        .unwrap();
    }
}
