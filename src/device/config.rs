//! Messaging settings of `tether serve`: authentication, the bus, device-protocol limits.
//!
//! Flags with `TETHER_*` environment variables, flattened into the server's flags. Defaults and
//! their reasons are in `docs/protocol.md` (section 10) and `docs/operations.md`.

use crate::auth::{KeyConfig, Verifier};
use crate::bus::QUEUE_LEN_DEFAULT;
use crate::device::hub::HubLimits;
use std::path::PathBuf;
use std::time::Duration;

/// Messaging flags of `tether serve`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct MessagingArgs {
    /// HS256 secret that device tokens are signed with (at least 16 bytes).
    #[arg(
        long,
        env = "TETHER_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256/ES256 device tokens (instead of --jwt-secret).
    #[arg(long, env = "TETHER_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Algorithm of --jwt-public-key: RS256 or ES256.
    #[arg(
        long,
        env = "TETHER_JWT_ALG",
        value_name = "ALG",
        default_value = "RS256"
    )]
    pub jwt_alg: String,
    /// Accept devices without a token (device id from the `device` query parameter). Never in
    /// production: logged as a warning at start.
    #[arg(long, env = "TETHER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// NATS server URLs (comma-separated); without it the node runs the embedded bus.
    #[arg(
        long,
        env = "TETHER_NATS",
        value_name = "URL[,URL...]",
        value_delimiter = ','
    )]
    pub nats: Vec<String>,
    /// This node's id in presence answers and inbox subjects (default: `n-` + random hex).
    #[arg(long, env = "TETHER_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// NATS subject of a backend that authorises each device after its token is verified.
    #[arg(long, env = "TETHER_AUTH_SUBJECT", value_name = "SUBJECT")]
    pub auth_subject: Option<String>,
    /// How long to wait for the --auth-subject backend before answering 503 (default 2s).
    #[arg(long, env = "TETHER_AUTH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub auth_timeout: Option<Duration>,
    /// Length of each bus queue in messages (default 65536).
    #[arg(long, env = "TETHER_BUS_QUEUE_LEN", value_name = "N")]
    pub bus_queue_len: Option<usize>,
    /// How long a `send` with `ack` waits for a delivery confirmation (default 2s).
    #[arg(long, env = "TETHER_ACK_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub ack_timeout: Option<Duration>,
    /// How long a backend request stays answerable by the device (default 30s).
    #[arg(long, env = "TETHER_REQUEST_LIFETIME", value_name = "DURATION", value_parser = parse_duration)]
    pub request_lifetime: Option<Duration>,
    /// Topics one connection may subscribe to (default 64).
    #[arg(long, env = "TETHER_TOPICS_PER_CONNECTION_MAX", value_name = "N")]
    pub topics_per_connection_max: Option<usize>,
}

/// Parses `500ms`, `2s`, `1m`, or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad duration {text:?}: use e.g. 500ms, 2s, 1m"))?;
    let ms = match unit {
        "" | "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s or m")),
    };
    Ok(Duration::from_millis(ms))
}

/// How devices are authenticated.
#[derive(Clone)]
pub enum AuthMode {
    Jwt(Box<Verifier>),
    Insecure,
}

/// Messaging settings after validation.
#[derive(Clone)]
pub struct MessagingConfig {
    pub auth: AuthMode,
    pub nats: Vec<String>,
    pub node_id: String,
    pub auth_subject: Option<String>,
    pub auth_timeout: Duration,
    pub bus_queue_len: usize,
    pub limits: HubLimits,
}

impl MessagingConfig {
    /// Validates the flags; errors name the flag to fix. `Ok(None)`: no messaging flag at all
    /// (no secret, key, insecure mode or NATS), so the node runs without `/ws` (authentication
    /// stays on by default: there is no unauthenticated device endpoint unless asked for).
    pub fn resolve(args: &MessagingArgs) -> Result<Option<MessagingConfig>, String> {
        let configured = args.jwt_secret.is_some()
            || args.jwt_public_key.is_some()
            || args.insecure_no_auth
            || !args.nats.is_empty()
            || args.auth_subject.is_some();
        if !configured {
            return Ok(None);
        }
        let auth = match (
            &args.jwt_secret,
            &args.jwt_public_key,
            args.insecure_no_auth,
        ) {
            (_, _, true) => AuthMode::Insecure,
            (Some(secret), None, false) => AuthMode::Jwt(Box::new(
                Verifier::new(&KeyConfig::Hs256 {
                    secret: secret.as_bytes().to_vec(),
                })
                .map_err(|e| e.to_string())?,
            )),
            (None, Some(path), false) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--jwt-public-key {}: {e}", path.display()))?;
                let key = match args.jwt_alg.to_ascii_uppercase().as_str() {
                    "RS256" => KeyConfig::Rs256 { public_pem: pem },
                    "ES256" => KeyConfig::Es256 { public_pem: pem },
                    other => {
                        return Err(format!(
                            "--jwt-alg {other}: use RS256 or ES256 with --jwt-public-key"
                        ))
                    }
                };
                AuthMode::Jwt(Box::new(Verifier::new(&key).map_err(|e| e.to_string())?))
            }
            (Some(_), Some(_), false) => {
                return Err("give either --jwt-secret or --jwt-public-key, not both".into());
            }
            (None, None, false) => {
                return Err(
                    "device authentication needs --jwt-secret (or TETHER_JWT_SECRET) or \
                            --jwt-public-key; for a closed test network only, --insecure-no-auth"
                        .into(),
                );
            }
        };
        if args.auth_subject.is_some() && args.nats.is_empty() {
            return Err("--auth-subject asks a backend over NATS: give --nats too".into());
        }
        let node_id = match &args.node_id {
            Some(id) if crate::proto::valid_device_id(id) => id.clone(),
            Some(id) => return Err(format!("--node-id {id:?}: use 1-128 of A-Z a-z 0-9 _ -")),
            None => format!("n-{:08x}", rand::random::<u32>()),
        };
        let mut limits = HubLimits::default();
        if let Some(d) = args.ack_timeout {
            limits.ack_timeout_ms = d.as_millis() as u64;
        }
        if let Some(d) = args.request_lifetime {
            limits.request_lifetime_ms = d.as_millis() as u64;
        }
        if let Some(n) = args.topics_per_connection_max {
            limits.topics_per_connection_max = n;
        }
        let bus_queue_len = args.bus_queue_len.unwrap_or(QUEUE_LEN_DEFAULT);
        if bus_queue_len == 0 {
            return Err("--bus-queue-len must be at least 1".into());
        }
        Ok(Some(MessagingConfig {
            auth,
            nats: args
                .nats
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            node_id,
            auth_subject: args.auth_subject.clone(),
            auth_timeout: args.auth_timeout.unwrap_or(Duration::from_secs(2)),
            bus_queue_len,
            limits,
        }))
    }
}

/// `tether token`: mints a development device token.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The device id (JWT `sub`).
    #[arg(long, value_name = "DEVICE")]
    pub sub: String,
    /// Lifetime, e.g. 90s, 30m, 1h, 2d.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub ttl: String,
    /// Topic pattern the device may subscribe to (repeatable; NATS wildcards `*` and `>`).
    #[arg(long = "topics-sub", value_name = "PATTERN")]
    pub topics_sub: Vec<String>,
    /// Topic pattern the device may publish to (repeatable).
    #[arg(long = "topics-pub", value_name = "PATTERN")]
    pub topics_pub: Vec<String>,
    /// Backend service the device may send upstream to (repeatable; none given = any).
    #[arg(long = "services", value_name = "NAME")]
    pub services: Vec<String>,
    /// HS256 secret (the node's --jwt-secret).
    #[arg(
        long,
        env = "TETHER_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: String,
}

impl TokenArgs {
    /// The signed token.
    pub fn mint(&self) -> Result<String, String> {
        if !crate::proto::valid_device_id(&self.sub) {
            return Err(format!(
                "--sub {:?}: use 1-128 of A-Z a-z 0-9 _ -",
                self.sub
            ));
        }
        let ttl = crate::auth::parse_ttl_secs(&self.ttl)?;
        let claims = crate::auth::Claims {
            topics_sub: self.topics_sub.clone(),
            topics_pub: self.topics_pub.clone(),
            services: (!self.services.is_empty()).then(|| self.services.clone()),
            ..crate::auth::Claims::device(&self.sub, ttl)
        };
        let secret = self.jwt_secret.as_bytes();
        crate::auth::Verifier::new(&crate::auth::KeyConfig::Hs256 {
            secret: secret.to_vec(),
        })
        .map_err(|e| e.to_string())?;
        crate::auth::mint_hs256(secret, &claims).map_err(|e| e.to_string())
    }
}
