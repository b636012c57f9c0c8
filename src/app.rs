//! Building and running the bridge: the store migrated and seeded, the agent registry, the
//! mirror, the puppets and the events publisher wired together; then the HTTP listener(s) and the supervised
//! background tasks, until shutdown (as in mini-redis: `run(listener, shutdown)`, every task
//! drained before returning).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, ApiState},
    appservice::{self, AppState},
    bridge::{
        agents::AgentRegistry,
        commands::{Commands, Speakers},
        control::Control,
        followup::FollowUps,
        mirror::{Mirror, Wakers},
        planner::MirrorSettings,
        reconcile,
        upkeep::{Retention, Upkeep},
    },
    config::Config,
    crypto::Crypto,
    db::{Store, seed::Declarations},
    events::publisher::{Publisher, PublisherStatus},
    leadership::{Held, Leadership},
    matrix::Homeserver,
    metrics::Metrics,
    puppet::{
        BotIntent, Puppets,
        outbox::{Delivery, SentSink},
    },
    ratelimit::RateLimiter,
    runs::{RunSettings, Runner},
    server,
    supervise::{Health, Supervisor},
};

/// A bridge ready to serve: store migrated and seeded, components built.
pub struct Bridge {
    /// The configuration.
    pub config: Config,
    /// The store.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The agents.
    pub registry: Arc<AgentRegistry>,
    /// The mirror.
    pub mirror: Arc<Mirror>,
    /// The puppets.
    pub puppets: Arc<Puppets>,
    hs: Homeserver,
    wakers: Wakers,
    /// The runs under way, for the `stop` command.
    stops: Arc<crate::bridge::stops::RunStops>,
    health: Arc<Health>,
    events: Arc<PublisherStatus>,
    /// The agents' crypto engines (`None`: encryption off).
    pub crypto: Option<Arc<Crypto>>,
    /// Operator operations (admin API and bot commands).
    control: Arc<Control>,
    /// Acting as the bot.
    bot: BotIntent,
}

/// The mirror records what puppets sent.
impl SentSink for Mirror {
    fn sent<'a>(
        &'a self,
        agent: &'a crate::model::Agent,
        room: &'a ruma::RoomId,
        item: &'a crate::db::outbox::OutboxItem,
        event_id: &'a ruma::EventId,
    ) -> futures_core::future::BoxFuture<'a, Result<(), crate::db::StoreError>> {
        Box::pin(self.mirror_sent(agent, room, item, event_id))
    }
}

impl Bridge {
    /// Connects the database, applies migrations, upserts config-declared rows, builds the
    /// components.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let namespace = config.namespace()?;
        let store = Store::connect(&config.database.url, config.database.max_connections)
            .await?
            .with_events(config.events.enabled);
        store.migrate().await?;
        let declarations = Declarations {
            microdaos: &config.microdaos,
            blueprints: &config.blueprints,
            agents: &config.agents,
            default_microdao: config.bridge.default_microdao.as_deref(),
        };
        store.seed(declarations, &namespace).await?;
        let metrics = Arc::new(Metrics::new());
        let registry =
            AgentRegistry::load(store.clone(), namespace.clone(), secrets(&config)).await?;
        let default_microdao = match &config.bridge.default_microdao {
            Some(external) => store.rooms().microdao_by_external_id(external).await?,
            None => None,
        };
        let settings = MirrorSettings {
            preview_chars: config.bridge.preview_chars,
            answer_edits: config.bridge.answer_edits,
            command_prefix: config.bridge.command_prefix.clone(),
            default_microdao,
        };
        let wakers = Wakers::default();
        let mirror = Arc::new(Mirror::new(
            store.clone(),
            registry.clone(),
            metrics.clone(),
            settings,
            wakers.clone(),
        ));
        let hs = Homeserver::new(
            &config.homeserver.url,
            &config.appservice.as_token,
            namespace.bot().to_owned(),
        )?;
        let crypto = match config.encryption.active_key() {
            Some(key) => {
                let crypto = Crypto::open(
                    store.crypto(),
                    hs.clone(),
                    key,
                    config.encryption.store_previews,
                )
                .await?;
                Some(crypto)
            }
            None => {
                tracing::warn!(
                    "end-to-end encryption is off (encryption.enabled = false or no encryption.pickle_key): agents cannot read or answer in encrypted rooms"
                );
                None
            }
        };
        let puppets = Puppets::new(
            hs.clone(),
            store.clone(),
            registry.clone(),
            metrics.clone(),
            wakers.outbox.clone(),
            crypto.clone(),
        );
        let bot = BotIntent::new(hs.clone(), crypto.clone());
        let control = Control::new(
            store.clone(),
            bot.clone(),
            registry.clone(),
            puppets.clone(),
            config.appservice.id.clone(),
            mirror.clone(),
            config.leader.replica_name(),
        );
        Ok(Self {
            bot,
            control,
            config,
            store,
            metrics,
            registry,
            mirror,
            puppets,
            hs,
            wakers,
            stops: Arc::default(),
            health: Arc::default(),
            events: Arc::default(),
            crypto,
        })
    }

    /// State of the homeserver-facing routes.
    pub fn app_state(&self) -> AppState {
        AppState {
            mirror: self.mirror.clone(),
            store: self.store.clone(),
            registry: self.registry.clone(),
            puppets: self.puppets.clone(),
            metrics: self.metrics.clone(),
            hs_token: self.config.appservice.hs_token.as_str().into(),
            max_body_bytes: self.config.appservice.max_body_bytes,
            health: self.health.clone(),
            events: self.events.clone(),
            crypto: self.crypto.clone(),
        }
    }

    /// State of the agent API.
    pub fn api_state(&self) -> ApiState {
        ApiState {
            store: self.store.clone(),
            registry: self.registry.clone(),
            puppets: self.puppets.clone(),
            limiter: Arc::new(RateLimiter::new(self.config.api.rate_limit_per_minute)),
            auth_failures: Arc::new(RateLimiter::new(self.config.api.auth_failures_per_minute)),
            send_wait: self.config.api.send_wait,
            max_body_bytes: self.config.api.max_body_bytes,
            max_upload_bytes: self.config.api.max_upload_bytes,
            links: crate::links::Links::new(&self.config.appservice.as_token),
            media: self.config.media.clone(),
            metrics: self.metrics.clone(),
            control: self.control.clone(),
            tools: Arc::new(self.config.tools.clone()),
            wakers: self.wakers.clone(),
        }
    }

    /// The appservice routes, plus the agent API unless it has a listener of its own.
    pub fn router(&self) -> axum::Router {
        let router = appservice::router(self.app_state());
        if self.config.api.listen.is_some() {
            router
        } else {
            api::routes(self.api_state()).merge(router)
        }
    }

    fn run_settings(&self) -> RunSettings {
        let b = &self.config.bridge;
        RunSettings {
            debounce: b.debounce,
            max_message_age: b.max_message_age,
            max_agent_chain: b.max_agent_chain,
            max_concurrent_runs: b.max_concurrent_runs,
            runs_per_minute: b.runs_per_minute,
            stream_edit_interval: b.stream_edit_interval,
            max_stream_edits: b.max_stream_edits,
            send_wait: self.config.api.send_wait,
            run_attempts: b.run_attempts,
            media: self.config.media.clone(),
            links: crate::links::Links::new(&self.config.appservice.as_token),
            keep_encrypted_text: self.config.encryption.store_previews,
            tools: self.config.tools.clone(),
            events: self.config.events.clone(),
        }
    }

    /// Starts the tasks every replica runs: keeping the agent registry current (the agent and
    /// admin APIs read it on standbys too).
    fn spawn_shared_tasks(&self, supervisor: &mut Supervisor) {
        let (registry, store) = (self.registry.clone(), self.store.clone());
        supervisor.spawn("agent-notifications", move |cancel| {
            reconcile::listen(store.clone(), registry.clone(), cancel)
        });
    }

    /// Starts the leader's supervised background tasks: everything that needs exactly one
    /// writer (docs/deployment.md).
    fn spawn_tasks(&self, supervisor: &mut Supervisor) -> anyhow::Result<()> {
        let commands = Commands::new(
            self.control.clone(),
            self.store.clone(),
            Speakers {
                bot: self.bot.clone(),
                puppets: self.puppets.clone(),
            },
            self.registry.clone(),
            self.config.bridge.command_prefix.clone(),
            self.config.bridge.admins.clone(),
            self.stops.clone(),
        );
        let followups = FollowUps::new(
            self.mirror.clone(),
            self.store.clone(),
            self.bot.clone(),
            self.registry.clone(),
            self.puppets.clone(),
            commands,
            self.metrics.clone(),
            self.wakers.jobs.clone(),
        );
        supervisor.spawn("follow-ups", move |cancel| followups.clone().run(cancel));
        let delivery = Delivery::new(
            self.puppets.clone(),
            self.mirror.clone(),
            self.wakers.outbox.clone(),
        );
        supervisor.spawn("outbox", move |cancel| delivery.clone().run(cancel));
        let runner = Runner::new(
            self.store.clone(),
            self.registry.clone(),
            self.puppets.clone(),
            self.metrics.clone(),
            self.run_settings(),
            self.wakers.runs.clone(),
            self.stops.clone(),
        )?;
        supervisor.spawn("runs", move |cancel| runner.clone().run(cancel));
        let upkeep = Upkeep::new(
            self.store.clone(),
            self.registry.clone(),
            self.metrics.clone(),
            self.config.bridge.session_idle_after,
            Retention::from_config(&self.config),
        );
        let every = (self.config.bridge.session_idle_after / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        supervisor.spawn("upkeep", move |cancel| upkeep.clone().run(cancel, every));
        let (registry, puppets, store) = (
            self.registry.clone(),
            self.puppets.clone(),
            self.store.clone(),
        );
        // SQLite has no notifications: the periodic reconcile is how changes arrive, so it runs
        // often enough for a change to show within a second (one indexed read of the agents).
        let every = if self.store.is_postgres() {
            self.config.bridge.reconcile_interval
        } else {
            self.config
                .bridge
                .reconcile_interval
                .min(Duration::from_millis(500))
        };
        supervisor.spawn("agents", move |cancel| {
            reconcile::run(
                registry.clone(),
                puppets.clone(),
                store.clone(),
                every,
                cancel,
            )
        });
        let publisher = Publisher::new(
            self.store.clone(),
            self.config.events.clone(),
            self.metrics.clone(),
            self.events.clone(),
        );
        supervisor.spawn("events", move |cancel| publisher.clone().run(cancel));
        let (store, wakers) = (self.store.clone(), self.wakers.clone());
        supervisor.spawn("wakes", move |cancel| {
            crate::bridge::wakes::listen(store.clone(), wakers.clone(), cancel)
        });
        if let Some(crypto) = self.crypto.clone() {
            let (mirror, store, metrics) = (
                self.mirror.clone(),
                self.store.clone(),
                self.metrics.clone(),
            );
            let bounds = crate::bridge::pending::Bounds {
                max_age: self.config.encryption.pending_max_age,
                max_count: self.config.encryption.pending_max,
            };
            let every =
                (bounds.max_age / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            supervisor.spawn("crypto-pending", move |cancel| {
                crate::bridge::pending::run(
                    crypto.clone(),
                    mirror.clone(),
                    store.clone(),
                    metrics.clone(),
                    bounds,
                    every,
                    cancel,
                )
            });
        }
        let (hs, id) = (self.hs.clone(), self.config.appservice.id.clone());
        let devices = self
            .crypto
            .clone()
            .map(|crypto| (crypto, self.registry.clone()));
        supervisor.spawn("ping", move |cancel| {
            crate::bridge::ping::until_reached(hs.clone(), id.clone(), devices.clone(), cancel)
        });
        Ok(())
    }

    /// Serves on `listener` until `shutdown` resolves (or a background task keeps failing),
    /// then drains: connections finish within `server.shutdown_grace`, background tasks stop.
    /// Meanwhile it leads or stands by (`leadership`): the leader's tasks run only while this
    /// replica holds the lease.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let leadership = Leadership::start(&self.store, &self.config.leader, self.metrics.clone())?;
        let cancel = CancellationToken::new();
        let mut supervisor =
            Supervisor::new(cancel.clone(), self.metrics.clone(), self.health.clone());
        self.spawn_shared_tasks(&mut supervisor);
        let broken = supervisor.broken();
        // The first try before serving: a lone bridge (or the first replica) takes
        // transactions from its first request (its machines were loaded by `build` a moment
        // before, and the lease was free: no other leader was writing).
        let first = leadership.try_lead().await;
        if let Some(epoch) = first {
            self.store.fence().serve(epoch);
        }
        let stop_serving = CancellationToken::new();
        let limits = self.config.server.clone();
        let mut servers = Vec::new();
        if let Some(addr) = self.config.api.listen {
            let api_listener = TcpListener::bind(addr).await?;
            tracing::info!(%addr, "agent API listening");
            servers.push(tokio::spawn(server::serve(
                api_listener,
                api::router(self.api_state()),
                limits.clone(),
                self.metrics.clone(),
                stop_serving.clone(),
            )));
        }
        let addr: SocketAddr = listener.local_addr()?;
        tracing::info!(%addr, replica = leadership.replica(), "listening for the homeserver");
        servers.push(tokio::spawn(server::serve(
            listener,
            self.router(),
            limits.clone(),
            self.metrics.clone(),
            stop_serving.clone(),
        )));
        let stop = CancellationToken::new();
        let (stopping, serving) = (stop.clone(), stop_serving.clone());
        let waiter = tokio::spawn(async move {
            shutdown.await;
            // Connections and the leader's work drain side by side, each within the grace.
            stopping.cancel();
            serving.cancel();
        });
        let failure = self.lead(&leadership, first, &cancel, &stop, &broken).await;
        waiter.abort();
        stop_serving.cancel();
        for server in servers {
            let _ = server.await;
        }
        supervisor.shutdown(limits.shutdown_grace).await;
        match failure {
            Some(reason) => Err(anyhow::anyhow!(reason)),
            None => {
                tracing::info!("shut down");
                Ok(())
            }
        }
    }

    /// Stands by and leads, in turn, until `stop` or `broken`: `Some(reason)` when the process
    /// must exit with an error.
    async fn lead(
        &self,
        leadership: &Leadership,
        mut next: Option<i64>,
        cancel: &CancellationToken,
        stop: &CancellationToken,
        broken: &CancellationToken,
    ) -> Option<&'static str> {
        loop {
            // The first term of a process that led from its first try needs no reload: it
            // has opened no machine yet (a standby may have, for the admin API's joins).
            let (epoch, stood_by) = match next.take() {
                Some(epoch) => (epoch, false),
                None => {
                    // A standby's accepted work wakes the leader's workers (`bridge::wakes`).
                    let mut standby = Supervisor::new(
                        cancel.child_token(),
                        self.metrics.clone(),
                        self.health.clone(),
                    );
                    let (store, wakers) = (self.store.clone(), self.wakers.clone());
                    standby.spawn("wakes", move |cancel| {
                        crate::bridge::wakes::forward(store.clone(), wakers.clone(), cancel)
                    });
                    let waited = tokio::select! {
                        epoch = leadership.wait(stop) => epoch,
                        _ = broken.cancelled() => None,
                    };
                    standby.shutdown(self.config.server.shutdown_grace).await;
                    if broken.is_cancelled() {
                        return Some("a background task keeps failing");
                    }
                    match waited {
                        Some(epoch) => (epoch, true),
                        None => return None,
                    }
                }
            };
            // The crypto state is read afresh from the database before any transaction is
            // taken: a standby's machines may be older than what the last leader stored, and a
            // transaction's encrypted events and room keys need every agent's machine.
            if let (Some(crypto), true) = (&self.crypto, stood_by) {
                crypto.forget_machines().await;
                if let Err(error) = crypto.load().await {
                    tracing::warn!(%error, "cannot load the agents' crypto machines; they open on first use");
                }
            }
            let mut work = Supervisor::new(
                cancel.child_token(),
                self.metrics.clone(),
                self.health.clone(),
            );
            if let Err(error) = self.spawn_tasks(&mut work) {
                tracing::error!(%error, "cannot start the leader's work");
                work.shutdown(self.config.server.shutdown_grace).await;
                leadership.release(epoch).await;
                return Some("the leader's work cannot start");
            }
            // From now on the homeserver's transactions are taken (`Fence::leads`).
            self.store.fence().serve(epoch);
            let work_broken = work.broken();
            let held = tokio::select! {
                held = leadership.hold(epoch, stop, &work_broken) => held,
                _ = broken.cancelled() => Held::Broken,
            };
            // Nothing more is committed under this epoch once it is lost (the fence); the
            // leader's tasks stop before this replica lets connections through as a standby.
            // A lost lease gets a short grace: its tasks can commit nothing (the pool refuses
            // them) and the new leader resumes their durable work, so waiting the full grace
            // would only hold their retries and misleading errors (a probe's timeout) open.
            let grace = match held {
                Held::Lost => self.config.leader.renew_interval,
                Held::Shutdown | Held::Broken => self.config.server.shutdown_grace,
            };
            work.shutdown(grace.min(self.config.server.shutdown_grace))
                .await;
            if let Some(crypto) = &self.crypto {
                crypto.forget_machines().await;
            }
            match held {
                Held::Lost => leadership.stand_by(),
                Held::Shutdown => {
                    leadership.release(epoch).await;
                    return None;
                }
                Held::Broken => {
                    leadership.release(epoch).await;
                    return Some("a background task keeps failing");
                }
            }
        }
    }
}

/// Builds the bridge and serves on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Bridge::build(config).await?.run(listener, shutdown).await
}

/// The named secrets runtime settings may refer to: `[secrets]`, plus the inline webhook
/// secrets of config blueprints (stored in the database as a `secret_ref` to them).
fn secrets(config: &Config) -> std::collections::BTreeMap<String, String> {
    let mut out = config.secrets.clone();
    for b in &config.blueprints {
        if let Some(secret) = b.webhook.as_ref().and_then(|w| w.secret.clone()) {
            out.insert(crate::db::seed::inline_secret_ref(&b.code), secret);
        }
    }
    out
}
