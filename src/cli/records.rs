//! `daarion-bridge audit list` and `daarion-bridge export`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tokio::io::AsyncWriteExt;

use crate::{
    db::{
        Store,
        audit::{AuditFilter, AuditRow},
    },
    export::{self, Format, Range},
    model::{AuditOutcome, Ts},
};

/// Audit-log subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, newest first; prints the cursor of the next page last.
    List {
        /// Only this action (e.g. access_key.created, api.denied, invite.refused).
        #[arg(long)]
        action: Option<String>,
        /// Only this actor (a Matrix id, an agent's external id, a key prefix, cli).
        #[arg(long)]
        actor: Option<String>,
        /// Only allowed or denied.
        #[arg(long)]
        outcome: Option<String>,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Created before (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// The cursor a previous page printed: records older than it.
        #[arg(long)]
        before: Option<String>,
        /// Records per page.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// `export` arguments.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The channel: its id, or its Matrix room id (!abc:example.org).
    #[arg(long)]
    pub channel: String,
    /// jsonl or csv.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    /// Messages created at or after (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Messages created before (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Write here instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

fn time(flag: &str, value: Option<&str>) -> anyhow::Result<Option<Ts>> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| Ts(t.with_timezone(&chrono::Utc)))
                .map_err(|e| anyhow::anyhow!("{flag} `{v}` is not an RFC 3339 time: {e}"))
        })
        .transpose()
}

pub(super) async fn audit(store: &Store, command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::List {
        action,
        actor,
        outcome,
        since,
        until,
        before,
        limit,
        json,
    } = command;
    let outcome = outcome
        .map(|o| {
            AuditOutcome::parse(&o)
                .ok_or_else(|| anyhow::anyhow!("--outcome must be allowed or denied"))
        })
        .transpose()?;
    let filter = AuditFilter {
        action,
        actor,
        outcome,
        since: time("--since", since.as_deref())?,
        until: time("--until", until.as_deref())?,
        before,
        limit,
    };
    let rows = store.audit().list(&filter).await?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    for r in &rows {
        if json {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        } else {
            writeln!(out, "{}", line(r))?;
        }
    }
    if rows.len() as i64 == filter.limit.clamp(1, 1000)
        && let Some(last) = rows.last()
    {
        writeln!(out, "next page: --before {}", last.id)?;
    }
    Ok(())
}

fn line(r: &AuditRow) -> String {
    format!(
        "{}  {:<7} {:<6} {:<22} actor={} target={} {}",
        r.created_at
            .0
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        r.outcome.as_str(),
        r.actor_type.as_str(),
        r.action,
        r.actor_id.as_deref().unwrap_or("-"),
        r.target.as_deref().unwrap_or("-"),
        r.details.0,
    )
}

pub(super) async fn export(store: &Store, args: ExportArgs) -> anyhow::Result<()> {
    let channel = export::resolve(store, &args.channel).await?;
    let range = Range {
        since: time("--since", args.since.as_deref())?,
        until: time("--until", args.until.as_deref())?,
    };
    let stats = match &args.output {
        Some(path) => {
            let file = tokio::fs::File::create(path).await?;
            let mut out = tokio::io::BufWriter::new(file);
            let stats = export::write(store, channel, args.format, range, &mut out).await?;
            out.flush().await?;
            stats
        }
        None => {
            let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
            let stats = export::write(store, channel, args.format, range, &mut out).await?;
            out.flush().await?;
            stats
        }
    };
    eprintln!(
        "exported channel {channel}: {} members, {} sessions, {} messages",
        stats.members, stats.sessions, stats.messages
    );
    Ok(())
}
