//! Command-line interface: parsing and the small command bodies.

use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// Revoke one token (by its jti) or every token of a user issued up to a time, on every
    /// node within a second (writes to the configured database).
    Revoke(RevokeArgs),
    /// Upload a video as a moment (resumable; HTTP/3 over QUIC by default).
    Upload(UploadArgs),
    /// The whole path on embedded defaults: start the service, upload a sample clip (or
    /// --input) over QUIC, transcode, play the ladder with the player harness, run one voice
    /// Q&A round, print where everything is, then serve until Ctrl-C (or --exit).
    Demo(crate::demo::DemoArgs),
    /// The events outbox: tail deliveries, list and replay dead letters, make a webhook
    /// secret, print the events' JSON Schema.
    Events(crate::events::EventsArgs),
    /// Print the OpenAPI 3.1 document of every JSON route (`docs/openapi.json` is this output;
    /// every process also serves it at GET /openapi.json).
    Openapi,
}

/// `moments serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Run only these roles (comma-separated: api, ingest, voice, worker). Default: all.
    #[arg(long, value_name = "ROLES")]
    pub roles: Option<String>,
}

/// `moments worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {}

/// `moments upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The video file.
    pub file: PathBuf,
    /// Use HTTP/1.1 over TCP instead of HTTP/3 over QUIC.
    #[arg(long)]
    pub http: bool,
    /// Server base URL. Default: https://MOMENTS_QUIC_ADDR (or http://MOMENTS_HTTP_ADDR with --http).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token. Default: a development token for --user, signed with the data dir's key.
    #[arg(long, value_name = "JWT")]
    pub token: Option<String>,
    /// User for the default development token.
    #[arg(long, default_value = "dev")]
    pub user: String,
    /// Trust the server certificate with this SHA-256 fingerprint (hex). Default: the data
    /// dir's self-signed certificate.
    #[arg(long, value_name = "HEX")]
    pub cert_sha256: Option<String>,
    /// Trust server certificates issued by the CAs in this PEM file instead.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Chunk size: `auto` (about half a second of sending each, 256 KiB to 16 MiB), or bytes,
    /// or with KiB/MiB.
    #[arg(long, default_value = "auto")]
    pub chunk_size: String,
    /// Send no faster than this: bits per second, or with kbit/Mbit (`10Mbit`). For
    /// benchmarks, and for sharing a link.
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Write the upload's timings (and, with --wait, when the moment was ready) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Wait until the moment is ready and print its master playlist URL.
    #[arg(long)]
    pub wait: bool,
    /// Where resumable upload URLs are remembered. Default: ~/.cache/moments/uploads.json.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Consecutive failed attempts before giving up.
    #[arg(long, default_value_t = 20)]
    pub retries: u32,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

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

/// `moments revoke`.
#[derive(Debug, Args)]
#[group(id = "what", required = true, multiple = false, args = ["jti", "user"])]
pub struct RevokeArgs {
    /// The token id (`jti` claim) to revoke.
    #[arg(long, value_name = "JTI")]
    pub jti: Option<String>,
    /// With --jti: when the token expires anyway (seconds since the epoch); the record is
    /// dropped then. Default: kept.
    #[arg(long, value_name = "UNIX_S", requires = "jti")]
    pub expires: Option<i64>,
    /// Revoke every token of this user issued at or before --before.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// With --user: the cut-off (seconds since the epoch). Default: now.
    #[arg(long, value_name = "UNIX_S", requires = "user")]
    pub before: Option<i64>,
}

/// Installs the tracing subscriber (stderr; text or JSON). `default_filter` applies when
/// neither `RUST_LOG` nor `log.filter` is set.
pub fn init_logging(config: &Config, cli_format: Option<LogFormat>, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| config.log.filter.clone())
        .unwrap_or_else(|| default_filter.to_string());
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
    // the demo tells its own story on stderr; the service's info lines would drown it
    let default_filter = match cli.command {
        Command::Demo(_) | Command::Events(_) | Command::Openapi => "warn",
        _ => "info",
    };
    init_logging(&config, cli.log_format, default_filter);
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
        Command::Revoke(args) => revoke(&config, &args).await,
        Command::Upload(args) => upload(&config, &args).await,
        Command::Demo(args) => crate::demo::run(config, args).await,
        Command::Events(args) => crate::events::run(&config, args).await,
        Command::Openapi => {
            std::io::stdout()
                .write_all(crate::openapi::pretty().as_bytes())
                .context("cannot write the document")?;
            Ok(())
        }
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
        writeln!(
            out,
            "  web page           http://{}/",
            local_addr(running.http_addr)
        )?;
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

async fn revoke(config: &Config, args: &RevokeArgs) -> anyhow::Result<()> {
    use common::auth::revoke::Revocation;
    let r = match (&args.jti, &args.user) {
        (Some(jti), _) => Revocation::Token {
            jti: jti.clone(),
            expires: args.expires,
        },
        (None, Some(user)) => Revocation::User {
            user: user.clone(),
            before: args.before.unwrap_or_else(|| common::ids::now_ms() / 1000),
        },
        (None, None) => anyhow::bail!("give --jti or --user"),
    };
    r.validate().map_err(anyhow::Error::msg)?;
    let db = common::db::Db::connect_config(&config.database_url(), &config.database).await?;
    common::auth::revoke::revoke(&db, &r, "cli").await?;
    // the other nodes see it at their next read (within auth.revocation_poll_ms) even if
    // the notification has not gone out when the pool closes
    db.close().await;
    println!("{}", serde_json::json!({ "revoked": r }));
    Ok(())
}

/// Parses `4MiB`, `512KiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = t.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (t, 1)
    };
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?} (use e.g. 4MiB, 512KiB or bytes)"))?;
    if n == 0 {
        return Err("size must be above zero".into());
    }
    Ok(n * mult)
}

/// Parses `auto` or a size (see [`parse_size`]).
pub fn parse_chunking(s: &str) -> Result<ingest::client::Chunking, String> {
    if s.trim() == "auto" {
        Ok(ingest::client::Chunking::Auto)
    } else {
        parse_size(s).map(ingest::client::Chunking::Fixed)
    }
}

/// Parses a rate in bits per second: `800000`, `800kbit`, `10Mbit` (also `Mbit/s`, `Mbps`).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches("ps");
    let (num, mult) = if let Some(n) = t.strip_suffix("Mbit").or_else(|| t.strip_suffix("Mb")) {
        (n, 1_000_000.0)
    } else if let Some(n) = t.strip_suffix("kbit").or_else(|| t.strip_suffix("kb")) {
        (n, 1_000.0)
    } else {
        (t.strip_suffix("bit").unwrap_or(t), 1.0)
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid rate {s:?} (use e.g. 10Mbit, 800kbit or bits per second)"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err("the rate must be above zero".into());
    }
    Ok((n * mult) as u64)
}

/// What to upload for `file`: the file itself, or — for an MP4 with its index (`moov`) at the
/// end, which cannot be transcoded while it uploads — a fast-start copy, made once in
/// `cache_dir` and named by the original's fingerprint, so a re-run reuses it and resumes its
/// upload.
pub(crate) fn streamable(file: &Path, cache_dir: &Path, quiet: bool) -> anyhow::Result<PathBuf> {
    if !transcode::container::needs_faststart(file) {
        return Ok(file.to_path_buf());
    }
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("cannot create {}", cache_dir.display()))?;
    let fp = ingest::client::fingerprint(file, "faststart")
        .with_context(|| format!("cannot read {}", file.display()))?;
    let copy = cache_dir.join(format!("{fp}.mp4"));
    if !copy.is_file() {
        if !quiet {
            eprintln!(
                "moving the MP4's index (moov) to the front so it can be transcoded while it uploads"
            );
        }
        transcode::container::faststart(file, &copy)
            .with_context(|| format!("cannot make a fast-start copy of {}", file.display()))?;
    }
    Ok(copy)
}

pub(crate) fn local_addr(addr: std::net::SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    std::net::SocketAddr::new(ip, addr.port()).to_string()
}

async fn upload(config: &Config, args: &UploadArgs) -> anyhow::Result<()> {
    use ingest::client::{Options, Protocol};
    let protocol = if args.http {
        Protocol::Http1
    } else {
        Protocol::Http3
    };
    let server = match &args.server {
        Some(s) => s.clone(),
        None if args.http => format!("http://{}", local_addr(config.http.addr)),
        None => format!("https://{}", local_addr(config.quic.addr)),
    };
    let token = match &args.token {
        Some(t) => t.clone(),
        None => {
            let (private, _) = common::auth::ensure_dev_key(&config.data_dir)
                .context("no --token given and the development key is not usable")?;
            common::auth::mint(
                &private,
                &args.user,
                std::time::Duration::from_secs(24 * 3600),
            )?
        }
    };
    let trust = match (&args.cert_sha256, &args.ca_file) {
        (Some(fp), _) => Some(common::server::tls::Trust::Pinned(fp.clone())),
        (None, Some(ca)) => Some(common::server::tls::Trust::CaFile(ca.clone())),
        (None, None) if protocol == Protocol::Http3 => {
            let (cert, key) = common::server::tls::dev_paths(&config.data_dir);
            let id = common::server::tls::load(&cert, &key).with_context(|| {
                format!(
                    "no --cert-sha256 or --ca-file given and no local certificate at {}",
                    cert.display()
                )
            })?;
            Some(common::server::tls::Trust::Pinned(id.fingerprint()))
        }
        (None, None) => None,
    };
    let state_file = args.state.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache/moments/uploads.json")
    });
    let opts = Options {
        server: server.clone(),
        protocol,
        token,
        trust,
        chunking: parse_chunking(&args.chunk_size).map_err(anyhow::Error::msg)?,
        rate: args
            .rate
            .as_deref()
            .map(parse_rate)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        state_file: state_file.clone(),
        max_retries: args.retries,
        progress: !args.quiet,
        congestion: config.quic.congestion,
    };
    let cache = state_file
        .parent()
        .map(|d| d.join("faststart"))
        .unwrap_or_else(|| PathBuf::from("faststart"));
    let file = streamable(&args.file, &cache, args.quiet)?;
    let done = ingest::client::upload(&file, &opts).await?;
    if done.resumed {
        eprintln!(
            "resumed {} at byte {} of {}",
            done.url, done.resumed_from, done.size
        );
    }
    println!("moment {}", done.moment);
    let mut report = serde_json::json!({
        "moment": done.moment,
        "size": done.size,
        "resumed_from": done.resumed_from,
        "started_ms": done.started_ms,
        "last_chunk_ms": done.last_chunk_ms,
        "done_ms": done.done_ms,
        "faststart": file != args.file,
    });
    if args.wait {
        let url = ingest::client::wait_ready(&done.moment, &opts).await?;
        report["ready_ms"] = serde_json::json!(common::ids::now_ms());
        report["master_url"] = serde_json::json!(url);
        println!("master {url}");
    }
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_and_chunking_parse_or_say_why_not() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert!(parse_size("0").is_err() && parse_size("lots").is_err());
        assert_eq!(parse_chunking("auto"), Ok(ingest::client::Chunking::Auto));
        assert_eq!(
            parse_chunking("1MiB"),
            Ok(ingest::client::Chunking::Fixed(1 << 20))
        );
        assert_eq!(parse_rate("10Mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("10Mbit/s"), Ok(10_000_000));
        assert_eq!(parse_rate("2.5Mbps"), Ok(2_500_000));
        assert_eq!(parse_rate("800kbit"), Ok(800_000));
        assert_eq!(parse_rate("64000"), Ok(64_000));
        for bad in ["", "fast", "-1Mbit", "0", "NaNMbit"] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains("rate"), "{bad}: {e}");
        }
    }
}
