//! The agent registry: every agent the bridge knows, by row id and by Matrix id, with what
//! defines its behaviour (runtime, model, instructions, message type, avatar, idle period,
//! `respond` default, active or disabled), read from the database (`agents`, `agent_blueprints`
//! and their bridge rows): the database is the source of truth, the config only seeds it.
//! Reloads are serialised and swap one consistent snapshot; what a reload changed (profiles to
//! update, agents gone or disabled) is queued for the reconciler, whoever triggered the reload.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use ruma::{OwnedUserId, UserId};

use crate::{
    config::{MessageKind, NatsConfig, OpenAiConfig, WebhookConfig},
    db::{
        Store, StoreError,
        agents::{AgentStore, StoredAgent},
    },
    model::{
        Agent, Behaviour, Namespace, Respond, RuntimeSpec,
        ids::AgentId,
        tools::{self, ShowTools, ToolSpec, Toolset},
    },
};

/// What reloads changed, for the reconciler.
#[derive(Debug, Default)]
pub struct Changes {
    /// New agents, and agents whose name or avatar changed: their profiles follow.
    pub profiles: Vec<Arc<Agent>>,
    /// Agents deleted or disabled (as they were before): they leave their rooms.
    pub gone: Vec<Arc<Agent>>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty() && self.gone.is_empty()
    }
}

#[derive(Default)]
struct Snapshot {
    by_user: HashMap<OwnedUserId, Arc<Agent>>,
    by_id: HashMap<AgentId, Arc<Agent>>,
}

/// Every known agent.
pub struct AgentRegistry {
    /// `None` for a fixed registry (tests, fuzzing): reloads change nothing.
    store: Option<AgentStore>,
    namespace: Namespace,
    /// Named secrets runtime settings refer to (`[secrets]`, inline config secrets).
    secrets: BTreeMap<String, String>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// One reload at a time: a slow reload must not overwrite a newer snapshot.
    reloading: tokio::sync::Mutex<()>,
    pending: Mutex<Changes>,
    changed: tokio::sync::Notify,
}

impl AgentRegistry {
    /// Loads the agents from the database; `secrets` resolves the settings' `*_ref`s.
    pub async fn load(
        store: Store,
        namespace: Namespace,
        secrets: BTreeMap<String, String>,
    ) -> Result<Arc<Self>, StoreError> {
        let registry = Arc::new(Self {
            store: Some(store.agents()),
            namespace,
            secrets,
            snapshot: RwLock::default(),
            reloading: tokio::sync::Mutex::new(()),
            pending: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        registry.reload().await?;
        Ok(registry)
    }

    /// Takes what reloads changed since the last call.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when a reload changed something.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// A registry of exactly these agents, without a database (tests and fuzzing).
    pub fn fixed(namespace: Namespace, agents: Vec<Agent>) -> Arc<Self> {
        let mut snapshot = Snapshot::default();
        for agent in agents {
            let agent = Arc::new(agent);
            snapshot
                .by_user
                .insert(agent.user_id.clone(), agent.clone());
            snapshot.by_id.insert(agent.id, agent);
        }
        Arc::new(Self {
            store: None,
            namespace,
            secrets: BTreeMap::new(),
            snapshot: RwLock::new(Arc::new(snapshot)),
            reloading: tokio::sync::Mutex::new(()),
            pending: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn read(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            // A writer panicked mid-swap: the Arc it was replacing is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the agents; returns how many agents changed (their changes are queued for
    /// [`take_changes`](Self::take_changes)).
    pub async fn reload(&self) -> Result<usize, StoreError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let _one = self.reloading.lock().await;
        let rows = store.all().await?;
        let old = self.read();
        let mut next = Snapshot::default();
        let mut changes = Changes::default();
        for (matrix_id, row) in rows {
            let derived = matrix_id.is_none();
            let Some(agent) = self.agent(matrix_id, row) else {
                continue;
            };
            if derived {
                // Tell other services which puppet the agent is.
                store
                    .set_matrix_id(agent.id, agent.user_id.as_str())
                    .await?;
            }
            let agent = Arc::new(agent);
            match old.by_id.get(&agent.id) {
                Some(before) => {
                    if before.active && !agent.active {
                        changes.gone.push(before.clone());
                    }
                    if agent.active
                        && (!before.active
                            || before.name != agent.name
                            || before.behaviour.avatar != agent.behaviour.avatar)
                    {
                        changes.profiles.push(agent.clone());
                    }
                }
                None if agent.active => changes.profiles.push(agent.clone()),
                None => {}
            }
            next.by_user.insert(agent.user_id.clone(), agent.clone());
            next.by_id.insert(agent.id, agent);
        }
        for (id, before) in &old.by_id {
            if !next.by_id.contains_key(id) && before.active {
                changes.gone.push(before.clone());
            }
        }
        let next = Arc::new(next);
        match self.snapshot.write() {
            Ok(mut s) => *s = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        let n = changes.profiles.len() + changes.gone.len();
        if n > 0 {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.profiles.extend(changes.profiles);
            pending.gone.extend(changes.gone);
            drop(pending);
            self.changed.notify_one();
        }
        Ok(n)
    }

    fn agent(&self, matrix_id: Option<OwnedUserId>, row: StoredAgent) -> Option<Agent> {
        let user_id = match matrix_id {
            Some(m) => m,
            // Written without one: the puppet the external id names (`agent:helix`).
            None => self
                .namespace
                .puppet(row.external_id.strip_prefix("agent:")?)?,
        };
        if !self.namespace.is_puppet(&user_id) {
            tracing::debug!(agent = %row.external_id, %user_id, "agent outside the bridge's namespace; ignored");
            return None;
        }
        let behaviour = self.behaviour(&row);
        Some(Agent {
            id: row.id,
            external_id: row.external_id,
            user_id,
            name: row.name,
            microdao_id: row.microdao_id,
            kind: row.kind,
            active: row.active != 0,
            behaviour,
        })
    }

    /// An agent's behaviour from its blueprint's bridge row and its own.
    fn behaviour(&self, row: &StoredAgent) -> Behaviour {
        let kind = |k: Option<&str>| match k {
            Some("text") => Some(MessageKind::Text),
            Some("notice") => Some(MessageKind::Notice),
            _ => None,
        };
        let mut runtime = self.runtime(row.runtime.as_deref(), row.settings.as_deref());
        let tools = match self.toolset(row) {
            Ok(tools) => tools,
            // Tools the bridge cannot use make the runs fail, saying why, rather than answer
            // without them (a person asked for what the tools do).
            Err(error) => {
                runtime = RuntimeSpec::Misconfigured(error);
                Toolset::default()
            }
        };
        let webhook = matches!(runtime, RuntimeSpec::Webhook(_));
        Behaviour {
            blueprint: row.blueprint.clone(),
            runtime,
            model: row.model.clone().or_else(|| row.blueprint_model.clone()),
            instructions: row.system_instructions.clone(),
            agent_instructions: row.instructions.clone(),
            context_events: row.context_events.map_or(20, |n| n.clamp(0, 200) as u32),
            context_chars: row.context_chars.map(|n| n.clamp(0, 1_000_000) as u32),
            failure_notice: row.failure_notice.map_or(!webhook, |f| f != 0),
            message_kind: kind(row.message_type.as_deref())
                .or(kind(row.blueprint_message_type.as_deref()))
                .unwrap_or_default(),
            avatar: row.avatar.clone(),
            idle_after: row
                .idle_after_seconds
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64)),
            respond: row.respond.as_deref().and_then(Respond::parse),
            tools: Arc::new(tools),
        }
    }

    /// The agent's tools: its blueprint's list (checked as the admin API checks it, so a row
    /// another service wrote is held to the same rules), narrowed by the agent's own.
    fn toolset(&self, row: &StoredAgent) -> Result<Toolset, String> {
        let mut tools: Vec<ToolSpec> = match row.tools.as_deref() {
            None | Some("null") => Vec::new(),
            Some(json) => serde_json::from_str(json).map_err(|e| format!("tools: {e}"))?,
        };
        tools::validate(&tools, &[], &|name| self.secrets.contains_key(name))
            .map_err(|e| format!("tools: {e}"))?;
        // Validated: every reference names a defined secret.
        for tool in &mut tools {
            match tool {
                ToolSpec::Http(h) => {
                    h.secret = h
                        .secret_ref
                        .as_ref()
                        .and_then(|r| self.secrets.get(r).cloned())
                }
                ToolSpec::Mcp(m) => {
                    m.header_secret = m
                        .header_secret_ref
                        .as_ref()
                        .and_then(|r| self.secrets.get(r).cloned())
                }
                ToolSpec::Builtin(_) => {}
            }
        }
        let narrow = match row.agent_tools.as_deref() {
            None | Some("null") => None,
            Some(json) => Some(
                serde_json::from_str::<Vec<String>>(json)
                    .map_err(|e| format!("the agent's tools: {e}"))?,
            ),
        };
        Ok(Toolset {
            tools,
            narrow,
            show: row
                .show_tools
                .as_deref()
                .and_then(ShowTools::parse)
                .unwrap_or_default(),
            max_rounds: row.max_tool_rounds.map_or(tools::DEFAULT_MAX_ROUNDS, |n| {
                n.clamp(0, tools::MAX_ROUNDS_LIMIT as i32) as u32
            }),
        })
    }

    /// The runtime a blueprint's row names, its secrets resolved.
    fn runtime(&self, runtime: Option<&str>, settings: Option<&str>) -> RuntimeSpec {
        let settings = settings.unwrap_or("{}");
        let secret = |name: &Option<String>| -> Result<Option<String>, String> {
            match name {
                None => Ok(None),
                Some(n) => self.secrets.get(n).cloned().map(Some).ok_or_else(|| {
                    format!("secret `{n}` is not defined in the bridge's [secrets]")
                }),
            }
        };
        match runtime {
            None | Some("echo") => RuntimeSpec::Echo,
            Some("openai") => match serde_json::from_str::<OpenAiConfig>(settings) {
                Ok(mut o) => match secret(&o.api_key_ref) {
                    Ok(key) => {
                        o.api_key = key;
                        RuntimeSpec::OpenAi(o)
                    }
                    Err(e) => RuntimeSpec::Misconfigured(e),
                },
                Err(e) => RuntimeSpec::Misconfigured(format!("openai settings: {e}")),
            },
            Some("webhook") => match serde_json::from_str::<WebhookConfig>(settings) {
                Ok(mut w) => match secret(&w.secret_ref) {
                    Ok(s) => {
                        w.secret = s.or(w.secret);
                        RuntimeSpec::Webhook(w)
                    }
                    Err(e) => RuntimeSpec::Misconfigured(e),
                },
                Err(e) => RuntimeSpec::Misconfigured(format!("webhook settings: {e}")),
            },
            Some("nats") => match serde_json::from_str::<NatsConfig>(settings) {
                Ok(n) => RuntimeSpec::Nats(n),
                Err(e) => RuntimeSpec::Misconfigured(format!("nats settings: {e}")),
            },
            Some(other) => RuntimeSpec::Misconfigured(format!("unknown runtime `{other}`")),
        }
    }

    /// The agent behind a puppet.
    pub fn get(&self, user: &UserId) -> Option<Arc<Agent>> {
        self.read().by_user.get(user).cloned()
    }

    /// The agent with this row id.
    pub fn by_id(&self, id: AgentId) -> Option<Arc<Agent>> {
        self.read().by_id.get(&id).cloned()
    }

    /// The agent a person means by `needle`: its external id (`agent:sofia`), the part after
    /// `agent:`, its Matrix id or localpart, or its display name (case-insensitive).
    pub fn find(&self, needle: &str) -> Option<Arc<Agent>> {
        let needle = needle.trim();
        let snapshot = self.read();
        let mut agents: Vec<&Arc<Agent>> = snapshot.by_id.values().collect();
        // Deterministic when two agents share a name.
        agents.sort_by(|a, b| a.external_id.cmp(&b.external_id));
        agents
            .iter()
            .find(|a| {
                a.external_id == needle
                    || a.external_id.strip_prefix("agent:") == Some(needle)
                    || a.user_id.as_str() == needle
                    || a.user_id.localpart() == needle
            })
            .or_else(|| agents.iter().find(|a| a.name.eq_ignore_ascii_case(needle)))
            .map(|a| (*a).clone())
    }

    /// Whether the bridge's config defines the secret `name` (what `*_ref` settings name).
    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.contains_key(name)
    }

    /// Every agent (disabled ones too).
    pub fn all(&self) -> Vec<Arc<Agent>> {
        self.read().by_id.values().cloned().collect()
    }

    /// The bridge's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }
}

impl crate::puppet::Agents for AgentRegistry {
    fn by_id(&self, id: AgentId) -> Option<Arc<Agent>> {
        AgentRegistry::by_id(self, id)
    }
}
