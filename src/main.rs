//! The `tether` binary: `tether serve` runs a node (see `tether::server`).

use std::{io::IsTerminal, process::ExitCode};

use clap::{Parser, Subcommand};
use tether::server::{config::LogFormat, ServeArgs, Server, ServerConfig};

#[derive(Parser)]
#[command(name = "tether", version, about = "Thread-per-core WebSocket gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: one pinned shard per CPU, WebSocket listeners, admin endpoint.
    Serve(ServeArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match ServerConfig::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tether serve: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.log_format);
            match Server::new(config).run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("tether serve: {e}");
                    eprintln!("tether serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
