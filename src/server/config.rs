//! Configuration of `tether serve`: flags, `TETHER_*` environment variables, a TOML file.
//!
//! Precedence, highest first: command-line flag, environment variable, `--config FILE`, the
//! built-in default. Every setting, its default and the reason for the default are listed in
//! `docs/operations.md`; keep that table in step with [`ServeArgs`]. Durations are written
//! with their unit (`500ms`, `30s`, `2m`), sizes in bytes.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use tether_shards::ShardCount;

/// `tether serve` flags. Each also reads the environment variable named in its `env`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys, e.g. `drain_time = "30s"`).
    #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address the WebSocket listeners bind (one SO_REUSEPORT socket per shard).
    #[arg(long, env = "TETHER_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin HTTP endpoint (/metrics, /healthz, /readyz).
    #[arg(long, env = "TETHER_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Number of shards (one pinned thread each), or `auto` for one per usable CPU.
    #[arg(long, env = "TETHER_SHARDS", value_name = "N|auto")]
    pub shards: Option<ShardCount>,
    /// CPUs the shards may use, e.g. `0-3,6` (default: online CPUs in the affinity mask).
    #[arg(long, env = "TETHER_CPUS", value_name = "LIST")]
    pub cpus: Option<String>,
    /// Serve the diagnostic echo endpoint `/echo` (off by default).
    #[arg(long, env = "TETHER_ECHO")]
    pub echo: bool,
    /// Most client connections the node admits (0: only the open-files limit applies).
    #[arg(long, env = "TETHER_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Listen backlog per shard socket (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "TETHER_BACKLOG", value_name = "N")]
    pub backlog: Option<u32>,
    /// Time a client has from TCP accept to a complete, accepted upgrade request.
    #[arg(long, env = "TETHER_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Largest HTTP request head of an upgrade request.
    #[arg(long, env = "TETHER_HEAD_BYTES_MAX", value_name = "BYTES")]
    pub head_bytes_max: Option<usize>,
    /// Most header lines in an upgrade request.
    #[arg(long, env = "TETHER_HEADERS_MAX", value_name = "N")]
    pub headers_max: Option<usize>,
    /// Largest payload of one received frame.
    #[arg(long, env = "TETHER_FRAME_BYTES_MAX", value_name = "BYTES")]
    pub frame_bytes_max: Option<usize>,
    /// Largest received message (all fragments together).
    #[arg(long, env = "TETHER_MESSAGE_BYTES_MAX", value_name = "BYTES")]
    pub message_bytes_max: Option<usize>,
    /// Unsent bytes a connection may queue before the slow-consumer policy closes it (1008).
    #[arg(long, env = "TETHER_OUTBOUND_BYTES_MAX", value_name = "BYTES")]
    pub outbound_bytes_max: Option<usize>,
    /// Send a ping after the peer has been silent this long.
    #[arg(long, env = "TETHER_PING_IDLE", value_name = "DURATION", value_parser = parse_duration)]
    pub ping_idle: Option<Duration>,
    /// Close the connection after the peer has been silent this long.
    #[arg(long, env = "TETHER_SILENCE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub silence_timeout: Option<Duration>,
    /// After sending a close frame, wait this long for the peer's close and its FIN.
    #[arg(long, env = "TETHER_CLOSE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub close_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, turn /readyz 503 and keep accepting this long before draining.
    #[arg(long, env = "TETHER_DRAIN_DELAY", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_delay: Option<Duration>,
    /// On SIGTERM/SIGINT, spread the 1001 closes over this time, then exit.
    #[arg(long, env = "TETHER_DRAIN_TIME", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_time: Option<Duration>,
    /// Log format: `text` or `json` (level: TETHER_LOG or RUST_LOG, default info).
    #[arg(long, env = "TETHER_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<LogFormat>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The TOML file: the same settings as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    shards: Option<toml::Value>,
    cpus: Option<String>,
    echo: Option<bool>,
    max_connections: Option<usize>,
    backlog: Option<u32>,
    handshake_timeout: Option<String>,
    head_bytes_max: Option<usize>,
    headers_max: Option<usize>,
    frame_bytes_max: Option<usize>,
    message_bytes_max: Option<usize>,
    outbound_bytes_max: Option<usize>,
    ping_idle: Option<String>,
    silence_timeout: Option<String>,
    close_timeout: Option<String>,
    drain_delay: Option<String>,
    drain_time: Option<String>,
    log_format: Option<LogFormat>,
}

/// The resolved settings of a node.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub shards: ShardCount,
    pub cpus: Option<Vec<usize>>,
    pub echo: bool,
    /// 0: no limit beyond the open-files capacity.
    pub max_connections: usize,
    pub backlog: u32,
    pub handshake_timeout: Duration,
    pub head_bytes_max: usize,
    pub headers_max: usize,
    pub frame_bytes_max: usize,
    pub message_bytes_max: usize,
    pub outbound_bytes_max: usize,
    pub ping_idle: Duration,
    pub silence_timeout: Duration,
    pub close_timeout: Duration,
    /// From the first SIGTERM/SIGINT to the start of the drain: `/readyz` is 503, the
    /// listeners still accept. 0 by default: only a health-checking load balancer needs it,
    /// and the right value is that balancer's time to take the node out (docs/operations.md).
    pub drain_delay: Duration,
    pub drain_time: Duration,
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            admin: "127.0.0.1:9090".parse().expect("literal address"),
            shards: ShardCount::Auto,
            cpus: None,
            echo: false,
            max_connections: 0,
            backlog: 65_535,
            handshake_timeout: Duration::from_secs(10),
            head_bytes_max: 8192,
            headers_max: 64,
            frame_bytes_max: 1 << 20,
            message_bytes_max: 1 << 20,
            outbound_bytes_max: 1 << 20,
            ping_idle: Duration::from_secs(30),
            silence_timeout: Duration::from_secs(75),
            close_timeout: Duration::from_secs(5),
            drain_delay: Duration::ZERO,
            drain_time: Duration::from_secs(30),
            log_format: LogFormat::Text,
        }
    }
}

/// A configuration that cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 30s, 2m"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("invalid duration unit {other:?} in {text:?}")),
    };
    Ok(d)
}

impl ServerConfig {
    /// Merges flags/env (in `args`) over the file named by `--config` over the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<ServerConfig, ConfigError> {
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
        };
        let d = ServerConfig::default();
        let dur = |flag: Option<Duration>,
                   file: &Option<String>,
                   setting: &'static str,
                   default: Duration|
         -> Result<Duration, ConfigError> {
            match (flag, file) {
                (Some(v), _) => Ok(v),
                (None, Some(s)) => parse_duration(s).map_err(|m| invalid(setting, m)),
                (None, None) => Ok(default),
            }
        };
        let file_shards = match &file.shards {
            None => None,
            Some(toml::Value::Integer(n)) => Some(
                n.to_string()
                    .parse::<ShardCount>()
                    .map_err(|m| invalid("shards", m))?,
            ),
            Some(toml::Value::String(s)) => {
                Some(s.parse::<ShardCount>().map_err(|m| invalid("shards", m))?)
            }
            Some(other) => {
                return Err(invalid(
                    "shards",
                    format!("expected a number or \"auto\", got {other}"),
                ))
            }
        };
        let cpus_text = args.cpus.clone().or(file.cpus.clone());
        let cpus = match cpus_text {
            None => None,
            Some(t) => Some(
                tether_shards::cpus::parse_cpu_list(&t)
                    .map_err(|e| invalid("cpus", e.to_string()))?,
            ),
        };
        let cfg = ServerConfig {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            admin: args.admin.or(file.admin).unwrap_or(d.admin),
            shards: args.shards.or(file_shards).unwrap_or(d.shards),
            cpus,
            echo: args.echo || file.echo.unwrap_or(d.echo),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            backlog: args.backlog.or(file.backlog).unwrap_or(d.backlog),
            handshake_timeout: dur(
                args.handshake_timeout,
                &file.handshake_timeout,
                "handshake_timeout",
                d.handshake_timeout,
            )?,
            head_bytes_max: args
                .head_bytes_max
                .or(file.head_bytes_max)
                .unwrap_or(d.head_bytes_max),
            headers_max: args
                .headers_max
                .or(file.headers_max)
                .unwrap_or(d.headers_max),
            frame_bytes_max: args
                .frame_bytes_max
                .or(file.frame_bytes_max)
                .unwrap_or(d.frame_bytes_max),
            message_bytes_max: args
                .message_bytes_max
                .or(file.message_bytes_max)
                .unwrap_or(d.message_bytes_max),
            outbound_bytes_max: args
                .outbound_bytes_max
                .or(file.outbound_bytes_max)
                .unwrap_or(d.outbound_bytes_max),
            ping_idle: dur(args.ping_idle, &file.ping_idle, "ping_idle", d.ping_idle)?,
            silence_timeout: dur(
                args.silence_timeout,
                &file.silence_timeout,
                "silence_timeout",
                d.silence_timeout,
            )?,
            close_timeout: dur(
                args.close_timeout,
                &file.close_timeout,
                "close_timeout",
                d.close_timeout,
            )?,
            drain_delay: dur(
                args.drain_delay,
                &file.drain_delay,
                "drain_delay",
                d.drain_delay,
            )?,
            drain_time: dur(
                args.drain_time,
                &file.drain_time,
                "drain_time",
                d.drain_time,
            )?,
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backlog == 0 {
            return Err(invalid("backlog", "must be at least 1"));
        }
        if self.head_bytes_max < 256 {
            return Err(invalid("head_bytes_max", "must be at least 256 bytes"));
        }
        if self.headers_max == 0 {
            return Err(invalid("headers_max", "must be at least 1"));
        }
        if self.frame_bytes_max < 125 || self.message_bytes_max < 125 {
            return Err(invalid(
                "frame_bytes_max",
                "frame_bytes_max and message_bytes_max must be at least 125 bytes",
            ));
        }
        if self.outbound_bytes_max < 1024 {
            return Err(invalid("outbound_bytes_max", "must be at least 1024 bytes"));
        }
        for (name, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("ping_idle", self.ping_idle),
            ("close_timeout", self.close_timeout),
        ] {
            if d < Duration::from_millis(10) {
                return Err(invalid(name, "must be at least 10ms"));
            }
        }
        if self.silence_timeout <= self.ping_idle {
            return Err(invalid(
                "silence_timeout",
                format!(
                    "{:?} must be longer than ping_idle {:?} so that a pinged peer can answer",
                    self.silence_timeout, self.ping_idle
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn flags_over_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("tether-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "shards = 1\ndrain_time = \"3s\"\nbacklog = 10\necho = true\ncpus = \"0\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            backlog: Some(20),
            ..ServeArgs::default()
        };
        let c = ServerConfig::resolve(&args).unwrap();
        assert_eq!(c.backlog, 20);
        assert_eq!(c.drain_time, Duration::from_secs(3));
        assert_eq!(c.shards, ShardCount::Fixed(1));
        assert_eq!(c.cpus, Some(vec![0]));
        assert!(c.echo);
        assert_eq!(c.head_bytes_max, 8192);

        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let err = ServerConfig::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("no_such_setting"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn silence_must_exceed_ping_idle() {
        let c = ServerConfig {
            ping_idle: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("silence_timeout"));
    }
}
