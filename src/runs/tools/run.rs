//! One run's tools: the definitions offered to the model (only what the agent may use), and
//! the execution of a round of calls. Every call is checked against the agent's allow-list
//! here, whatever the model asked for, recorded with its audit row before anything runs, then
//! executed concurrently (bounded) and its outcome recorded.

use std::{collections::HashMap, sync::Arc, time::Instant};

use futures_core::future::BoxFuture;
use futures_util::StreamExt;
use ruma::{EventId, RoomId};
use serde_json::{Map, Value, json};

use super::{Bounded, ToolError, builtin, http, mcp::McpClients};
use crate::{
    config::ToolsConfig,
    db::{
        Store, StoreError,
        audit::NewAudit,
        steps::{NewStep, StepRow},
        text::DbText,
    },
    metrics::Metrics,
    model::{
        ActorType, Agent, AuditOutcome, StepStatus,
        ids::{ChannelId, RunId, StepId},
        tools::{self, HttpTool, McpServer, ToolCallNote, ToolSpec},
    },
    puppet::PuppetIntent,
    runs::runtime::{ToolCall, ToolDef, ToolResult, ToolRound},
};

/// What runs share for tools: the bounds, an HTTP client that follows no redirects (a
/// redirect could leave the allowed hosts), the MCP sessions.
pub struct Tools {
    config: ToolsConfig,
    http: reqwest::Client,
    mcp: McpClients,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Tools {
    /// The tools of a bridge with these bounds.
    pub fn new(
        config: ToolsConfig,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self {
            mcp: McpClients::new(config.mcp_list_ttl, http.clone()),
            http,
            config,
            store,
            metrics,
        })
    }

    /// The bounds.
    pub fn config(&self) -> &ToolsConfig {
        &self.config
    }
}

/// Where a run's tools act.
pub struct RunPlace<'a> {
    /// The run.
    pub run: RunId,
    /// Its agent.
    pub agent: &'a Agent,
    /// Acting as the agent (built-ins read the room as it).
    pub intent: &'a PuppetIntent,
    /// The room it answers in.
    pub room: &'a RoomId,
    /// Its channel.
    pub channel: ChannelId,
    /// The channel's forget mark: nothing before it is read again.
    pub forget_mark: Option<&'a EventId>,
    /// The store.
    pub store: &'a Store,
}

/// What a function name the model sees stands for.
#[derive(Clone)]
enum Target {
    Http(HttpTool),
    Mcp(McpServer, String),
    Builtin(&'static str),
}

/// One run's tools.
pub struct RunTools<'a> {
    tools: &'a Tools,
    place: RunPlace<'a>,
    /// Function name → (the tool's full name, what it is).
    targets: HashMap<String, (String, Target)>,
    /// Every call so far, for the answer's `io.daarion.tool_calls`.
    pub notes: Vec<ToolCallNote>,
}

/// A call after the bridge's checks: what to do with it.
enum Checked {
    /// Execute it with these arguments.
    Run(Target, Map<String, Value>),
    /// Never executed: denied or malformed.
    Refused(StepStatus, ToolError),
}

impl<'a> RunTools<'a> {
    /// The run's tools and the definitions the model gets: only what the agent may use (an
    /// MCP server that cannot be listed offers nothing this run, logged).
    pub async fn prepare(tools: &'a Tools, place: RunPlace<'a>) -> (Self, Vec<ToolDef>) {
        let set = place.agent.behaviour.tools.clone();
        let mut targets = HashMap::new();
        let mut defs = Vec::new();
        let mut add = |full: String, target: Target, def: Option<ToolDef>| {
            if let Some(def) = def.filter(|d| tools::valid_name(&d.name) && set.allows(&full)) {
                targets.insert(def.name.clone(), (full, target));
                defs.push(def);
            }
        };
        for spec in &set.tools {
            match spec {
                ToolSpec::Http(h) => add(
                    h.name.clone(),
                    Target::Http(h.clone()),
                    Some(ToolDef {
                        name: h.name.clone(),
                        description: h.description.clone(),
                        parameters: h.parameters.clone(),
                    }),
                ),
                ToolSpec::Builtin(b) => {
                    if let Some(name) = tools::BUILTINS.iter().find(|n| **n == b.name) {
                        let def = builtin::definition(name, tools::function_name(name));
                        add(b.name.clone(), Target::Builtin(name), def);
                    }
                }
                ToolSpec::Mcp(server) => {
                    if let Err(e) = tools::check_url(&server.url, &tools.config.allowed_hosts) {
                        tracing::warn!(server = %server.name, error = %e, "MCP server not allowed");
                        continue;
                    }
                    match tools.mcp.tools(server).await {
                        Ok(list) => {
                            for t in list.iter() {
                                let full = format!("{}.{}", server.name, t.name);
                                let def = ToolDef {
                                    name: tools::function_name(&full),
                                    description: t.description.clone(),
                                    parameters: t.input_schema.clone(),
                                };
                                add(full, Target::Mcp(server.clone(), t.name.clone()), Some(def));
                            }
                        }
                        Err(error) => {
                            tracing::warn!(server = %server.name, %error, "cannot list an MCP server's tools; none of them this run")
                        }
                    }
                }
            }
        }
        let run = Self {
            tools,
            place,
            targets,
            notes: Vec::new(),
        };
        (run, defs)
    }

    /// The rounds a previous attempt of this run made (its `running` calls now `interrupted`),
    /// so the model continues from them and nothing is executed twice.
    pub async fn resume(&mut self) -> Result<Vec<ToolRound>, StoreError> {
        let steps = self.tools.store.steps().resume(self.place.run).await?;
        let mut rounds: Vec<ToolRound> = Vec::new();
        let mut last = None;
        for step in steps {
            if last != Some(step.round) {
                rounds.push(ToolRound {
                    text: String::new(),
                    calls: Vec::new(),
                    results: Vec::new(),
                });
                last = Some(step.round);
            }
            if step.status == StepStatus::Interrupted {
                self.tools.metrics.tool_call("interrupted");
            }
            self.notes
                .push(note(&step.tool, &step.arguments, step.status));
            let round = rounds.last_mut().expect("pushed above");
            round.calls.push(ToolCall {
                id: step.call_id.clone(),
                name: tools::function_name(&step.tool),
                arguments: step.arguments.clone(),
            });
            round.results.push(recorded_result(&step));
        }
        Ok(rounds)
    }

    /// Executes round `round` of the model's calls: checked, recorded (with their audit rows)
    /// before any runs, executed at most `max_parallel` at once, outcomes recorded. Results
    /// come back in the calls' order.
    pub async fn execute(
        &mut self,
        round: i32,
        calls: &[ToolCall],
    ) -> Result<Vec<ToolResult>, StoreError> {
        let config = &self.tools.config;
        let checked: Vec<(String, Checked)> = calls.iter().map(|c| self.check(c)).collect();
        let ids: Vec<StepId> = calls.iter().map(|_| StepId::new()).collect();
        let mut steps = Vec::with_capacity(calls.len());
        let mut audit = Vec::with_capacity(calls.len());
        for (i, (call, (full, checked))) in calls.iter().zip(&checked).enumerate() {
            let (status, error) = match checked {
                Checked::Run(..) => (StepStatus::Running, None),
                Checked::Refused(status, e) => (*status, Some(DbText::new(e.to_string()))),
            };
            steps.push(NewStep {
                id: ids[i],
                position: i as i32,
                call_id: DbText::new(&call.id),
                tool: DbText::new(full),
                arguments: DbText::new(&call.arguments),
                status,
                error,
            });
            let (action, outcome) = match status {
                StepStatus::Denied => ("tool.denied", AuditOutcome::Denied),
                _ => ("tool.called", AuditOutcome::Allowed),
            };
            // The arguments are the model's and may quote the conversation: their size only.
            audit.push(
                NewAudit::new(
                    ActorType::Agent,
                    Some(&self.place.agent.external_id),
                    action,
                    Some(full),
                    outcome,
                )
                .details(json!({
                    "run_id": self.place.run, "call_id": call.id, "status": status,
                    "arguments_bytes": call.arguments.len(), "room_id": self.place.room,
                })),
            );
        }
        self.tools
            .store
            .steps()
            .begin(self.place.run, round, &steps, &audit)
            .await?;
        let caller = http::Caller {
            run_id: &self.place.run.to_string(),
            agent: &self.place.agent.external_id,
        };
        // Boxed futures of a named method (not closures' async blocks): the scheduler's spawned
        // task must stay `Send` for every lifetime, which closure-made futures trip over.
        let calls_now: Vec<BoxFuture<'_, (Result<Bounded, ToolError>, u128)>> = checked
            .iter()
            .map(|(_, c)| Box::pin(self.timed(c, &caller)) as BoxFuture<'_, _>)
            .collect();
        let outcomes: Vec<(Result<Bounded, ToolError>, u128)> =
            futures_util::stream::iter(calls_now)
                .buffered(config.max_parallel.max(1))
                .collect()
                .await;
        let mut results = Vec::with_capacity(calls.len());
        for (i, (result, ms)) in outcomes.into_iter().enumerate() {
            let (full, checked) = &checked[i];
            let (status, content) = match (&result, checked) {
                (_, Checked::Refused(status, e)) => (*status, error_json(e)),
                (Ok(b), _) => (StepStatus::Ok, with_cut(b, config.max_result_bytes)),
                (Err(e), _) => (StepStatus::Failed, error_json(e)),
            };
            if matches!(checked, Checked::Run(..)) {
                let kept = DbText::new(crate::db::steps::cut(&content, config.max_result_bytes));
                let error = result.as_ref().err().map(|e| DbText::new(e.to_string()));
                let ok = result.is_ok().then_some(&kept);
                self.tools
                    .store
                    .steps()
                    .finish(ids[i], status, ok, error.as_ref(), ms as i64)
                    .await?;
            }
            self.tools.metrics.tool_call(status.as_str());
            if let Err(e) = &result {
                tracing::info!(run_id = %self.place.run, tool = %full, %status, error = %e, "tool call did not succeed");
            }
            self.notes.push(note(full, &calls[i].arguments, status));
            results.push(ToolResult {
                call_id: calls[i].id.clone(),
                status,
                content,
            });
        }
        Ok(results)
    }

    /// What the bridge makes of a call before anything runs: the allow-list (checked here,
    /// never trusted from the model), then the arguments.
    fn check(&self, call: &ToolCall) -> (String, Checked) {
        let Some((full, target)) = self.targets.get(&call.name) else {
            let full = call.name.replace("__", ".");
            let e = ToolError::NotAllowed(full.clone());
            return (full, Checked::Refused(StepStatus::Denied, e));
        };
        if !self.place.agent.behaviour.tools.allows(full) {
            let e = ToolError::NotAllowed(full.clone());
            return (full.clone(), Checked::Refused(StepStatus::Denied, e));
        }
        let max = self.tools.config.max_argument_bytes;
        if call.arguments.len() > max {
            let e = ToolError::Arguments(format!("over {max} bytes"));
            return (full.clone(), Checked::Refused(StepStatus::Failed, e));
        }
        let args = if call.arguments.trim().is_empty() {
            Ok(Value::Object(Map::new()))
        } else {
            serde_json::from_str::<Value>(&call.arguments)
        };
        match args {
            Ok(Value::Object(map)) => (full.clone(), Checked::Run(target.clone(), map)),
            Ok(_) => {
                let e = ToolError::Arguments("must be a JSON object".into());
                (full.clone(), Checked::Refused(StepStatus::Failed, e))
            }
            Err(err) => {
                let e = ToolError::Arguments(format!("not valid JSON ({err})"));
                (full.clone(), Checked::Refused(StepStatus::Failed, e))
            }
        }
    }

    /// One checked call, executed (or its refusal), with how long it took.
    async fn timed(
        &self,
        checked: &Checked,
        caller: &http::Caller<'_>,
    ) -> (Result<Bounded, ToolError>, u128) {
        let started = Instant::now();
        let result = match checked {
            Checked::Refused(_, e) => Err(e.clone()),
            Checked::Run(target, args) => self.run(target, args, caller).await,
        };
        (result, started.elapsed().as_millis())
    }

    async fn run(
        &self,
        target: &Target,
        args: &Map<String, Value>,
        caller: &http::Caller<'_>,
    ) -> Result<Bounded, ToolError> {
        let config = &self.tools.config;
        let text = match target {
            Target::Http(tool) => {
                tools::check_url(&tool.url, &config.allowed_hosts).map_err(ToolError::Host)?;
                let body = Value::Object(args.clone()).to_string();
                return http::call(
                    &self.tools.http,
                    tool,
                    &body,
                    caller,
                    config.max_result_bytes,
                )
                .await;
            }
            Target::Mcp(server, tool) => {
                tools::check_url(&server.url, &config.allowed_hosts).map_err(ToolError::Host)?;
                self.tools.mcp.call(server, tool, args.clone()).await?
            }
            Target::Builtin(name) => {
                let call = builtin::call(name, &self.place, args);
                tokio::time::timeout(std::time::Duration::from_secs(30), call)
                    .await
                    .map_err(|_| ToolError::Timeout(std::time::Duration::from_secs(30)))??
            }
        };
        let cut = text.len() > config.max_result_bytes;
        Ok(Bounded {
            text: crate::db::steps::cut(&text, config.max_result_bytes).to_owned(),
            cut,
        })
    }
}

/// What the model is told of a failed or refused call.
fn error_json(e: &ToolError) -> String {
    json!({ "error": e.to_string() }).to_string()
}

/// A result, with a note when the cap cut it (so the model does not take it for the whole).
fn with_cut(b: &Bounded, max: usize) -> String {
    if b.cut {
        format!("{}\n[result cut at {max} bytes]", b.text)
    } else {
        b.text.clone()
    }
}

/// What a recorded call gives the model when a run resumes.
fn recorded_result(step: &StepRow) -> ToolResult {
    let content = match (step.status, &step.result, &step.error) {
        (StepStatus::Ok, Some(result), _) => result.clone(),
        (_, _, Some(error)) => json!({ "error": error }).to_string(),
        _ => json!({ "error": ToolError::Interrupted.to_string() }).to_string(),
    };
    ToolResult {
        call_id: step.call_id.clone(),
        status: step.status,
        content,
    }
}

/// A call as the answer names it: its arguments shortened for display.
fn note(tool: &str, arguments: &str, status: StepStatus) -> ToolCallNote {
    let compact = serde_json::from_str::<Value>(arguments)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| arguments.to_owned());
    let mut shown: String = compact.chars().take(120).collect();
    if shown.len() < compact.len() {
        shown.push('…');
    }
    ToolCallNote {
        name: tool.to_owned(),
        arguments: shown,
        status,
    }
}
