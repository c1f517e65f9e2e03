//! The checked messaging settings of `tether serve`: device authentication, the bus,
//! device-protocol limits. The settings themselves (flags, environment variables, TOML keys,
//! defaults and their reasons) are in [`crate::config`]; this module turns the resolved values
//! into a [`MessagingConfig`], reading key and secret files, and checks them.

use crate::auth::{ClaimRules, KeyConfig, KeySet, Verifier};
use crate::bus::jetstream::{DurableConfig, Storage};
use crate::bus::NatsAuth;
use crate::config::{invalid, ConfigError, JwtAlg, Secret, Settings};
use crate::device::hub::HubLimits;
use crate::device::keys::JwksSource;
use std::time::Duration;

/// How devices are authenticated.
#[derive(Clone)]
pub enum AuthMode {
    /// Every device presents a token, checked by this verifier (HS256 secret, public key or
    /// JWKS).
    Jwt(Box<Verifier>),
    /// `insecure_no_auth`: no token; the device names itself with `?device=` (tests and
    /// closed networks only).
    Insecure,
}

/// Messaging settings after validation.
#[derive(Clone)]
pub struct MessagingConfig {
    /// How devices are authenticated at the handshake.
    pub auth: AuthMode,
    /// The node's NATS login and TLS options.
    pub nats_auth: NatsAuth,
    /// Where the verification keys come from when they are a JWKS document.
    pub jwks: Option<JwksSource>,
    /// NATS server URLs; empty: the embedded bus (one node, no NATS).
    pub nats: Vec<String>,
    /// This node's id in presence answers, events and inbox subjects (checked like a device
    /// id; random `n-xxxxxxxx` when not set).
    pub node_id: String,
    /// The subject of the backend that authorises each verified device; `None`: a valid token
    /// is enough.
    pub auth_subject: Option<String>,
    /// How long the handshake waits for the `auth_subject` backend before answering 503.
    pub auth_timeout: Duration,
    /// Length of each bus queue (each shard's inbound control and data queues; on the embedded
    /// bus, each shard to each shard), in messages.
    pub bus_queue_len: usize,
    /// The device-protocol limits every shard's hub applies.
    pub limits: HubLimits,
    /// Sessions one device may hold on this node (see [`crate::device::sessions`]).
    pub sessions_per_device_max: usize,
    /// Durable delivery (`durable`), with the mailbox stream's settings.
    pub durable: Option<DurableConfig>,
}

impl MessagingConfig {
    /// Checks the messaging settings; errors name the setting to fix. `Ok(None)`: no messaging
    /// setting at all (no secret, key, insecure mode or NATS), so the node runs without `/ws`
    /// (authentication stays on by default: there is no unauthenticated device endpoint unless
    /// asked for).
    #[expect(
        clippy::too_many_lines,
        reason = "one setting after another in the settings table's order"
    )]
    pub fn resolve(s: &Settings) -> Result<Option<MessagingConfig>, ConfigError> {
        let configured = s.jwt_secret.is_some()
            || s.jwt_secret_file.is_some()
            || s.jwt_public_key.is_some()
            || s.jwt_jwks_file.is_some()
            || s.jwt_jwks_url.is_some()
            || s.insecure_no_auth
            || !s.nats.is_empty()
            || s.auth_subject.is_some();
        if !configured {
            return Ok(None);
        }
        let secret = match (&s.jwt_secret, &s.jwt_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "jwt_secret_file",
                    "give either jwt_secret or jwt_secret_file, not both",
                ))
            }
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(path)) => {
                Some(Secret::from_file(path).map_err(|m| invalid("jwt_secret_file", m))?)
            }
            (None, None) => None,
        };
        let jwks = match (&s.jwt_jwks_file, &s.jwt_jwks_url) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "jwt_jwks_url",
                    "give either jwt_jwks_file or jwt_jwks_url, not both",
                ))
            }
            (Some(path), None) => Some(JwksSource::File(path.clone())),
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid("jwt_jwks_url", "use an http:// or https:// URL"));
                }
                if s.jwt_jwks_refresh < Duration::from_secs(1) {
                    return Err(invalid("jwt_jwks_refresh", "must be at least 1s"));
                }
                Some(JwksSource::Url {
                    url: url.clone(),
                    refresh: s.jwt_jwks_refresh,
                })
            }
            (None, None) => None,
        };
        let rules = ClaimRules {
            audience: s.jwt_audience.clone(),
            issuer: s.jwt_issuer.clone(),
            leeway_secs: s.jwt_leeway.as_secs(),
        };
        let static_key = secret.is_some() || s.jwt_public_key.is_some();
        let auth = match (secret, &s.jwt_public_key, s.insecure_no_auth) {
            (_, _, true) => AuthMode::Insecure,
            _ if jwks.is_some() && static_key => {
                return Err(invalid(
                    if s.jwt_jwks_file.is_some() {
                        "jwt_jwks_file"
                    } else {
                        "jwt_jwks_url"
                    },
                    "give one key source: a JWKS, a secret or jwt_public_key",
                ))
            }
            // The JWKS is loaded by `device::keys::start` at install; until then, no key.
            (None, None, false) if jwks.is_some() => {
                AuthMode::Jwt(Box::new(Verifier::with_keys(KeySet::default(), rules)))
            }
            (Some(secret), None, false) => AuthMode::Jwt(Box::new(Verifier::with_keys(
                KeySet::single(&KeyConfig::Hs256 {
                    secret: secret.expose().as_bytes().to_vec(),
                })
                .map_err(|e| invalid("jwt_secret", e.to_string()))?,
                rules,
            ))),
            (None, Some(path), false) => {
                let pem = std::fs::read(path)
                    .map_err(|e| invalid("jwt_public_key", format!("{}: {e}", path.display())))?;
                let key = match s.jwt_alg {
                    JwtAlg::Rs256 => KeyConfig::Rs256 { public_pem: pem },
                    JwtAlg::Es256 => KeyConfig::Es256 { public_pem: pem },
                };
                AuthMode::Jwt(Box::new(Verifier::with_keys(
                    KeySet::single(&key).map_err(|e| invalid("jwt_public_key", e.to_string()))?,
                    rules,
                )))
            }
            (Some(_), Some(_), false) => {
                return Err(invalid(
                    "jwt_public_key",
                    "give either a secret (jwt_secret, jwt_secret_file) or jwt_public_key, not both",
                ));
            }
            (None, None, false) => {
                return Err(invalid(
                    "jwt_secret",
                    "device authentication needs --jwt-secret-file, --jwt-secret (or \
                     TETHER_JWT_SECRET), --jwt-public-key, --jwt-jwks-file or --jwt-jwks-url; \
                     for a closed test network only, --insecure-no-auth",
                ));
            }
        };
        if s.auth_subject.is_some() && s.nats.is_empty() {
            return Err(invalid(
                "auth_subject",
                "it asks a backend over NATS: give nats too",
            ));
        }
        let node_id = match &s.node_id {
            Some(id) if crate::proto::valid_device_id(id) => id.clone(),
            Some(id) => {
                return Err(invalid(
                    "node_id",
                    format!("{id:?}: use 1-128 of A-Z a-z 0-9 _ -"),
                ))
            }
            None => format!("n-{:08x}", rand::random::<u32>()),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut limits = HubLimits {
            ack_timeout_ms: ms(s.ack_timeout),
            request_lifetime_ms: ms(s.request_lifetime),
            topics_per_connection_max: s.topics_per_connection_max,
            token_leeway_secs: s.jwt_leeway.as_secs(),
            heartbeat_interval_ms: ms(s.heartbeat_interval),
            ..HubLimits::default()
        };
        if s.heartbeat_interval < Duration::from_millis(100)
            || s.heartbeat_interval > Duration::from_secs(60)
        {
            return Err(invalid(
                "heartbeat_interval",
                "use 100ms to 60s (the hub ticks every 100 ms)",
            ));
        }
        if s.durable_window == 0 {
            return Err(invalid("durable_window", "must be at least 1"));
        }
        limits.mailbox.window = s.durable_window;
        let durable = resolve_durable(s)?;
        if s.bus_queue_len == 0 {
            return Err(invalid("bus_queue_len", "must be at least 1"));
        }
        if s.sessions_per_device_max == 0 {
            return Err(invalid("sessions_per_device_max", "must be at least 1"));
        }
        let nats_auth = nats_auth(s)?;
        if s.nats.is_empty() && nats_auth_given(s) {
            return Err(invalid(
                "nats",
                "NATS credentials or TLS options are set but no NATS URL: give nats too",
            ));
        }
        Ok(Some(MessagingConfig {
            auth,
            nats_auth,
            jwks,
            nats: s.nats.clone(),
            node_id,
            auth_subject: s.auth_subject.clone(),
            auth_timeout: s.auth_timeout,
            bus_queue_len: s.bus_queue_len,
            limits,
            sessions_per_device_max: s.sessions_per_device_max,
            durable,
        }))
    }
}

fn nats_auth_given(s: &Settings) -> bool {
    s.nats_user.is_some()
        || s.nats_password.is_some()
        || s.nats_token.is_some()
        || s.nats_nkey_seed_file.is_some()
        || s.nats_creds_file.is_some()
        || s.nats_tls_ca.is_some()
        || s.nats_tls_cert.is_some()
        || s.nats_tls_key.is_some()
        || s.nats_tls_first
}

/// The NATS login and TLS settings, checked for pairs that belong together (the files are read
/// when the bus starts).
fn nats_auth(s: &Settings) -> Result<NatsAuth, ConfigError> {
    let user_password = match (&s.nats_user, &s.nats_password) {
        (Some(user), Some(password)) => Some((user.clone(), password.expose().to_owned())),
        (None, None) => None,
        (Some(_), None) => return Err(invalid("nats_password", "nats_user needs nats_password")),
        (None, Some(_)) => return Err(invalid("nats_user", "nats_password needs nats_user")),
    };
    let tls_client = match (&s.nats_tls_cert, &s.nats_tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        (Some(_), None) => return Err(invalid("nats_tls_key", "nats_tls_cert needs nats_tls_key")),
        (None, Some(_)) => {
            return Err(invalid("nats_tls_cert", "nats_tls_key needs nats_tls_cert"))
        }
    };
    Ok(NatsAuth {
        user_password,
        token: s.nats_token.as_ref().map(|t| t.expose().to_owned()),
        nkey_seed_file: s.nats_nkey_seed_file.clone(),
        creds_file: s.nats_creds_file.clone(),
        tls_ca: s.nats_tls_ca.clone(),
        tls_client,
        tls_first: s.nats_tls_first,
    })
}

fn resolve_durable(s: &Settings) -> Result<Option<DurableConfig>, ConfigError> {
    if !s.durable {
        return Ok(None);
    }
    if s.nats.is_empty() {
        return Err(invalid(
            "durable",
            "it keeps messages in NATS JetStream: give nats too (the embedded bus has no \
             store, and tether keeps nothing in memory for an absent device)",
        ));
    }
    if !crate::proto::valid_device_id(&s.durable_stream) {
        return Err(invalid(
            "durable_stream",
            format!("{:?}: use 1-128 of A-Z a-z 0-9 _ -", s.durable_stream),
        ));
    }
    if s.durable_max_age < Duration::from_secs(1) {
        return Err(invalid("durable_max_age", "must be at least 1s"));
    }
    let positive = |key: &'static str, n: usize| -> Result<i64, ConfigError> {
        match i64::try_from(n) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(invalid(key, format!("{n}: must be 1 to {}", i64::MAX))),
        }
    };
    if !(1..=5).contains(&s.durable_replicas) {
        return Err(invalid("durable_replicas", "JetStream allows 1 to 5"));
    }
    let storage = match s.durable_storage.as_str() {
        "file" => Storage::File,
        "memory" => Storage::Memory,
        other => {
            return Err(invalid(
                "durable_storage",
                format!("{other:?}: use file or memory"),
            ))
        }
    };
    Ok(Some(DurableConfig {
        stream: s.durable_stream.clone(),
        max_age: s.durable_max_age,
        max_msgs_per_device: positive(
            "durable_max_msgs_per_device",
            s.durable_max_msgs_per_device,
        )?,
        max_bytes: positive("durable_max_bytes", s.durable_max_bytes)?,
        replicas: s.durable_replicas,
        storage,
        ..DurableConfig::default()
    }))
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
            topics_sub: self.topics_sub.clone().into(),
            topics_pub: self.topics_pub.clone().into(),
            services: (!self.services.is_empty()).then(|| self.services.clone().into()),
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
