//! `moments`: parses the command line and hands over to the library.

#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = moments::cli::Cli::parse();
    match moments::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moments: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
