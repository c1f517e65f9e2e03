//! The one configuration model of `tether serve`: every setting is a flag, an environment
//! variable and a TOML key, resolved with one precedence (flag > environment > file > default)
//! and one grammar per value type ([`value`]; durations `250ms`, `2s`, `5m`, `1h`).
//!
//! This module owns the list of settings ([`SETTINGS`], written once in the `settings!` table
//! below), their defaults, the command-line flags built from it ([`ServeFlags`]), the reading of
//! the TOML file, and the two `tether config` commands: [`Resolved::render`] (the effective
//! configuration, secrets redacted) and [`example`] (a complete commented TOML file). It knows
//! nothing of what a setting does: `server::config` and `device::config` turn the resolved
//! [`Settings`] into the checked `ServerConfig` and `MessagingConfig`.
//!
//! **Adding a setting is one row** in the table: its doc comment (first line: what it does;
//! then the reason for the default), `name: Type = default, env "TETHER_NAME", value "HINT"`,
//! and `example "literal"` for a setting without a default. The flag is `--name` with `_`
//! written `-`, the TOML key is `name`. Then read `settings.name` where it is used and add the
//! row to the table in `docs/operations.md` (a test checks both the example and the docs).

pub mod value;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::parser::ValueSource;
use tether_shards::ShardCount;

pub use value::{
    format_duration, parse_duration, CpuList, FlagKind, JwtAlg, LogFormat, ProxyProtocol, Secret,
    SettingValue,
};

/// The description of one setting, for flags, the example file and `config check`.
#[derive(Debug)]
pub struct Spec {
    /// TOML key and field name, snake_case; the flag is the same in kebab-case.
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Placeholder of the value in help text (`DURATION`, `ADDR`, ...).
    pub value_name: &'static str,
    /// Doc lines: what it does, then the default's reason.
    pub doc: &'static [&'static str],
    /// How the flag is written.
    pub flag_kind: FlagKind,
    /// A TOML value shown (commented out) in the example for a setting without a default.
    pub example: Option<&'static str>,
}

impl Spec {
    /// The command-line flag, without the leading `--`.
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }

    fn arg(&self) -> clap::Arg {
        let lines: Vec<&str> = self.doc.iter().map(|l| l.trim()).collect();
        let mut arg = clap::Arg::new(self.key)
            .long(self.flag())
            .env(self.env)
            .value_name(self.value_name)
            .help(lines.first().copied().unwrap_or_default().to_owned())
            .long_help(lines.join("\n"));
        arg = match self.flag_kind {
            FlagKind::Value => arg.action(clap::ArgAction::Set),
            FlagKind::Secret => arg.action(clap::ArgAction::Set).hide_env_values(true),
            FlagKind::List => arg.action(clap::ArgAction::Append),
            FlagKind::Switch => arg
                .action(clap::ArgAction::Set)
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true"),
        };
        arg
    }
}

macro_rules! settings {
    (@example $example:literal) => { Some($example) };
    (@example) => { None };
    ($(
        $(#[doc = $doc:literal])*
        $name:ident : $ty:ty = $default:expr, env $env:literal, value $hint:literal
        $(, example $example:literal)? ;
    )*) => {
        /// Every setting of `tether serve`, resolved (see [`SETTINGS`] for their docs).
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Settings {
                Settings { $( $name: $default, )* }
            }
        }

        /// The settings table, in the order of the example file.
        pub const SETTINGS: &[Spec] = &[ $(
            Spec {
                key: stringify!($name),
                env: $env,
                value_name: $hint,
                doc: &[$($doc),*],
                flag_kind: <$ty as SettingValue>::FLAG,
                example: settings!(@example $($example)?),
            },
        )* ];

        impl Settings {
            fn set_text(&mut self, key: &str, text: &str) -> Result<(), String> {
                match key {
                    $( stringify!($name) => self.$name = <$ty as SettingValue>::parse(text)?, )*
                    _ => return Err(format!("unknown setting {key:?}")),
                }
                Ok(())
            }

            fn set_toml(&mut self, key: &str, value: &toml::Value) -> Result<(), String> {
                match key {
                    $( stringify!($name) => self.$name = <$ty as SettingValue>::from_toml(value)?, )*
                    _ => return Err(format!("unknown setting {key:?}")),
                }
                Ok(())
            }

            /// The TOML form of a setting's value; `None` when it is unset.
            pub fn value_toml(&self, key: &str) -> Option<String> {
                match key {
                    $( stringify!($name) => self.$name.to_toml(), )*
                    _ => None,
                }
            }
        }
    };
}

settings! {
    // ---- listeners and placement ----
    /// Address the WebSocket listeners bind (one SO_REUSEPORT socket per shard).
    /// Devices connect from the network; 8080 needs no privilege.
    listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080)), env "TETHER_LISTEN", value "ADDR";
    /// Address of the admin HTTP endpoint (/metrics, /healthz, /readyz).
    /// Metrics and readiness are for the operator's scraper and load balancer: loopback.
    admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9090)), env "TETHER_ADMIN", value "ADDR";
    /// Number of shards (one pinned thread each), or `auto` for one per usable CPU.
    /// One shard per usable CPU uses the whole machine with no cross-thread locking.
    shards: ShardCount = ShardCount::Auto, env "TETHER_SHARDS", value "N|auto";
    /// CPUs the shards may use, e.g. `0-3,6`.
    /// Unset: the online CPUs within the process's affinity mask (taskset, cgroup cpuset).
    cpus: Option<CpuList> = None, env "TETHER_CPUS", value "LIST", example "\"0-3\"";
    /// Serve the diagnostic echo endpoint `/echo`.
    /// Off: it needs no token; it is for conformance runs and benchmarks.
    echo: bool = false, env "TETHER_ECHO", value "true|false";
    /// Most client connections the node admits (0: only the open-files limit applies).
    /// The open-files limit already bounds a node; set this to leave headroom.
    max_connections: usize = 0, env "TETHER_MAX_CONNECTIONS", value "N";
    /// Listen backlog per shard socket (the kernel caps it at net.core.somaxconn).
    /// A reconnect storm arrives faster than one accept loop drains it.
    backlog: u32 = 65_535, env "TETHER_BACKLOG", value "N";
    /// Address of the `wss://` listeners (TLS; needs tls_cert and tls_key); unset: no TLS.
    /// Off: a node behind a TLS-terminating proxy, or serving plain ws:// only, needs none.
    tls_listen: Option<SocketAddr> = None, env "TETHER_TLS_LISTEN", value "ADDR", example "\"0.0.0.0:8443\"";
    /// PEM certificate chains (leaf first) of the wss:// listener, chosen by SNI; the first is the default; reloaded on SIGHUP.
    /// No default: a certificate names the operator's host.
    tls_cert: Vec<PathBuf> = Vec::new(), env "TETHER_TLS_CERT", value "FILE[,FILE...]", example "[\"/etc/tether/tls/cert.pem\"]";
    /// PEM private keys (PKCS#8, PKCS#1 or SEC1), one per tls_cert, in the same order; reloaded on SIGHUP.
    /// No default, as for tls_cert.
    tls_key: Vec<PathBuf> = Vec::new(), env "TETHER_TLS_KEY", value "FILE[,FILE...]", example "[\"/etc/tether/tls/key.pem\"]";
    /// Listeners that expect a PROXY protocol header (v1 or v2) from an L4 balancer: off|ws|wss|all.
    /// Off: a header from anyone but a trusted balancer would let a client choose its address.
    proxy_protocol: ProxyProtocol = ProxyProtocol::Off, env "TETHER_PROXY_PROTOCOL", value "off|ws|wss|all";
    /// Origins (scheme://host[:port]) whose browser clients may connect; others get 403.
    /// Empty: no check (devices send no Origin). A request without Origin is always allowed.
    allowed_origins: Vec<String> = Vec::new(), env "TETHER_ALLOWED_ORIGINS", value "ORIGIN[,ORIGIN...]", example "[\"https://app.example.com\"]";
    // ---- limits of one connection ----
    /// Time a client has from TCP accept to a complete, accepted upgrade request.
    /// Long enough for a slow mobile link, short enough for slow-head clients (408).
    handshake_timeout: Duration = Duration::from_secs(10), env "TETHER_HANDSHAKE_TIMEOUT", value "DURATION";
    /// Largest HTTP request head of an upgrade request, in bytes.
    /// A real upgrade request with a JWT in a header fits in 8 KiB (431 beyond).
    head_bytes_max: usize = 8192, env "TETHER_HEAD_BYTES_MAX", value "BYTES";
    /// Most header lines in an upgrade request.
    /// Browsers send about 15 headers; more is an attack (431).
    headers_max: usize = 64, env "TETHER_HEADERS_MAX", value "N";
    /// Largest payload of one received frame, in bytes.
    /// Device messages are small; 1 MiB bounds what one frame can make us buffer (1009).
    frame_bytes_max: usize = 1 << 20, env "TETHER_FRAME_BYTES_MAX", value "BYTES";
    /// Largest received message (all fragments together), in bytes.
    /// Bounds reassembly of fragmented messages the same way (1009).
    message_bytes_max: usize = 1 << 20, env "TETHER_MESSAGE_BYTES_MAX", value "BYTES";
    /// Bytes of incomplete frames and messages one shard holds for all its connections.
    /// Bounds what clients parked mid-frame pin (1013 beyond): 64 connections mid-way through a 1 MiB message.
    shard_partial_bytes_max: usize = 64 << 20, env "TETHER_SHARD_PARTIAL_BYTES_MAX", value "BYTES";
    /// Time a peer has to complete a frame or fragmented message once its first byte arrived.
    /// 1 MiB at 280 kbit/s; a trickling peer cannot hold its partial message for longer (1008).
    message_timeout: Duration = Duration::from_secs(30), env "TETHER_MESSAGE_TIMEOUT", value "DURATION";
    /// Unsent bytes a connection may queue before the slow-consumer policy closes it (1008).
    /// Bounds the memory a slow or stalled reader can pin.
    outbound_bytes_max: usize = 1 << 20, env "TETHER_OUTBOUND_BYTES_MAX", value "BYTES";
    /// Send a ping after the peer has been silent this long.
    /// Below the common 60 s idle timeout of NAT boxes and load balancers.
    ping_idle: Duration = Duration::from_secs(30), env "TETHER_PING_IDLE", value "DURATION";
    /// Close the connection after the peer has been silent this long (must exceed ping_idle).
    /// A peer silent this long, not even answering our pings, is gone (counted as 1006).
    silence_timeout: Duration = Duration::from_secs(75), env "TETHER_SILENCE_TIMEOUT", value "DURATION";
    /// After sending a close frame, wait this long for the peer's close and its FIN.
    /// Then the socket is closed anyway.
    close_timeout: Duration = Duration::from_secs(5), env "TETHER_CLOSE_TIMEOUT", value "DURATION";
    /// On SIGTERM/SIGINT, turn /readyz 503 and keep accepting this long before draining.
    /// 0: only a health-checking load balancer needs it, and its right value is that balancer's.
    drain_delay: Duration = Duration::ZERO, env "TETHER_DRAIN_DELAY", value "DURATION";
    /// On SIGTERM/SIGINT, spread the 1001 closes over this time, then exit.
    /// Spreads the reconnects of all clients instead of one spike on the next node.
    drain_time: Duration = Duration::from_secs(30), env "TETHER_DRAIN_TIME", value "DURATION";
    /// Log format: `text` or `json` (level: TETHER_LOG or RUST_LOG, default info).
    /// Human-readable by default; json for log shippers.
    log_format: LogFormat = LogFormat::Text, env "TETHER_LOG_FORMAT", value "text|json";
    // ---- device authentication ----
    /// HS256 secret that device tokens are signed with (at least 16 bytes).
    /// Prefer jwt_secret_file: a value in a flag is visible in the process list.
    jwt_secret: Option<Secret> = None, env "TETHER_JWT_SECRET", value "SECRET", example "\"change-me-to-32-random-bytes....\"";
    /// File holding the HS256 secret (its trailing line break is ignored).
    /// Instead of jwt_secret, so that the secret stays out of flags and environment.
    jwt_secret_file: Option<PathBuf> = None, env "TETHER_JWT_SECRET_FILE", value "FILE", example "\"/etc/tether/jwt-secret\"";
    /// PEM public key for RS256/ES256 device tokens (instead of a secret).
    /// Lets an identity provider sign tokens without sharing a secret with the node.
    jwt_public_key: Option<PathBuf> = None, env "TETHER_JWT_PUBLIC_KEY", value "FILE", example "\"/etc/tether/jwt-public.pem\"";
    /// Algorithm of jwt_public_key: RS256 or ES256.
    /// RS256 is what most identity providers sign with.
    jwt_alg: JwtAlg = JwtAlg::Rs256, env "TETHER_JWT_ALG", value "ALG";
    /// JWKS document (file) with the keys device tokens are signed with; read again on SIGHUP.
    /// Several keys at once, chosen by the token's `kid`: an identity provider rotates keys
    /// without downtime. Instead of a secret or jwt_public_key.
    jwt_jwks_file: Option<PathBuf> = None, env "TETHER_JWT_JWKS_FILE", value "FILE", example "\"/etc/tether/jwks.json\"";
    /// JWKS URL (http or https) of an identity provider, fetched at start and every jwt_jwks_refresh.
    /// Instead of a secret, jwt_public_key or jwt_jwks_file; the start fails if the first fetch does.
    jwt_jwks_url: Option<String> = None, env "TETHER_JWT_JWKS_URL", value "URL", example "\"https://id.example.com/.well-known/jwks.json\"";
    /// How often jwt_jwks_url is fetched again (also, at most every 30 s, when a token names an unknown kid).
    /// Providers publish a new key well before signing with it; 5 minutes bounds how long a withdrawn key stays trusted.
    jwt_jwks_refresh: Duration = Duration::from_secs(300), env "TETHER_JWT_JWKS_REFRESH", value "DURATION";
    /// Accepted `aud` values of device tokens (a token must name one of them).
    /// Unset: a token that carries `aud` is refused, since it was issued for some other audience.
    jwt_audience: Vec<String> = Vec::new(), env "TETHER_JWT_AUDIENCE", value "AUD[,AUD...]", example "[\"tether\"]";
    /// Accepted `iss` values of device tokens (a token must name one of them).
    /// Unset: `iss` is not checked (a node with its own secret has one issuer by construction).
    jwt_issuer: Vec<String> = Vec::new(), env "TETHER_JWT_ISSUER", value "ISS[,ISS...]", example "[\"https://id.example.com/\"]";
    /// Clock skew tolerated on a token's `exp` and `nbf`.
    /// 0: nodes and the token issuer keep time with NTP; raise it to the skew you tolerate.
    jwt_leeway: Duration = Duration::ZERO, env "TETHER_JWT_LEEWAY", value "DURATION";
    /// Accept devices without a token (device id from the `device` query parameter).
    /// Never in production: logged as a warning at start.
    insecure_no_auth: bool = false, env "TETHER_INSECURE_NO_AUTH", value "true|false";
    // ---- the bus ----
    /// NATS server URLs; without any, the node runs the embedded bus.
    /// A single node needs nothing else to run.
    nats: Vec<String> = Vec::new(), env "TETHER_NATS", value "URL[,URL...]", example "[\"nats://127.0.0.1:4222\"]";
    /// NATS user name (with nats_password), for servers that require a login.
    /// Unset: no user and password are sent.
    nats_user: Option<String> = None, env "TETHER_NATS_USER", value "USER", example "\"tether-node\"";
    /// NATS password of nats_user (prefer the environment variable: a flag is visible in the process list).
    /// Unset: no password.
    nats_password: Option<Secret> = None, env "TETHER_NATS_PASSWORD", value "PASSWORD", example "\"change-me\"";
    /// NATS authentication token (instead of a user and password).
    /// Unset: no token.
    nats_token: Option<Secret> = None, env "TETHER_NATS_TOKEN", value "TOKEN", example "\"change-me\"";
    /// File holding the node's NKey user seed (`SU...`), for servers that list NKey users.
    /// Unset: no NKey.
    nats_nkey_seed_file: Option<PathBuf> = None, env "TETHER_NATS_NKEY_SEED_FILE", value "FILE", example "\"/etc/tether/nats.nk\"";
    /// NATS `.creds` file (user JWT and seed), for servers in operator (decentralised JWT) mode.
    /// Unset: no credentials file.
    nats_creds_file: Option<PathBuf> = None, env "TETHER_NATS_CREDS_FILE", value "FILE", example "\"/etc/tether/node.creds\"";
    /// PEM file of the authorities that signed the NATS server's certificate; TLS is then required.
    /// Unset: the system's authorities (when the server offers TLS or the URL is tls://).
    nats_tls_ca: Option<PathBuf> = None, env "TETHER_NATS_TLS_CA", value "FILE", example "\"/etc/tether/nats-ca.pem\"";
    /// PEM client certificate for NATS servers that verify clients (with nats_tls_key).
    /// Unset: no client certificate.
    nats_tls_cert: Option<PathBuf> = None, env "TETHER_NATS_TLS_CERT", value "FILE", example "\"/etc/tether/node-cert.pem\"";
    /// PEM private key of nats_tls_cert.
    /// Unset: no client certificate.
    nats_tls_key: Option<PathBuf> = None, env "TETHER_NATS_TLS_KEY", value "FILE", example "\"/etc/tether/node-key.pem\"";
    /// Start TLS before any NATS protocol, for servers configured with `handshake_first`.
    /// Off: the server's INFO comes first, as with every server not configured otherwise.
    nats_tls_first: bool = false, env "TETHER_NATS_TLS_FIRST", value "true|false";
    /// This node's id in presence answers and inbox subjects.
    /// Unset: `n-` and 8 random hex digits, new at every start.
    node_id: Option<String> = None, env "TETHER_NODE_ID", value "ID", example "\"edge-1\"";
    /// NATS subject of a backend that authorises each device after its token is verified.
    /// Unset: a valid token is enough.
    auth_subject: Option<String> = None, env "TETHER_AUTH_SUBJECT", value "SUBJECT", example "\"tether.auth\"";
    /// How long to wait for the auth_subject backend before answering 503.
    /// Well under the handshake timeout, so the device gets an answer it can retry on.
    auth_timeout: Duration = Duration::from_secs(2), env "TETHER_AUTH_TIMEOUT", value "DURATION";
    /// Length of each bus queue (each shard's inbound control and data queues; on the embedded
    /// bus, each shard to each shard), in messages.
    /// About 1.5 s of traffic at 40k msg/s per shard before anything is dropped.
    bus_queue_len: usize = 65_536, env "TETHER_BUS_QUEUE_LEN", value "N";
    // ---- device protocol limits ----
    /// How long a `send` with `ack` waits for the receiving device's ack; also the delivery deadline the message carries.
    /// A device on a live link answers within milliseconds; 2 s covers a slow mobile link.
    ack_timeout: Duration = Duration::from_secs(2), env "TETHER_ACK_TIMEOUT", value "DURATION";
    /// How often the node publishes its heartbeat on tether.node.<node> (NATS only; 100ms to 60s).
    /// Backends declare a node dead after 2.5 intervals of silence: within 3 s at 1 s.
    heartbeat_interval: Duration = Duration::from_secs(1), env "TETHER_HEARTBEAT_INTERVAL", value "DURATION";
    /// How long a backend request stays answerable by the device.
    /// Long enough for a person to react to a prompt on the device.
    request_lifetime: Duration = Duration::from_secs(30), env "TETHER_REQUEST_LIFETIME", value "DURATION";
    /// Topics one connection may subscribe to.
    /// A remote, a room, a few feeds; bounds the interest one device can create.
    topics_per_connection_max: usize = 64, env "TETHER_TOPICS_PER_CONNECTION_MAX", value "N";
    /// Sessions one device may hold on this node; one more closes its oldest with 4409.
    /// The current session, stale ones a network change leaves until silence_timeout, a second app.
    sessions_per_device_max: usize = 4, env "TETHER_SESSIONS_PER_DEVICE_MAX", value "N";
    // ---- durable delivery (JetStream) ----
    /// Keep pushes to tether.mbox.<device> in a JetStream stream, replay them, take device acks.
    /// Off: it needs nats and a nats-server 2.11+ with JetStream (-js).
    durable: bool = false, env "TETHER_DURABLE", value "true|false";
    /// Name of the mailbox stream, created at start when it is missing.
    /// One stream for the whole fleet; every node of a fleet uses the same name.
    durable_stream: String = "TETHER_MBOX".to_owned(), env "TETHER_DURABLE_STREAM", value "NAME";
    /// Oldest durable message kept (the stream's max_age).
    /// A device away for a week still gets what was sent meanwhile.
    durable_max_age: Duration = Duration::from_secs(7 * 24 * 3600), env "TETHER_DURABLE_MAX_AGE", value "DURATION";
    /// Unacknowledged durable messages kept per device (and per collapse key); the oldest go first.
    /// Bounds what one absent device costs the store.
    durable_max_msgs_per_device: usize = 1000, env "TETHER_DURABLE_MAX_MSGS_PER_DEVICE", value "N";
    /// Bytes the whole mailbox stream may hold; the oldest messages go first.
    /// A million devices with one 1 KiB message each.
    durable_max_bytes: usize = 1 << 30, env "TETHER_DURABLE_MAX_BYTES", value "BYTES";
    /// Replicas of the mailbox stream (1 to 5).
    /// 1 runs on one nats-server; use 3 on a 3-server cluster to survive the loss of a server.
    durable_replicas: usize = 1, env "TETHER_DURABLE_REPLICAS", value "N";
    /// Storage of the mailbox stream: file or memory.
    /// A file store survives a nats-server restart; memory does not.
    durable_storage: String = "file".to_owned(), env "TETHER_DURABLE_STORAGE", value "file|memory";
    /// Durable messages delivered to a session and not yet acknowledged before replay pauses.
    /// Bounds what one device that never acknowledges keeps in flight.
    durable_window: usize = 64, env "TETHER_DURABLE_WINDOW", value "N";
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The TOML file.
    File,
    /// The environment variable.
    Env,
    /// The command-line flag.
    Flag,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
        }
    }
}

/// A configuration that cannot be used; the message names the setting and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (with line and column).
        message: String,
    },
    /// A key of the file is no setting.
    #[error(
        "config file {path}: unknown setting {key:?} (`tether config example` lists them all)"
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value does not parse.
    #[error("invalid {origin}: {message}")]
    Value {
        /// The setting's key.
        setting: &'static str,
        /// Where it was written: `--flag`, `ENV_VAR` or `key in FILE`.
        origin: String,
        /// What is wrong and the right form.
        message: String,
    },
    /// Values that parse but cannot be used, alone or together.
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        /// The setting's key.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A [`ConfigError::Invalid`].
pub fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// The flags (and their environment variables) of every setting, as given on this command line.
/// Built from [`SETTINGS`]: flatten it into a clap command.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags {
    given: Vec<(&'static Spec, String, Source)>,
}

impl ServeFlags {
    /// Flags as if given on the command line: `(key, value)` pairs (for tests and tools).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Result<ServeFlags, String> {
        let mut given = Vec::new();
        for (key, text) in pairs {
            let spec = spec(key).ok_or_else(|| format!("unknown setting {key:?}"))?;
            given.push((spec, (*text).to_owned(), Source::Flag));
        }
        Ok(ServeFlags { given })
    }
}

/// The setting named `key`.
pub fn spec(key: &str) -> Option<&'static Spec> {
    SETTINGS.iter().find(|s| s.key == key)
}

impl clap::FromArgMatches for ServeFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = ServeFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for spec in SETTINGS {
            let Some(values) = matches.get_many::<String>(spec.key) else {
                continue;
            };
            let text = values.map(String::as_str).collect::<Vec<_>>().join(",");
            let source = match matches.value_source(spec.key) {
                Some(ValueSource::EnvVariable) => Source::Env,
                _ => Source::Flag,
            };
            self.given.retain(|(s, _, _)| s.key != spec.key);
            self.given.push((spec, text, source));
        }
        Ok(())
    }
}

impl clap::Args for ServeFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        SETTINGS.iter().fold(cmd, |cmd, spec| cmd.arg(spec.arg()))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The resolved settings and where each came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The values.
    pub settings: Settings,
    sources: Vec<Source>,
    file: Option<PathBuf>,
}

impl Resolved {
    /// Where the setting `key` came from.
    pub fn source(&self, key: &str) -> Source {
        SETTINGS
            .iter()
            .position(|s| s.key == key)
            .map_or(Source::Default, |i| self.sources[i])
    }

    /// The effective configuration as TOML, secrets redacted, each line saying where its value
    /// came from; unset settings are listed as comments.
    pub fn render(&self) -> String {
        let mut out = String::from("# effective configuration of tether serve");
        if let Some(path) = &self.file {
            out.push_str(&format!(" (file {})", path.display()));
        }
        out.push('\n');
        for (spec, source) in SETTINGS.iter().zip(&self.sources) {
            let origin = match source {
                Source::Flag => format!("flag --{}", spec.flag()),
                Source::Env => format!("env {}", spec.env),
                other => other.label().to_owned(),
            };
            match self.settings.value_toml(spec.key) {
                Some(v) => out.push_str(&format!("{} = {v}  # {origin}\n", spec.key)),
                None => out.push_str(&format!("# {} is not set  # {origin}\n", spec.key)),
            }
        }
        out
    }
}

/// Resolves the settings: `flags` (flags and environment variables, as clap read them) over
/// the TOML file `file` over the defaults.
pub fn resolve(flags: &ServeFlags, file: Option<&Path>) -> Result<Resolved, ConfigError> {
    let mut settings = Settings::default();
    let mut sources = vec![Source::Default; SETTINGS.len()];
    let index = |key: &str| SETTINGS.iter().position(|s| s.key == key);
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        for (key, value) in &table {
            let Some(i) = index(key) else {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key: key.clone(),
                });
            };
            settings
                .set_toml(key, value)
                .map_err(|message| ConfigError::Value {
                    setting: SETTINGS[i].key,
                    origin: format!("{key} in {}", path.display()),
                    message,
                })?;
            sources[i] = Source::File;
        }
    }
    // Environment first, then flags, whatever order clap recorded them in.
    for wanted in [Source::Env, Source::Flag] {
        for (spec, text, source) in flags.given.iter().filter(|g| g.2 == wanted) {
            let i = index(spec.key).expect("flags are built from SETTINGS");
            settings
                .set_text(spec.key, text)
                .map_err(|message| ConfigError::Value {
                    setting: spec.key,
                    origin: match source {
                        Source::Env => spec.env.to_owned(),
                        _ => format!("--{}", spec.flag()),
                    },
                    message,
                })?;
            sources[i] = *source;
        }
    }
    Ok(Resolved {
        settings,
        sources,
        file: file.map(Path::to_owned),
    })
}

/// `tether config example`: a complete commented TOML file with every setting at its default
/// (settings without a default are shown commented out, with an example value).
pub fn example() -> String {
    let defaults = Settings::default();
    let mut out = String::from(
        "# tether serve configuration (TOML). Give it with --config FILE or TETHER_CONFIG.\n\
         # Every setting is also a flag (--key-with-dashes) and an environment variable;\n\
         # precedence: flag > environment > this file > default.\n\
         # Durations take a unit: 250ms, 2s, 5m, 1h (a bare number is refused). Sizes are bytes.\n\
         # The values below are the defaults.\n",
    );
    for spec in SETTINGS {
        out.push('\n');
        for line in spec.doc {
            out.push_str(&format!("#{line}\n"));
        }
        out.push_str(&format!("# flag --{}, env {}\n", spec.flag(), spec.env));
        match (defaults.value_toml(spec.key), spec.example) {
            (Some(v), _) => out.push_str(&format!("{} = {v}\n", spec.key)),
            (None, Some(ex)) => out.push_str(&format!("# {} = {ex}\n", spec.key)),
            (None, None) => out.push_str(&format!("# {} is unset by default\n", spec.key)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn every_setting_is_in_the_example_and_the_example_parses() {
        let text = example();
        let table: toml::Table = toml::from_str(&text).unwrap();
        // Uncomment the example values of settings without a default: they must parse too.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if SETTINGS
                        .iter()
                        .any(|s| rest.starts_with(&format!("{} = ", s.key))) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let full: toml::Table = toml::from_str(&uncommented).unwrap();
        for spec in SETTINGS {
            assert!(
                full.contains_key(spec.key),
                "{} missing from the example",
                spec.key
            );
            assert!(
                table.contains_key(spec.key) || spec.example.is_some(),
                "{} has neither a default nor an example value",
                spec.key
            );
            assert!(!spec.doc.is_empty(), "{} has no doc", spec.key);
            assert_eq!(spec.env, format!("TETHER_{}", spec.key.to_uppercase()));
        }
        let path = temp_file("full.toml", &uncommented);
        let resolved = resolve(&ServeFlags::default(), Some(&path)).unwrap();
        for spec in SETTINGS {
            assert_eq!(resolved.source(spec.key), Source::File, "{}", spec.key);
        }
        // The defaults as written in the example are the defaults.
        let path = temp_file("example.toml", &text);
        let resolved = resolve(&ServeFlags::default(), Some(&path)).unwrap();
        assert_eq!(
            format!("{:?}", resolved.settings),
            format!("{:?}", Settings::default())
        );
    }

    #[test]
    fn flag_over_env_over_file_over_default() {
        let path = temp_file("precedence.toml", "drain_time = \"3s\"\nbacklog = 7\n");
        let mut flags = ServeFlags::from_pairs(&[("drain_time", "5s")]).unwrap();
        flags
            .given
            .push((spec("drain_time").unwrap(), "4s".into(), Source::Env));
        flags
            .given
            .push((spec("backlog").unwrap(), "8".into(), Source::Env));
        let r = resolve(&flags, Some(&path)).unwrap();
        assert_eq!(r.settings.drain_time, Duration::from_secs(5));
        assert_eq!(r.source("drain_time"), Source::Flag);
        assert_eq!(r.settings.backlog, 8);
        assert_eq!(r.source("backlog"), Source::Env);
        assert_eq!(r.settings.head_bytes_max, 8192);
        assert_eq!(r.source("head_bytes_max"), Source::Default);
    }

    #[test]
    fn errors_name_the_setting_and_its_origin() {
        let path = temp_file("bad.toml", "ack_timeout = 2\n");
        let err = resolve(&ServeFlags::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ack_timeout in "), "{err}");
        assert!(err.contains("\"2s\""), "{err}");
        let flags = ServeFlags::from_pairs(&[("drain_time", "2")]).unwrap();
        let err = resolve(&flags, None).unwrap_err().to_string();
        assert!(err.contains("--drain-time"), "{err}");
        assert!(err.contains("2s"), "{err}");
        let path = temp_file("unknown.toml", "no_such_setting = 1\n");
        let err = resolve(&ServeFlags::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_setting"), "{err}");
    }

    #[test]
    fn render_redacts_secrets() {
        let flags = ServeFlags::from_pairs(&[("jwt_secret", "sixteen-bytes-secret!")]).unwrap();
        let text = resolve(&flags, None).unwrap().render();
        assert!(!text.contains("sixteen-bytes-secret!"), "{text}");
        assert!(
            text.contains("jwt_secret = \"<redacted>\"  # flag --jwt-secret"),
            "{text}"
        );
    }
}
