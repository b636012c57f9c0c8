//! The agent registry: every agent the bridge knows, by row id and by Matrix id, with what
//! defines its behaviour (runtime, model, instructions, message type, avatar, idle period).
//! Reloadable: agents written by other DAARION services are found on the next reload, and
//! readers always see one consistent snapshot.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use ruma::{OwnedUserId, UserId};

use crate::{
    config::{AgentDecl, BlueprintDecl, MessageKind, OpenAiConfig, RuntimeKind, WebhookConfig},
    db::{Store, StoreError, agents::StoredAgent},
    ids::{AgentId, MicrodaoId},
    matrix::Namespace,
};

/// How an agent's runtime is reached.
#[derive(Debug, Clone)]
pub enum RuntimeSpec {
    /// Answers with what it was sent.
    Echo,
    /// An OpenAI-compatible endpoint.
    OpenAi(OpenAiConfig),
    /// A signed webhook.
    Webhook(WebhookConfig),
}

impl RuntimeSpec {
    /// `echo`, `openai` or `webhook`.
    pub fn name(&self) -> &'static str {
        match self {
            RuntimeSpec::Echo => "echo",
            RuntimeSpec::OpenAi(_) => "openai",
            RuntimeSpec::Webhook(_) => "webhook",
        }
    }
}

/// What defines how an agent behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Its blueprint's code.
    pub blueprint: Option<String>,
    /// Its runtime.
    pub runtime: RuntimeSpec,
    /// The model the runtime uses.
    pub model: Option<String>,
    /// The blueprint's system prompt.
    pub instructions: Option<String>,
    /// The agent's own instructions, added to the blueprint's.
    pub agent_instructions: Option<String>,
    /// Recent room events the runtime gets.
    pub context_events: u32,
    /// Whether a failed run posts a notice.
    pub failure_notice: bool,
    /// What it sends by default.
    pub message_kind: MessageKind,
    /// Avatar source (`mxc://` or a local file).
    pub avatar: Option<String>,
    /// Overrides the bridge's session idle period.
    pub idle_after: Option<Duration>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            blueprint: None,
            runtime: RuntimeSpec::Echo,
            model: None,
            instructions: None,
            agent_instructions: None,
            context_events: 20,
            failure_notice: true,
            message_kind: MessageKind::Notice,
            avatar: None,
            idle_after: None,
        }
    }
}

/// An agent the bridge hosts as a puppet.
#[derive(Debug, Clone)]
pub struct Agent {
    /// `agents.id`.
    pub id: AgentId,
    /// `agents.external_id`.
    pub external_id: String,
    /// Its puppet.
    pub user_id: OwnedUserId,
    /// Its display name.
    pub name: String,
    /// Its microDAO, if scoped to one.
    pub microdao_id: Option<MicrodaoId>,
    /// How it behaves.
    pub behaviour: Behaviour,
}

#[derive(Default)]
struct Snapshot {
    by_user: HashMap<OwnedUserId, Arc<Agent>>,
    by_id: HashMap<AgentId, Arc<Agent>>,
}

/// Every known agent.
pub struct AgentRegistry {
    /// `None` for a fixed registry (tests, fuzzing): reloads change nothing.
    store: Option<Store>,
    namespace: Namespace,
    blueprints: Vec<BlueprintDecl>,
    decls: Vec<AgentDecl>,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl AgentRegistry {
    /// Loads the agents. Behaviour comes from the blueprint and agent declarations of the config.
    pub async fn load(
        store: Store,
        namespace: Namespace,
        blueprints: Vec<BlueprintDecl>,
        decls: Vec<AgentDecl>,
    ) -> Result<Arc<Self>, StoreError> {
        let registry = Arc::new(Self {
            store: Some(store),
            namespace,
            blueprints,
            decls,
            snapshot: RwLock::default(),
        });
        registry.reload().await?;
        Ok(registry)
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
            blueprints: Vec::new(),
            decls: Vec::new(),
            snapshot: RwLock::new(Arc::new(snapshot)),
        })
    }

    fn read(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            // A writer panicked mid-swap: the Arc it was replacing is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the agents table; returns the agents whose name or avatar changed (and new
    /// ones), so their puppets' profiles can follow.
    pub async fn reload(&self) -> Result<Vec<Arc<Agent>>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let rows = store.agents().await?;
        let old = self.read();
        let mut next = Snapshot::default();
        let mut changed = Vec::new();
        for row in rows {
            let Some(agent) = self.agent(row) else {
                continue;
            };
            let agent = Arc::new(agent);
            let differs = match old.by_id.get(&agent.id) {
                Some(before) => {
                    before.name != agent.name || before.behaviour.avatar != agent.behaviour.avatar
                }
                None => true,
            };
            if differs {
                changed.push(agent.clone());
            }
            next.by_user.insert(agent.user_id.clone(), agent.clone());
            next.by_id.insert(agent.id, agent);
        }
        let next = Arc::new(next);
        match self.snapshot.write() {
            Ok(mut s) => *s = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(changed)
    }

    fn agent(&self, row: StoredAgent) -> Option<Agent> {
        let Ok(user_id) = UserId::parse(&row.matrix_id) else {
            tracing::warn!(agent = %row.external_id, matrix_id = %row.matrix_id, "agent has an invalid Matrix id; ignored");
            return None;
        };
        if !self.namespace.is_puppet(&user_id) {
            tracing::debug!(agent = %row.external_id, %user_id, "agent outside the bridge's namespace; ignored");
            return None;
        }
        let decl = self
            .decls
            .iter()
            .find(|d| self.namespace.agent_user_id(d).as_deref() == Some(&*user_id));
        let blueprint = row
            .blueprint
            .as_deref()
            .and_then(|code| self.blueprints.iter().find(|b| b.code == code));
        Some(Agent {
            id: row.id,
            external_id: row.external_id,
            user_id,
            name: row.name,
            microdao_id: row.microdao_id,
            behaviour: behaviour(blueprint, decl),
        })
    }

    /// The agent behind a puppet.
    pub fn get(&self, user: &UserId) -> Option<Arc<Agent>> {
        self.read().by_user.get(user).cloned()
    }

    /// The agent with this row id.
    pub fn by_id(&self, id: AgentId) -> Option<Arc<Agent>> {
        self.read().by_id.get(&id).cloned()
    }

    /// Every agent.
    pub fn all(&self) -> Vec<Arc<Agent>> {
        self.read().by_id.values().cloned().collect()
    }

    /// The bridge's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }
}

/// An agent's behaviour from its blueprint and its own declaration.
fn behaviour(blueprint: Option<&BlueprintDecl>, decl: Option<&AgentDecl>) -> Behaviour {
    let mut b = Behaviour::default();
    if let Some(bp) = blueprint {
        b.blueprint = Some(bp.code.clone());
        b.runtime = match (bp.runtime, &bp.openai, &bp.webhook) {
            (RuntimeKind::Openai, Some(o), _) => RuntimeSpec::OpenAi(o.clone()),
            (RuntimeKind::Webhook, _, Some(w)) => RuntimeSpec::Webhook(w.clone()),
            _ => RuntimeSpec::Echo,
        };
        b.model = bp.model.clone();
        b.instructions = bp.instructions.clone();
        b.context_events = bp.context_events;
        b.failure_notice = bp
            .failure_notice
            .unwrap_or(bp.runtime != RuntimeKind::Webhook);
        b.message_kind = bp.message_type;
    }
    if let Some(d) = decl {
        b.avatar = d.avatar.clone();
        b.idle_after = d.session_idle_after;
        b.agent_instructions = d.instructions.clone();
    }
    b
}
