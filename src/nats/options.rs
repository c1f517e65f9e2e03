//! What the NATS client shares with the bus that configures it: the login and TLS settings
//! ([`NatsAuth`]), the reconnect backoff ([`reconnect_delay`]) and why a request failed
//! ([`RequestError`]).

use std::path::PathBuf;
use std::time::Duration;

/// How the node logs in to NATS and protects the connection (`docs/operations.md`, "Security").
/// At most one of user and password, token, NKey seed and `.creds` file; TLS with any of them.
#[derive(Clone, Debug, Default)]
pub struct NatsAuth {
    /// User and password.
    pub user_password: Option<(String, String)>,
    /// Authentication token.
    pub token: Option<String>,
    /// File holding an NKey user seed (`SU...`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed, as `nsc` writes it).
    pub creds_file: Option<PathBuf>,
    /// PEM file of the certificate authorities that signed the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and its key, for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// TLS before any NATS protocol (servers with `handshake_first`).
    pub tls_first: bool,
}

/// Why a request failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No answer within the request's timeout.
    #[error("no answer within the request timeout")]
    Timeout,
    /// Nobody subscribes to the subject (the server's status 503).
    #[error("no responders")]
    NoResponders,
    /// The request could not be sent (connection closed, outbound buffer full, too many
    /// requests waiting); the text says which.
    #[error("request not sent: {0}")]
    Unavailable(String),
}

/// Reconnect delay: 100 ms doubling per attempt up to 5 s, times a random factor in [0.5, 1).
pub fn reconnect_delay(attempts: usize) -> Duration {
    let base_ms = 100u64.saturating_mul(1u64 << attempts.min(6)).min(5_000);
    let factor = 0.5 + rand::random::<f64>() * 0.5;
    Duration::from_millis((base_ms as f64 * factor) as u64)
}
