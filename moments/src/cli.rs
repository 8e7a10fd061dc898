//! Command-line interface: parsing and the small command bodies.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat};

/// Moments media service: resumable QUIC uploads, an HLS ladder per moment, voice Q&A.
#[derive(Debug, Parser)]
#[command(name = "moments", version, about, long_about = None, after_help = env_help())]
pub struct Cli {
    /// Config file (TOML). Default: ./moments.toml when it exists.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format (overrides `log.format` / MOMENTS_LOG_FORMAT).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

fn env_help() -> String {
    format!(
        "Environment (overrides the config file):\n{}",
        common::config::env_help(crate::config::ENV)
    )
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process on embedded defaults (SQLite, ./data, HTTP :8080, QUIC :4433).
    Serve(ServeArgs),
    /// Run only queue workers (transcoding) against the shared database and storage; serves
    /// /healthz, /readyz and /metrics on MOMENTS_HTTP_ADDR.
    Worker(WorkerArgs),
    /// Print a development token signed with the local key under the data dir.
    Token(TokenArgs),
}

/// `moments serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Run only these roles (comma-separated: api, ingest, worker). Default: all.
    #[arg(long, value_name = "ROLES")]
    pub roles: Option<String>,
}

/// `moments worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {}

/// `moments token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id the token is for.
    #[arg(long)]
    pub user: String,
    /// How long it stays valid: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
}

/// Installs the tracing subscriber (stderr; text or JSON).
pub fn init_logging(config: &Config, cli_format: Option<LogFormat>) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| config.log.filter.clone())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cli_format.unwrap_or(config.log.format) {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    init_logging(&config, cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let roles = match &args.roles {
                Some(r) => crate::app::parse_roles(r).map_err(anyhow::Error::msg)?,
                None => crate::app::all_roles(),
            };
            serve(config, roles).await
        }
        Command::Worker(_) => serve(config, [crate::app::Role::Worker].into_iter().collect()).await,
        Command::Token(args) => token(&config, &args),
    }
}

async fn serve(
    config: Config,
    roles: std::collections::BTreeSet<crate::app::Role>,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let running = crate::app::start(config, roles).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "moments is serving (roles: {:?})", running.roles)?;
        writeln!(out, "  HTTP/1.1 + HTTP/2  http://{}", running.http_addr)?;
        if let (Some(addr), Some(fp)) = (running.quic_addr, &running.cert_sha256) {
            writeln!(out, "  HTTP/3 (QUIC/UDP)  https://{addr}")?;
            writeln!(out, "  QUIC certificate SHA-256: {fp}")?;
        }
        writeln!(out, "  data directory     {}", data_dir.display())?;
        writeln!(out, "  try: curl http://{}/readyz", running.http_addr)?;
        out.flush()?;
    }
    let token = running.shutdown_token();
    tokio::spawn(async move {
        common::server::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        token.cancel();
    });
    running.wait().await
}

fn token(config: &Config, args: &TokenArgs) -> anyhow::Result<()> {
    let ttl = common::auth::parse_duration(&args.ttl).map_err(anyhow::Error::msg)?;
    let (private, _) = common::auth::ensure_dev_key(&config.data_dir)
        .context("the development key is needed to mint tokens")?;
    let token = common::auth::mint(&private, &args.user, ttl)?;
    println!("{token}");
    Ok(())
}
