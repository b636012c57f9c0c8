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
//! - [`homeserver`]: the client-server API client (ruma requests over reqwest).
//! - [`metrics`], [`telemetry`]: Prometheus metrics, tracing set-up.
//! - [`ids`]: typed DAARION row ids.
//! - [`cli`]: the command line.

pub mod appservice;
pub mod cli;
pub mod config;
pub mod db;
pub mod homeserver;
pub mod ids;
pub mod metrics;
pub mod mirror;
pub mod registration;
pub mod telemetry;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::mpsc};

use crate::{
    appservice::AppState, config::Config, db::Store, homeserver::Homeserver, metrics::Metrics,
    mirror::Mirror,
};

/// A bridge ready to serve: store migrated and seeded, mirror built.
pub struct Bridge {
    pub state: AppState,
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
        Ok(Self {
            state: AppState {
                config,
                mirror,
                hs,
                metrics,
                hs_token,
            },
            follow_ups: Some(rx),
        })
    }

    pub fn router(&self) -> axum::Router {
        appservice::router(self.state.clone())
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
                state.hs.clone(),
            ));
        }
        let ping = tokio::spawn(ping_until_reached(
            state.hs.clone(),
            state.config.appservice.id.clone(),
        ));
        tracing::info!(addr = %listener.local_addr()?, "listening for the homeserver");
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        ping.abort();
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
