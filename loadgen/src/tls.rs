//! `wss://`: the client side of TLS for the workers, with rustls (ring) driven by hand over the
//! worker's readiness-based tokio `TcpStream`.
//!
//! This module owns three things:
//!
//! * [`TlsOptions`], what the command line says about TLS (`--ca-file`, `--insecure`,
//!   `--tls-resumption`), carried to the workers in the plan, and the rustls `ClientConfig` a
//!   worker builds from it ([`TlsOptions::client_config`]).
//! * [`ClientSessions`], one client's session store: a client resumes its own earlier session,
//!   as a device does, never another client's. With resumption on, each client gets its own
//!   copy of the worker's configuration with its own store ([`for_one_client`]) on its first
//!   connect and keeps it for its reconnects; the store keeps the last [`TICKETS_PER_CLIENT`]
//!   TLS 1.3 tickets (each used once, as rustls requires) and the last TLS 1.2 session.
//! * [`Conn`], what a client task reads and writes: the plain `TcpStream` of a `ws://` target or
//!   a `rustls::ClientConnection` over it. It keeps the worker's readiness model
//!   (`readable().await`, then `try_read` into the thread's scratch buffer): ciphertext is read
//!   from the socket only when no plaintext is buffered, so `try_read` reports `WouldBlock` (and
//!   tokio clears the readiness) only when rustls holds nothing more to hand out.
//!
//! With `--insecure` the server's certificate is not checked against any authority, but the
//! handshake signature is still verified (the client does the same work as with a CA file).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Resumption, Tls12ClientSessionValue};
use rustls::client::{Tls13ClientSessionValue, WebPkiServerVerifier};
use rustls::crypto::{ring, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, NamedGroup,
    RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// TLS settings of a run with `wss://` targets.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TlsOptions {
    /// PEM file of the authorities that may sign the server's certificate; none: the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate (still verifying the handshake signature): test nodes
    /// with throw-away certificates only.
    pub insecure: bool,
    /// Offer TLS 1.3 tickets (and TLS 1.2 sessions) from earlier connections.
    pub resumption: bool,
}

/// TLS 1.3 tickets one client keeps (servers send one or two per handshake; one reconnect uses
/// one).
pub const TICKETS_PER_CLIENT: usize = 2;

/// How the handshake of a `wss://` connection went, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// A plain `ws://` connection: no TLS.
    None,
    /// A full TLS handshake (certificate, signature, key exchange).
    Full,
    /// A resumed session (a ticket or session id from an earlier connection).
    Resumed,
}

impl TlsOptions {
    /// The worker's client configuration: TLS 1.3 and 1.2, ALPN `http/1.1`, the ring provider;
    /// resumption off here (each client's copy gets its store from [`for_one_client`]).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let mut config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth()
        } else {
            let roots = Arc::new(self.roots()?);
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("certificate verifier: {e}"))?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Arc::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "--ca-file {}: no usable PEM certificate",
                        path.display()
                    ));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(
                        "no system certificate authorities found: give --ca-file FILE \
                                (or --insecure for a test node)"
                            .into(),
                    );
                }
            }
        }
        Ok(roots)
    }
}

/// Accepts any certificate chain; checks the handshake signatures with the provider's
/// algorithms, so the client's share of the handshake work is what it is with a real chain.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One client's own copy of the worker's configuration, resuming with its own sessions.
pub fn for_one_client(worker: &ClientConfig) -> Arc<ClientConfig> {
    let mut config = worker.clone();
    config.resumption = Resumption::store(Arc::new(ClientSessions::default()));
    Arc::new(config)
}

/// What a client remembers of one server name.
#[derive(Debug, Default)]
struct ServerSessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// One client's session store: per server name (a client with several URLs has several), the
/// last [`TICKETS_PER_CLIENT`] TLS 1.3 tickets (each handed out once, newest first), the last
/// TLS 1.2 session and key-exchange group.
#[derive(Debug, Default)]
pub struct ClientSessions {
    servers: Mutex<HashMap<ServerName<'static>, ServerSessions>>,
}

impl ClientSessions {
    fn with<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut ServerSessions) -> R) -> R {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let entry = servers.entry(name.to_owned()).or_default();
        f(entry)
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(&server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(server_name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(&server_name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server_name, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(server_name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.with(&server_name, |s| {
            if s.tls13.len() == TICKETS_PER_CLIENT {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // Newest first: it has the most lifetime left.
        self.with(server_name, |s| s.tls13.pop_back())
    }
}

/// A client's connection: plain TCP, or TLS over it.
pub enum Conn {
    Plain(TcpStream),
    /// Boxed: a rustls connection is about 1 KiB, a plain client needs none of it.
    Tls(Box<TlsConn>),
}

/// A `rustls::ClientConnection` over a non-blocking `TcpStream`.
pub struct TlsConn {
    tcp: TcpStream,
    tls: RefCell<ClientConnection>,
    /// Decrypted bytes rustls holds that `try_read` has not handed out yet.
    plaintext_pending: Cell<usize>,
    /// The server sent `close_notify`: no more plaintext will come.
    peer_closed: Cell<bool>,
}

/// `io::Read`/`io::Write` on a tokio `TcpStream` without waiting (`WouldBlock` passes through).
struct Nonblocking<'a>(&'a TcpStream);

impl Read for Nonblocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The error cause name of a TLS failure (`tls_invalid_certificate_unknown_issuer`,
/// `tls_alert_received_handshake_failure`, ...), or `None` for other I/O errors.
pub fn error_cause(e: &io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let mut name = String::from("tls");
    let mut gap = true;
    let debug = format!("{tls:?}");
    for ch in debug.chars().take(80) {
        if ch.is_ascii_alphanumeric() {
            if ch.is_ascii_uppercase() && !gap {
                name.push('_');
            }
            if gap {
                name.push('_');
                gap = false;
            }
            name.push(ch.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    Some(name)
}

impl Conn {
    /// Wraps a connected socket: in TLS when `tls` is given (the handshake runs in
    /// [`Conn::handshake`]), with `server_name` for SNI and the certificate check.
    pub fn new(
        tcp: TcpStream,
        tls: Option<(&Arc<ClientConfig>, &ServerName<'static>)>,
    ) -> io::Result<Conn> {
        Ok(match tls {
            None => Conn::Plain(tcp),
            Some((config, name)) => Conn::Tls(Box::new(TlsConn {
                tcp,
                tls: RefCell::new(
                    ClientConnection::new(config.clone(), name.clone()).map_err(tls_error)?,
                ),
                plaintext_pending: Cell::new(0),
                peer_closed: Cell::new(false),
            })),
        })
    }

    /// Runs the TLS handshake to its end (nothing for a plain connection); the caller bounds
    /// the time.
    pub async fn handshake(&self) -> io::Result<Handshake> {
        let Conn::Tls(c) = self else {
            return Ok(Handshake::None);
        };
        loop {
            c.flush().await?;
            if !c.tls.borrow().is_handshaking() {
                break;
            }
            c.tcp.readable().await?;
            match c.read_tls() {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(match c.tls.borrow().handshake_kind() {
            Some(HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        })
    }

    /// Waits until [`Conn::try_read`] may have something.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Conn::Plain(tcp) => tcp.readable().await,
            Conn::Tls(c) if c.plaintext_pending.get() > 0 => Ok(()),
            Conn::Tls(c) => c.tcp.readable().await,
        }
    }

    /// Reads what is available without waiting: `Ok(0)` at the end of the stream (a TLS
    /// connection that ends without `close_notify` is an `UnexpectedEof` error).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let c = match self {
            Conn::Plain(tcp) => return tcp.try_read(buf),
            Conn::Tls(c) => c,
        };
        loop {
            if c.plaintext_pending.get() > 0 {
                let n = c.tls.borrow_mut().reader().read(buf)?;
                c.plaintext_pending
                    .set(c.plaintext_pending.get().saturating_sub(n));
                return Ok(n);
            }
            if c.peer_closed.get() {
                return Ok(0);
            }
            if c.read_tls()? == 0 {
                // The socket ended: rustls says whether the peer sent close_notify first.
                return c.tls.borrow_mut().reader().read(buf);
            }
            // Alerts or key updates rustls wants to answer go out with the next write.
            if c.plaintext_pending.get() == 0 && c.tls.borrow().wants_write() {
                let _ = c.write_tls();
            }
        }
    }

    /// Writes all of `buf`, waiting for the socket as needed; the caller bounds the time.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(tcp) => {
                while !buf.is_empty() {
                    match tcp.try_write(buf) {
                        Ok(n) => buf = &buf[n..],
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Conn::Tls(c) => {
                while !buf.is_empty() {
                    // rustls takes plaintext up to its buffer limit; the rest after a flush.
                    let n = c.tls.borrow_mut().writer().write(buf)?;
                    buf = &buf[n..];
                    c.flush().await?;
                }
                c.flush().await
            }
        }
    }
}

impl TlsConn {
    /// Reads ciphertext from the socket into rustls and processes it; returns the bytes read.
    fn read_tls(&self) -> io::Result<usize> {
        let mut tls = self.tls.borrow_mut();
        let n = tls.read_tls(&mut Nonblocking(&self.tcp))?;
        let state = tls.process_new_packets().map_err(|e| {
            // Tell the server why (best effort), then fail.
            let _ = tls.write_tls(&mut Nonblocking(&self.tcp));
            tls_error(e)
        })?;
        self.plaintext_pending.set(state.plaintext_bytes_to_read());
        self.peer_closed.set(state.peer_has_closed());
        Ok(n)
    }

    fn write_tls(&self) -> io::Result<usize> {
        self.tls.borrow_mut().write_tls(&mut Nonblocking(&self.tcp))
    }

    /// Writes everything rustls has queued, waiting for the socket as needed.
    async fn flush(&self) -> io::Result<()> {
        while self.tls.borrow().wants_write() {
            match self.write_tls() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_store_keeps_its_own_sessions() {
        // Tickets cannot be made outside rustls: resumption itself is checked end to end by
        // scripts/tests/41-loadgen-tls.sh (a storm in which every client resumes its own).
        let (a, b) = (ClientSessions::default(), ClientSessions::default());
        let name = ServerName::try_from("localhost").unwrap();
        let other = ServerName::try_from("other").unwrap();
        a.set_kx_hint(name.clone(), NamedGroup::X25519);
        assert_eq!(a.kx_hint(&name), Some(NamedGroup::X25519));
        assert_eq!(a.kx_hint(&other), None);
        assert_eq!(b.kx_hint(&name), None);
        assert!(a.take_tls13_ticket(&name).is_none());
    }

    #[test]
    fn worker_config_speaks_http11_and_resumes_per_client() {
        let opts = TlsOptions {
            ca_file: None,
            insecure: true,
            resumption: true,
        };
        let worker = opts.client_config().unwrap();
        assert_eq!(worker.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let one = for_one_client(&worker);
        assert!(!Arc::ptr_eq(&one, &worker));
        assert_eq!(one.alpn_protocols, worker.alpn_protocols);
    }

    #[test]
    fn tls_failures_get_cause_names() {
        let e = tls_error(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            error_cause(&e).as_deref(),
            Some("tls_invalid_certificate_unknown_issuer")
        );
        assert_eq!(error_cause(&io::Error::other("x")), None);
    }
}
