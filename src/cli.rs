//! The command line: `daarion-bridge [-c PATH] run | generate-registration | migrate | check-config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{config::Config, db::Store, registration, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "daarion-bridge",
    version,
    about = "Matrix application service for DAARION: mirrors rooms, hosts AI agents"
)]
pub struct Cli {
    /// Path of the configuration file.
    #[arg(short, long, global = true, default_value = "./config.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge (applies migrations first).
    Run,
    /// Write the registration file for the homeserver; fills placeholder tokens in the config.
    GenerateRegistration {
        /// Where to write the registration.
        #[arg(short, long, default_value = "./registration.yaml")]
        output: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and exit.
    CheckConfig,
}

/// Runs the parsed command.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run => {
            let config = Config::load(&cli.config)?;
            telemetry::init(&config.logging);
            let listener = tokio::net::TcpListener::bind(config.appservice.listen)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot listen on {}: {e}", config.appservice.listen)
                })?;
            crate::run(listener, config, shutdown_signal()).await
        }
        Command::GenerateRegistration { output } => {
            let generated = registration::generate(&cli.config, &output)?;
            if generated.tokens_written {
                println!(
                    "generated new tokens and wrote them to {}",
                    cli.config.display()
                );
            }
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Migrate => {
            let config = Config::load(&cli.config)?;
            telemetry::init(&config.logging);
            let store = Store::connect(&config.database.url, 1).await?;
            store.migrate().await?;
            println!("migrations applied to {}", redact_url(&config.database.url));
            Ok(())
        }
        Command::CheckConfig => {
            Config::load(&cli.config)?;
            println!("{}: ok", cli.config.display());
            Ok(())
        }
    }
}

/// Hides a password in a database URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
