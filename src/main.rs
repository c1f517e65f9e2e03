//! The `tether` binary: `tether serve` runs a node (see `tether::server`); `tether token`
//! mints a development device token (see `tether::device`).

use std::{io::IsTerminal, process::ExitCode};

use clap::{Parser, Subcommand};
use tether::device::config::{MessagingArgs, MessagingConfig, TokenArgs};
use tether::device::endpoint::{install, MessagingNode};
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
    Serve(Box<ServeCmd>),
    /// Mint a development device token (HS256 with the node's --jwt-secret).
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct ServeCmd {
    #[command(flatten)]
    server: ServeArgs,
    #[command(flatten)]
    messaging: MessagingArgs,
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

/// glibc malloc: shards grow their heaps 16 MiB at a time and give memory back only when 64 MiB
/// at the top are free. With the defaults (128 KiB) a shard's heap grew and shrank with every
/// burst of connections, about one `mprotect` per two handshakes. Untouched pages cost no RSS.
#[cfg(target_env = "gnu")]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(target_env = "gnu"))]
fn tune_malloc() {}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    match cli.command {
        Command::Token(args) => match args.mint() {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tether token: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve(cmd) => {
            let ServeCmd {
                server: args,
                messaging,
            } = *cmd;
            let config = match ServerConfig::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tether serve: {e}");
                    return ExitCode::from(2);
                }
            };
            let messaging = match MessagingConfig::resolve(&messaging) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("tether serve: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.log_format);
            let Some(messaging) = messaging else {
                tracing::warn!(
                    "device endpoint /ws is off: no --jwt-secret (TETHER_JWT_SECRET), \
                     --jwt-public-key or --insecure-no-auth"
                );
                return finish(Server::new(config).run());
            };
            let shards =
                match tether_shards::Placement::discover(config.shards, config.cpus.as_deref()) {
                    Ok(p) => p.shards(),
                    Err(e) => {
                        eprintln!("tether serve: {e}");
                        return ExitCode::FAILURE;
                    }
                };
            let (server, node) = match install(Server::new(config), messaging, shards) {
                Ok(pair) => pair,
                Err(e) => {
                    eprintln!("tether serve: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let (bus_stats, device_stats) = (node.bus.stats(), node.devices.clone());
            let bus_connected = bus_stats.clone();
            let server = server
                .metrics_source(move |out| {
                    MessagingNode::render_prometheus(&bus_stats, &device_stats, out)
                })
                .readiness_check(move || {
                    if bus_connected
                        .connected
                        .load(std::sync::atomic::Ordering::Relaxed)
                        == 1
                    {
                        Ok(())
                    } else {
                        Err("bus disconnected".to_string())
                    }
                });
            let result = server.run();
            node.bus.stop(std::time::Duration::from_secs(1));
            finish(result)
        }
    }
}

fn finish(result: Result<(), tether::server::ServeError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("tether serve: {e}");
            eprintln!("tether serve: {e}");
            ExitCode::FAILURE
        }
    }
}
