//! daarion-bridge: a Matrix application service that mirrors rooms into the DAARION schema and
//! lets AI agents live in Matrix as virtual users.
//!
//! Crate map (appservice layer / bridge core / storage kept apart, as in mautrix bridgev2):
//! - [`config`]: `config.toml` + env overrides, validation.
//! - [`registration`]: the registration file and token generation.
//! - [`appservice`]: the HTTP surface the homeserver calls (Application Service API), auth,
//!   Matrix errors, health and metrics routes.
//! - [`mirror`]: the bridge core: room events → planned batch of DAARION rows; follow-ups
//!   (joins, invite rejections, state reads).
//! - [`db`]: the store over PostgreSQL or SQLite: migrations, seed, batched writes.
//! - [`puppet`]: agents as Matrix users: registration, profile, the durable per-room outbox.
//! - [`api`]: the agent API (`/api/v1`) runtimes use to act as their agent; [`keys`]: its
//!   access keys.
//! - [`sessions`]: the idle sweeper of `agent_sessions`.
//! - [`runs`]: agents that answer: the run scheduler and the runtimes (echo, openai, webhook).
//! - [`homeserver`]: the client-server API client (ruma requests over reqwest).
//! - [`metrics`], [`telemetry`]: Prometheus metrics, tracing set-up.
//! - [`ids`]: typed DAARION row ids.
//! - [`cli`]: the command line.

pub mod api;
pub mod appservice;
pub mod cli;
pub mod config;
pub mod db;
pub mod homeserver;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod mirror;
pub mod puppet;
pub mod registration;
pub mod runs;
pub mod sessions;
pub mod telemetry;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::mpsc};

use crate::{
    api::{ApiState, RateLimiter},
    appservice::AppState,
    config::Config,
    db::Store,
    homeserver::Homeserver,
    metrics::Metrics,
    mirror::Mirror,
    puppet::Puppets,
};

/// A bridge ready to serve: store migrated and seeded, mirror built.
pub struct Bridge {
    pub state: AppState,
    pub api: ApiState,
    follow_ups: Option<mpsc::Receiver<mirror::FollowUp>>,
}

impl Bridge {
    /// Connects the database, applies migrations, upserts config-declared rows.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let store = Store::connect(&config.database.url, config.database.max_connections).await?;
        store.migrate().await?;
        store.seed(&config).await?;
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = mpsc::channel(mirror::followup::QUEUE);
        let mirror = Arc::new(Mirror::new(store, config.clone(), metrics.clone(), tx).await?);
        let hs = Homeserver::new(
            &config.homeserver.url,
            &config.appservice.as_token,
            config.bot_user_id(),
        );
        let hs_token: Arc<str> = config.appservice.hs_token.as_str().into();
        let puppets = Puppets::new(
            hs.clone(),
            mirror.store().clone(),
            config.clone(),
            mirror.clone(),
        );
        let api = ApiState {
            config: config.clone(),
            store: mirror.store().clone(),
            mirror: mirror.clone(),
            puppets,
            limiter: Arc::new(RateLimiter::new(config.api.rate_limit_per_minute)),
        };
        Ok(Self {
            state: AppState {
                config,
                mirror,
                hs,
                metrics,
                hs_token,
            },
            api,
            follow_ups: Some(rx),
        })
    }

    /// The appservice routes, plus the agent API unless it has a listener of its own.
    pub fn router(&self) -> axum::Router {
        let router = appservice::router(self.state.clone());
        if self.state.config.api.listen.is_some() {
            router
        } else {
            api::router(self.api.clone()).merge(router)
        }
    }

    /// Serves on `listener` until `shutdown` resolves; pings the homeserver in the background.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        if let Some(rx) = self.follow_ups.take() {
            tokio::spawn(mirror::followup::run(
                rx,
                state.mirror.clone(),
                self.api.puppets.clone(),
            ));
        }
        self.api.puppets.resume().await?;
        let interrupted = state.mirror.store().fail_interrupted_runs().await?;
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "runs interrupted by the last shutdown marked failed"
            );
        }
        let every = (state.config.bridge.session_idle_after / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let sweeper = tokio::spawn(sessions::run_sweeper(
            state.mirror.store().clone(),
            state.config.clone(),
            state.metrics.clone(),
            every,
        ));
        let (runs_tx, runs_rx) = mpsc::channel(runs::QUEUE);
        state.mirror.set_run_sink(runs_tx);
        let runner = runs::Runner::new(
            state.mirror.store().clone(),
            state.config.clone(),
            state.mirror.clone(),
            self.api.puppets.clone(),
            state.metrics.clone(),
        );
        let runner_task = tokio::spawn(runner.run(runs_rx));
        let profiles = tokio::spawn(puppet::watch_profiles(
            self.api.puppets.clone(),
            state.mirror.clone(),
        ));
        let api_server = match state.config.api.listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr).await?;
                tracing::info!(%addr, "agent API listening");
                let router = api::router(self.api.clone());
                Some(tokio::spawn(
                    async move { axum::serve(listener, router).await },
                ))
            }
            None => None,
        };
        let ping = tokio::spawn(ping_until_reached(
            state.hs.clone(),
            state.config.appservice.id.clone(),
        ));
        tracing::info!(addr = %listener.local_addr()?, "listening for the homeserver");
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        ping.abort();
        sweeper.abort();
        runner_task.abort();
        profiles.abort();
        if let Some(server) = api_server {
            server.abort();
        }
        result?;
        tracing::info!("shut down");
        Ok(())
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

/// Pings the homeserver until it answers: proves the registration and the network path both
/// ways, and makes the homeserver retry any failed transactions at once.
async fn ping_until_reached(hs: Homeserver, appservice_id: String) {
    let mut delay = Duration::from_secs(1);
    loop {
        match hs.ping(&appservice_id).await {
            Ok(rtt) => {
                tracing::info!(
                    rtt_ms = rtt.as_millis() as u64,
                    "homeserver reached the bridge (ping ok)"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_s = delay.as_secs(), "homeserver ping failed; is it up and does it load registration.yaml?");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}
