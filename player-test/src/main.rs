//! `player-test URL [--trace FILE] [--json]`: plays an HLS master playlist like an adaptive
//! player and reports startup, rung switches, stalls, bit rate, bytes and every violation.
//! Exits 1 when anything published is wrong, 2 on bad arguments.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use player_test::trace::Trace;

/// Adaptive HLS player harness (client only).
#[derive(Debug, Parser)]
#[command(name = "player-test", version, about)]
struct Cli {
    /// Master playlist URL.
    url: String,
    /// Bandwidth trace: lines `<start second> <kbit/s>`.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Skip decoding segments (playlist checks and ABR only).
    #[arg(long)]
    no_decode: bool,
    /// Wait for real instead of advancing a virtual clock.
    #[arg(long)]
    realtime: bool,
    /// Most media buffered ahead (seconds).
    #[arg(long, default_value_t = 30.0)]
    max_buffer: f64,
    /// Check only the segments played (by default every segment of every rung is fetched and
    /// checked after playback).
    #[arg(long)]
    played_only: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let trace = match &cli.trace {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match Trace::parse(&text) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("player-test: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("player-test: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let opts = player_test::Options {
        trace,
        decode: !cli.no_decode,
        realtime: cli.realtime,
        max_buffer: cli.max_buffer,
        check_all: !cli.played_only,
        ..Default::default()
    };
    let report = player_test::play(&cli.url, &opts).await;
    if cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("player-test: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        println!(
            "played {} segments ({} clock)",
            report.played.len(),
            report.clock
        );
        println!("startup      {} ms", report.startup_ms);
        println!("avg bitrate  {} kbit/s", report.avg_kbps);
        println!("bytes        {}", report.bytes);
        for s in &report.switches {
            println!("switch       t={:.1}s {} -> {}", s.t, s.from, s.to);
        }
        for s in &report.stalls {
            println!("stall        t={:.1}s {} ms", s.t, s.ms);
        }
        if report.stalls.is_empty() {
            println!("stalls       none");
        }
        for v in &report.violations {
            println!("VIOLATION    {v}");
        }
    }
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
