//! The tool fields of admin bodies: a blueprint's `tools`, `show_tools` and `max_tool_rounds`,
//! and an agent's narrowing `tools`. Each is taken as plain JSON and checked here rather than
//! by the body's serde, so that a refusal is `M_INVALID_PARAM` naming the field
//! (`tools[1].parameters`) instead of a bare `M_BAD_JSON`.

use serde_json::Value;

use crate::{
    api::ApiState,
    model::tools::{self, ShowTools, ToolSpec},
    server::error::MatrixError,
};

/// Keys that would hold a secret's value; refused so that a value never reaches the database
/// (the tools name secrets of the bridge's `[secrets]` with `secret_ref` /
/// `header_secret_ref`, or an environment variable with `secret_env`).
const SECRET_KEYS: [&str; 3] = ["secret", "header_secret", "api_key"];

/// A blueprint's `tools`: each entry parsed as a [`ToolSpec`], then the list checked as the
/// registry will use it (known built-ins, object schemas, hosts within `[tools]
/// allowed_hosts`, defined secrets). `null` or absent: none.
pub fn blueprint_tools(
    state: &ApiState,
    raw: Option<Value>,
) -> Result<Option<Vec<ToolSpec>>, MatrixError> {
    let Some(raw) = raw else { return Ok(None) };
    let Value::Array(entries) = raw else {
        return Err(MatrixError::invalid_param(
            "`tools` must be a list of tool objects ({\"type\": \"http\" | \"mcp\" | \"builtin\", …})",
        ));
    };
    let mut specs = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        if let Some(key) = SECRET_KEYS.iter().find(|k| entry.get(**k).is_some()) {
            return Err(MatrixError::invalid_param(format!(
                "`tools[{i}].{key}`: secrets are never stored in the database; name one with \
                 `secret_ref` / `header_secret_ref` (a secret in the bridge's [secrets]) or \
                 `secret_env`"
            )));
        }
        // serde's message names the problem (`unknown variant`, `unknown field`, `missing
        // field`); the index says which tool.
        let spec = serde_json::from_value::<ToolSpec>(entry)
            .map_err(|e| MatrixError::invalid_param(format!("`tools[{i}]`: {e}")))?;
        specs.push(spec);
    }
    tools::validate(&specs, &state.tools.allowed_hosts, &|name| {
        state.registry.has_secret(name)
    })
    .map_err(|e| MatrixError::invalid_param(e.to_string()))?;
    Ok(Some(specs))
}

/// `show_tools`: `none | summary | full` (absent: the default, `summary`).
pub fn show_tools(raw: Option<&str>) -> Result<Option<ShowTools>, MatrixError> {
    raw.map(|s| {
        ShowTools::parse(s).ok_or_else(|| {
            MatrixError::invalid_param("`show_tools` must be one of none, summary, full")
        })
    })
    .transpose()
}

/// `max_tool_rounds`: 0 to [`tools::MAX_ROUNDS_LIMIT`] (absent: the default, 5). Taken as an
/// `i64` so a negative or huge number is named rather than failing the body's parse.
pub fn max_rounds(raw: Option<i64>) -> Result<Option<i32>, MatrixError> {
    match raw {
        None => Ok(None),
        Some(n) if (0..=i64::from(tools::MAX_ROUNDS_LIMIT)).contains(&n) => Ok(Some(n as i32)),
        Some(_) => Err(MatrixError::invalid_param(format!(
            "`max_tool_rounds` must be 0 to {}",
            tools::MAX_ROUNDS_LIMIT
        ))),
    }
}

/// An agent's `tools`: names or globs narrowing its blueprint's tools. `null` or absent: all
/// of the blueprint's.
pub fn agent_tools(raw: Option<Value>) -> Result<Option<Vec<String>>, MatrixError> {
    let Some(raw) = raw else { return Ok(None) };
    let patterns: Vec<String> = serde_json::from_value(raw).map_err(|_| {
        MatrixError::invalid_param(
            "`tools` must be a list of tool names or globs (`weather`, `files.read_*`), or null",
        )
    })?;
    tools::validate_narrowing(&patterns).map_err(|e| MatrixError::invalid_param(e.to_string()))?;
    Ok(Some(patterns))
}
