//! The `tether` binary: `tether serve` runs a node (see `tether::server`); `tether token`
//! mints a development device token (see `tether::device`); `tether config check|example`
//! shows the configuration (see `tether::config`).

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tether::config::{self, ConfigError, LogFormat, ServeFlags, Settings};
use tether::device::config::{MessagingConfig, TokenArgs};
use tether::device::endpoint::install;
use tether::server::{Server, ServerConfig};

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
    /// Check a configuration file or print an example one.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(clap::Args)]
struct ServeCmd {
    /// TOML file with any of the settings (`tether config example` prints one).
    #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServeFlags,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration of FILE with the environment's TETHER_* variables and
    /// any flags given here (secrets redacted); exit 2 on any error.
    Check {
        /// The TOML file.
        file: PathBuf,
        #[command(flatten)]
        settings: Box<ServeFlags>,
    },
    /// Print a complete, commented configuration file with every setting at its default.
    Example,
}

/// Both halves of a node's configuration, checked.
struct NodeConfig {
    server: ServerConfig,
    messaging: Option<MessagingConfig>,
}

fn node_config(settings: &Settings) -> Result<NodeConfig, ConfigError> {
    Ok(NodeConfig {
        server: ServerConfig::resolve(settings)?,
        messaging: MessagingConfig::resolve(settings)?,
    })
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
        Command::Config(ConfigCmd::Example) => {
            print!("{}", config::example());
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCmd::Check { file, settings }) => {
            match config::resolve(&settings, Some(&file))
                .and_then(|r| node_config(&r.settings).map(|_| r))
            {
                Ok(resolved) => {
                    print!("{}", resolved.render());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tether config check: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve(cmd) => {
            let NodeConfig {
                server: config,
                messaging,
            } = match config::resolve(&cmd.settings, cmd.config.as_deref())
                .and_then(|r| node_config(&r.settings))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tether serve: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.log_format);
            let server = match Server::new(config) {
                Ok(s) => s,
                Err(e) => return finish(Err(e)),
            };
            let server = match messaging {
                Some(messaging) => match install(server, messaging) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("tether serve: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => {
                    tracing::warn!(
                        "device endpoint /ws is off: no --jwt-secret (TETHER_JWT_SECRET), \
                         --jwt-public-key or --insecure-no-auth"
                    );
                    server
                }
            };
            finish(server.run())
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
