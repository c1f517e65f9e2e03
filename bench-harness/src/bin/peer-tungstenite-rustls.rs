//! Peer server: tokio-rustls + tokio-tungstenite, a `wss://` echo server on a multi-thread tokio
//! runtime with one worker per CPU, as their users write it: rustls' default server settings with
//! the ring provider (TLS 1.3 and 1.2, two TLS 1.3 tickets per handshake, a 256-entry session
//! cache), ALPN `http/1.1`, and stateless session tickets (rustls' ring `Ticketer`, the same
//! ticket scheme tether uses) so that reconnects can resume. Echoes text and binary messages;
//! tungstenite answers pings and closes by itself.
//!
//! Usage: `peer-tungstenite-rustls --listen ADDR --tls-cert FILE --tls-key FILE` (PEM). Prints
//! nothing but errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tether_bench::peer;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

const USAGE: &str = "usage: peer-tungstenite-rustls --listen ADDR --tls-cert FILE --tls-key FILE";

fn parse_args(args: &[String]) -> Result<(SocketAddr, PathBuf, PathBuf), String> {
    let (mut listen, mut cert, mut key) = (None, None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => {
                listen = Some(
                    value
                        .parse()
                        .map_err(|e| format!("bad --listen {value:?}: {e}\n{USAGE}"))?,
                )
            }
            "--tls-cert" => cert = Some(PathBuf::from(value)),
            "--tls-key" => key = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    match (listen, cert, key) {
        (Some(l), Some(c), Some(k)) => Ok((l, c, k)),
        _ => Err(USAGE.to_string()),
    }
}

fn tls_config(cert: &PathBuf, key: &PathBuf) -> Result<rustls::ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    Ok(config)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, cert, key) = parse_args(&args).unwrap_or_else(|e| peer::die(e));
    let acceptor = TlsAcceptor::from(Arc::new(
        tls_config(&cert, &key).unwrap_or_else(|e| peer::die(e)),
    ));
    peer::serve_tokio(addr, move |stream| serve(acceptor.clone(), stream))
}

async fn serve(acceptor: TlsAcceptor, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        let (l, c, k) = parse_args(&args(&[
            "--listen",
            "127.0.0.1:9",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]))
        .unwrap();
        assert_eq!(l, "127.0.0.1:9".parse::<SocketAddr>().unwrap());
        assert_eq!((c.to_str(), k.to_str()), (Some("c.pem"), Some("k.pem")));
        assert!(parse_args(&args(&["--listen", "127.0.0.1:9"])).is_err());
        assert!(parse_args(&args(&[
            "--listen",
            "x",
            "--tls-cert",
            "c",
            "--tls-key",
            "k"
        ]))
        .is_err());
        assert!(parse_args(&args(&["--tls-cert"])).is_err());
    }
}
