//! The checked settings of the server part of `tether serve` (listeners, placement, limits of
//! one connection, drain). The settings themselves, their flags, environment variables, TOML
//! keys, defaults and the reasons for the defaults are in [`crate::config`]; this module turns
//! the resolved values into a [`ServerConfig`] and checks the relations between them.

use std::{net::SocketAddr, time::Duration};

use tether_shards::ShardCount;

use super::tls::TlsFiles;
use crate::config::{invalid, Settings};
pub use crate::config::{ConfigError, LogFormat, ProxyProtocol};
use crate::ws::MAX_HEADER_BYTES;

/// The resolved settings of a node's server (each field's default and reason: the setting of
/// the same name in [`crate::config::SETTINGS`]).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the WebSocket listeners bind.
    pub listen: SocketAddr,
    /// Address of the `wss://` listeners and their certificate (`None`: no TLS).
    pub tls: Option<TlsListen>,
    /// The listeners that read a PROXY protocol header before the request (or ClientHello).
    pub proxy_protocol: ProxyProtocol,
    /// Origins allowed to upgrade (compared case-insensitively, trailing `/` ignored); empty:
    /// every origin. A request without `Origin` (a device, not a browser) is allowed.
    pub allowed_origins: Vec<String>,
    /// Address of the admin HTTP endpoint.
    pub admin: SocketAddr,
    /// Number of shards.
    pub shards: ShardCount,
    /// CPUs the shards may use (`None`: every usable CPU).
    pub cpus: Option<Vec<usize>>,
    /// Serve `/echo`.
    pub echo: bool,
    /// Most client connections; 0: no limit beyond the open-files capacity.
    pub max_connections: usize,
    /// Listen backlog per shard socket.
    pub backlog: u32,
    /// From TCP accept to a complete, accepted upgrade request.
    pub handshake_timeout: Duration,
    /// Largest HTTP request head.
    pub head_bytes_max: usize,
    /// Most header lines.
    pub headers_max: usize,
    /// Largest payload of one received frame.
    pub frame_bytes_max: usize,
    /// Largest received message.
    pub message_bytes_max: usize,
    /// Bytes of incomplete frames and messages one shard holds for all its connections.
    pub shard_partial_bytes_max: usize,
    /// Time a peer has to complete a frame or message once its first byte arrived.
    pub message_timeout: Duration,
    /// Unsent bytes a connection may queue.
    pub outbound_bytes_max: usize,
    /// Silence before a ping.
    pub ping_idle: Duration,
    /// Silence before the connection is dropped.
    pub silence_timeout: Duration,
    /// Wait for the peer's close after ours.
    pub close_timeout: Duration,
    /// From the first SIGTERM/SIGINT to the start of the drain: `/readyz` is 503, the
    /// listeners still accept.
    pub drain_delay: Duration,
    /// Time over which a drain spreads its closes.
    pub drain_time: Duration,
    /// Log output format.
    pub log_format: LogFormat,
}

/// A `wss://` listener: its address and certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    /// Address the `wss://` listeners bind (one `SO_REUSEPORT` socket per shard).
    pub listen: SocketAddr,
    /// Certificates and their keys, chosen by SNI (the first is the default), reloaded on
    /// SIGHUP.
    pub files: Vec<TlsFiles>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig::from_settings(&Settings::default())
    }
}

impl ServerConfig {
    /// The server's part of the resolved settings (not yet checked: see [`Self::validate`]).
    pub fn from_settings(s: &Settings) -> ServerConfig {
        ServerConfig {
            listen: s.listen,
            tls: s.tls_listen.map(|listen| TlsListen {
                listen,
                files: s
                    .tls_cert
                    .iter()
                    .zip(&s.tls_key)
                    .map(|(cert, key)| TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    })
                    .collect(),
            }),
            proxy_protocol: s.proxy_protocol,
            allowed_origins: s
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_string())
                .collect(),
            admin: s.admin,
            shards: s.shards,
            cpus: s.cpus.as_ref().map(|c| c.cpus().to_vec()),
            echo: s.echo,
            max_connections: s.max_connections,
            backlog: s.backlog,
            handshake_timeout: s.handshake_timeout,
            head_bytes_max: s.head_bytes_max,
            headers_max: s.headers_max,
            frame_bytes_max: s.frame_bytes_max,
            message_bytes_max: s.message_bytes_max,
            shard_partial_bytes_max: s.shard_partial_bytes_max,
            message_timeout: s.message_timeout,
            outbound_bytes_max: s.outbound_bytes_max,
            ping_idle: s.ping_idle,
            silence_timeout: s.silence_timeout,
            close_timeout: s.close_timeout,
            drain_delay: s.drain_delay,
            drain_time: s.drain_time,
            log_format: s.log_format,
        }
    }

    /// [`Self::from_settings`], checked.
    pub fn resolve(s: &Settings) -> Result<ServerConfig, ConfigError> {
        match (s.tls_listen, s.tls_cert.is_empty(), s.tls_key.is_empty()) {
            (Some(_), false, false) | (None, true, true) => {}
            (Some(_), true, _) => {
                return Err(invalid("tls_cert", "tls_listen needs tls_cert and tls_key"))
            }
            (Some(_), _, true) => {
                return Err(invalid("tls_key", "tls_listen needs tls_cert and tls_key"))
            }
            (None, _, _) => {
                return Err(invalid(
                    "tls_listen",
                    "tls_cert and tls_key are used only with tls_listen (the wss:// address)",
                ))
            }
        }
        if s.tls_cert.len() != s.tls_key.len() {
            return Err(invalid(
                "tls_key",
                "give one tls_key per tls_cert, in the same order",
            ));
        }
        if s.proxy_protocol == ProxyProtocol::Wss && s.tls_listen.is_none() {
            return Err(invalid(
                "proxy_protocol",
                "wss applies to the wss:// listener, and tls_listen is not set",
            ));
        }
        let cfg = ServerConfig::from_settings(s);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether a request with this `Origin` header may upgrade.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            _ if self.allowed_origins.is_empty() => true,
            None => true,
            Some(o) => {
                let o = o.trim_end_matches('/');
                self.allowed_origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
            }
        }
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
        let one_message = self.frame_bytes_max + self.message_bytes_max + MAX_HEADER_BYTES;
        if self.shard_partial_bytes_max < one_message {
            return Err(invalid(
                "shard_partial_bytes_max",
                format!(
                    "{} bytes cannot hold one connection's largest message: at least \
                     frame_bytes_max + message_bytes_max + {MAX_HEADER_BYTES} = {one_message}",
                    self.shard_partial_bytes_max
                ),
            ));
        }
        if self.outbound_bytes_max < 1024 {
            return Err(invalid("outbound_bytes_max", "must be at least 1024 bytes"));
        }
        for (name, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("ping_idle", self.ping_idle),
            ("close_timeout", self.close_timeout),
            ("message_timeout", self.message_timeout),
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
    fn origins_are_checked_only_when_listed_and_only_when_sent() {
        let open = ServerConfig::default();
        assert!(open.origin_allowed(Some("https://evil.example")));
        assert!(open.origin_allowed(None));
        let c = ServerConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            ..ServerConfig::default()
        };
        assert!(c.origin_allowed(Some("https://app.example.com")));
        assert!(c.origin_allowed(Some("HTTPS://APP.example.com/")));
        assert!(!c.origin_allowed(Some("http://app.example.com")));
        assert!(!c.origin_allowed(Some("https://app.example.com:8443")));
        assert!(!c.origin_allowed(Some("null")));
        assert!(c.origin_allowed(None));
    }

    #[test]
    fn tls_certificates_and_keys_pair_up_in_order() {
        let s = Settings {
            tls_listen: Some("127.0.0.1:0".parse().unwrap()),
            tls_cert: vec!["a.pem".into(), "b.pem".into()],
            tls_key: vec!["a.key".into(), "b.key".into()],
            ..Settings::default()
        };
        let tls = ServerConfig::resolve(&s).unwrap().tls.unwrap();
        assert_eq!(
            tls.files,
            [("a.pem", "a.key"), ("b.pem", "b.key")].map(|(c, k)| TlsFiles {
                cert: c.into(),
                key: k.into()
            })
        );
        let one_key_short = Settings {
            tls_key: vec!["a.key".into()],
            ..s
        };
        let e = ServerConfig::resolve(&one_key_short)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one tls_key per tls_cert"), "{e}");
    }

    #[test]
    fn defaults_are_valid() {
        ServerConfig::default().validate().unwrap();
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
