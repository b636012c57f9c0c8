//! The command line: `daarion-bridge [-c PATH] run | generate-registration | migrate |
//! check-config | access-key | respond | audit | export`. Reading records (the audit log,
//! channel exports) lives in `records`.

mod records;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{config::Config, db::Store, registration, telemetry};

/// The parsed command line.
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
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
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
    /// Set when an agent answers in a channel: mentions (default), all, or never.
    Respond {
        /// The agent (external id, e.g. agent:sofia).
        #[arg(long)]
        agent: String,
        /// The channel: its id, or its Matrix room id (!abc:example.org).
        #[arg(long)]
        channel: String,
        /// mentions | all | never
        #[arg(long = "set")]
        respond: String,
    },
    /// Manage access keys of agent runtimes (the agent API).
    AccessKey {
        /// What to do with keys.
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Read the audit log.
    Audit {
        /// What to read.
        #[command(subcommand)]
        command: records::AuditCommand,
    },
    /// Export a channel's mirrored conversation (members, sessions, messages), streamed.
    Export(records::ExportArgs),
}

/// Access-key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; prints it once, alone on the last line of stdout.
    Create {
        /// The agent the key acts as (external id, e.g. agent:sofia).
        #[arg(
            long,
            required_unless_present_any = ["admin", "user", "integration"],
            conflicts_with_all = ["admin", "user", "integration"]
        )]
        agent: Option<String>,
        /// A person's key (Matrix id): reads the channels they are in (default bundle role.member's
        /// read capability, `chat.message.read`).
        #[arg(long, conflicts_with_all = ["admin", "integration"])]
        user: Option<String>,
        /// An integration's key (named by --name); with `--bundle integration.admin` it may use
        /// the admin API.
        #[arg(long, conflicts_with = "admin")]
        integration: bool,
        /// An admin key (capability `bridge.admin`) for the admin API instead of an agent key.
        #[arg(long)]
        admin: bool,
        /// A label for the key.
        #[arg(long, default_value = "runtime")]
        name: String,
        /// A capability to grant (repeatable), e.g. chat.message.send.
        #[arg(long = "cap")]
        caps: Vec<String>,
        /// A bundle of capabilities to grant (repeatable); default agent.runtime when no --cap.
        #[arg(long = "bundle")]
        bundles: Vec<String>,
        /// Days until the key expires (never by default).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List keys (never the keys themselves).
    List {
        /// Only the keys of this agent.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Revoke a key by id or prefix.
    Revoke {
        /// The key's id or its prefix (as `list` shows).
        key: String,
        /// Revoke an admin key.
        #[arg(long)]
        admin: bool,
    },
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
            crate::app::run(listener, config, shutdown_signal()).await
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
        Command::AccessKey { command } => {
            let config = Config::load(&cli.config)?;
            let store = Store::connect(&config.database.url, 1).await?;
            store.migrate().await?;
            let declarations = crate::db::seed::Declarations {
                microdaos: &config.microdaos,
                blueprints: &config.blueprints,
                agents: &config.agents,
                default_microdao: config.bridge.default_microdao.as_deref(),
            };
            store.seed(declarations, &config.namespace()?).await?;
            access_key(&store, command).await
        }
        Command::Respond {
            agent,
            channel,
            respond,
        } => {
            let setting = crate::model::Respond::parse(&respond)
                .ok_or_else(|| anyhow::anyhow!("--set must be mentions, all or never"))?;
            let config = Config::load(&cli.config)?;
            let store = Store::connect(&config.database.url, 1).await?;
            store.migrate().await?;
            let channel_id = match channel.parse::<uuid::Uuid>() {
                Ok(id) => crate::model::ids::ChannelId(id),
                Err(_) => store
                    .rooms()
                    .channel_for_room(&channel)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no channel for room {channel}"))?,
            };
            let agent_id = store
                .agents()
                .by_external_id(&agent)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no agent {agent}"))?;
            store
                .runs()
                .set_respond(
                    agent_id,
                    channel_id,
                    setting,
                    &crate::db::audit::Actor::cli(),
                )
                .await?;
            println!("{agent} answers {respond} in channel {channel_id}");
            Ok(())
        }
        Command::Audit { command } => {
            let config = Config::load(&cli.config)?;
            let store = Store::connect(&config.database.url, 1).await?;
            store.migrate().await?;
            records::audit(&store, command).await
        }
        Command::Export(args) => {
            let config = Config::load(&cli.config)?;
            let store = Store::connect(&config.database.url, 2).await?;
            store.migrate().await?;
            records::export(&store, args).await
        }
        Command::CheckConfig => {
            Config::load(&cli.config)?;
            println!("{}: ok", cli.config.display());
            Ok(())
        }
    }
}

async fn access_key(store: &Store, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create {
            agent,
            user,
            integration,
            admin,
            name,
            mut caps,
            mut bundles,
            expires_in_days,
        } => {
            let expires = expires_in_days.map(|d| {
                crate::model::Ts(chrono::Utc::now() + chrono::Duration::days(i64::from(d)))
            });
            let Some(agent) = agent.filter(|_| !admin) else {
                anyhow::ensure!(
                    caps.is_empty() && bundles.is_empty(),
                    "an admin key holds bridge.admin only: drop --cap and --bundle"
                );
                let (id, key) = crate::keys::create_admin(
                    store,
                    &name,
                    expires,
                    &crate::db::audit::Actor::cli(),
                )
                .await?;
                println!("created admin key {id} (bridge.admin); it is shown only now:");
                println!("{key}");
                return Ok(());
            };
            if user.is_some() || integration {
                let user = user
                    .as_deref()
                    .map(ruma::UserId::parse)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--user is not a Matrix user id: {e}"))?;
                let subject = match &user {
                    Some(u) => crate::db::keys::Subject::User(u),
                    None => crate::db::keys::Subject::Integration,
                };
                if caps.is_empty() && bundles.is_empty() {
                    anyhow::ensure!(
                        user.is_some(),
                        "an integration key needs --cap or --bundle (e.g. --bundle integration.admin)"
                    );
                    caps.push("chat.message.read".into());
                }
                let (id, key) = crate::keys::create_for(
                    store,
                    subject,
                    &name,
                    &caps,
                    &bundles,
                    expires,
                    &crate::db::audit::Actor::cli(),
                )
                .await?;
                println!(
                    "created {} key {id}; it is shown only now:",
                    subject.kind().as_str()
                );
                println!("{key}");
                return Ok(());
            }
            if caps.is_empty() && bundles.is_empty() {
                bundles.push("agent.runtime".into());
            }
            let (id, key) = crate::keys::create(
                store,
                &agent,
                &name,
                &caps,
                &bundles,
                expires,
                &crate::db::audit::Actor::cli(),
            )
            .await?;
            println!("created access key {id} for {agent}; it is shown only now:");
            println!("{key}");
        }
        KeyCommand::List { agent } => {
            let keys = store.keys().list(agent.as_deref()).await?;
            if keys.is_empty() {
                println!("no access keys");
            }
            for k in keys {
                // The timestamps decide (the stored status catches up when the key is next
                // presented).
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else if k.expires_at.is_some_and(|e| e.0 <= chrono::Utc::now()) {
                    "expired"
                } else {
                    k.status.as_str()
                };
                let last = k
                    .last_used_at
                    .map(|t| t.0.to_rfc3339())
                    .unwrap_or_else(|| "never".into());
                println!(
                    "{}  {}…  {} {}  {}  {}  caps={}  last_used={}",
                    k.id,
                    k.prefix,
                    k.subject_kind.as_str(),
                    k.subject.as_deref().unwrap_or("-"),
                    k.name,
                    state,
                    k.capabilities.join(","),
                    last
                );
            }
        }
        KeyCommand::Revoke { key, admin } => {
            let by = crate::db::audit::Actor::cli();
            let n = if admin {
                store.admin_keys().revoke(&key, &by).await?
            } else {
                store.keys().revoke(&key, &by).await?
            };
            anyhow::ensure!(n > 0, "no active key with id or prefix `{key}`");
            println!("revoked {n} key(s)");
        }
    }
    Ok(())
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
