//! `moments events …`: what operators do with the outbox from a shell (the database named by
//! the config; no server needed).

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use common::db::Db;
use common::events::outbox;

use crate::config::Config;

/// `moments events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// `moments events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as they are delivered (one JSON line each: `delivered_at`, `target`,
    /// `event`), until Ctrl-C. With no target configured, or --written, print them as they
    /// are committed instead.
    Tail(TailArgs),
    /// Pending and dead deliveries by target, and disabled endpoints (JSON).
    Status,
    /// List dead-lettered deliveries (JSON lines).
    Dead {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Try dead-lettered deliveries again: one event's (optionally one target), or --all.
    Replay {
        /// The event id (`evt_…`).
        event: Option<String>,
        /// Only this target (`webhook:NAME` or `bus`).
        #[arg(long)]
        target: Option<String>,
        /// Every dead-lettered delivery.
        #[arg(long, conflicts_with = "event")]
        all: bool,
    },
    /// Send to a webhook endpoint again after it answered 410 Gone.
    Enable {
        /// The endpoint's name in `[[events.webhooks]]`.
        name: String,
    },
    /// Print a new webhook signing secret (`whsec_…`, 32 random bytes).
    Secret,
    /// Print the JSON Schema of the events.
    Schema,
}

/// `moments events tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start from the oldest event kept, not from now.
    #[arg(long)]
    pub from_start: bool,
    /// Only events of this type (`moment.ready`) or family (`moment.*`); repeatable.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Print events as they are committed, delivered or not.
    #[arg(long)]
    pub written: bool,
    /// Stop after this many lines (for scripts).
    #[arg(long)]
    pub count: Option<usize>,
}

/// Runs a `moments events` command.
pub async fn run(config: &Config, args: EventsArgs) -> anyhow::Result<()> {
    match args.command {
        EventsCommand::Secret => {
            println!("{}", common::events::webhook::Secret::generate().encoded());
            return Ok(());
        }
        EventsCommand::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&common::events::schema())?
            );
            return Ok(());
        }
        _ => {}
    }
    config.events.validate().map_err(anyhow::Error::msg)?;
    let db = Db::connect(&config.database_url(), 2).await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        EventsCommand::Tail(t) => tail(config, &db, &t).await?,
        EventsCommand::Status => {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&outbox::stats(&db).await?)?
            )?;
        }
        EventsCommand::Dead { limit } => {
            for d in outbox::dead(&db, limit.clamp(1, 100_000)).await? {
                writeln!(out, "{}", serde_json::to_string(&d)?)?;
            }
        }
        EventsCommand::Replay { event, target, all } => {
            let n = match (event, all) {
                (_, true) => outbox::replay_all(&db).await?,
                (Some(e), false) => outbox::replay(&db, &e, target.as_deref()).await?,
                (None, false) => anyhow::bail!("name an event id, or give --all"),
            };
            writeln!(out, "{n} deliveries will be tried again")?;
        }
        EventsCommand::Enable { name } => {
            if outbox::enable(&db, &name).await? {
                writeln!(
                    out,
                    "endpoint {name} enabled: its waiting deliveries go out now"
                )?;
            } else {
                anyhow::bail!("no disabled endpoint named {name:?}");
            }
        }
        EventsCommand::Secret | EventsCommand::Schema => {}
    }
    db.close().await;
    Ok(())
}

fn wanted(types: &[String], body: &serde_json::Value) -> bool {
    let kind = body["type"].as_str().unwrap_or_default();
    types.is_empty() || types.iter().any(|t| common::events::type_matches(t, kind))
}

async fn tail(config: &Config, db: &Db, t: &TailArgs) -> anyhow::Result<()> {
    let written = t.written || config.events.targets().is_empty();
    if written && !t.written {
        eprintln!("no webhook or bus is configured: printing events as they are committed");
    }
    let mut cursor = if t.from_start {
        0
    } else {
        common::ids::now_ms()
    };
    // rows at the cursor's millisecond that were printed already
    let mut seen: HashSet<String> = HashSet::new();
    let mut printed = 0usize;
    loop {
        let rows: Vec<(i64, String, String)> = if written {
            outbox::written_since(db, cursor - 1, 500)
                .await?
                .into_iter()
                .map(|(at, body)| (at, String::new(), body))
                .collect()
        } else {
            outbox::delivered_since(db, cursor - 1, 500).await?
        };
        let mut fresh = false;
        for (at, target, body) in rows {
            let event: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let key = format!("{}/{target}", event["id"].as_str().unwrap_or_default());
            if at == cursor && seen.contains(&key) {
                continue;
            }
            if at > cursor {
                cursor = at;
                seen.clear();
            }
            seen.insert(key);
            fresh = true;
            if !wanted(&t.types, &event) {
                continue;
            }
            let line = if written {
                serde_json::json!({ "written_at": common::events::rfc3339(at), "event": event })
            } else {
                serde_json::json!({ "delivered_at": common::events::rfc3339(at), "target": target, "event": event })
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            printed += 1;
            if t.count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
        if !fresh {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = common::server::shutdown_signal() => return Ok(()),
            }
        }
    }
}
