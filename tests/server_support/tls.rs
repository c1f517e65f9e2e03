//! Shared TLS helpers of the `server_*` tests: a test PKI made by `openssl` in a temporary
//! directory (never committed), a rustls client trusting it, and the `wss://` port of a
//! running node.

use std::{net::TcpStream, path::PathBuf, sync::Arc, time::Duration};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
};

use super::{eventually, openssl, Server};

/// A TLS client stream over TCP.
pub(crate) type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A temporary directory holding test CAs and the leaves they signed; removed on drop.
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
}

impl Pki {
    /// An empty directory named after the process and `name` (tests of one binary run in
    /// parallel: each gives its own name).
    pub(crate) fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tether-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    /// Makes `ca<tag>.pem` and a leaf `cert<tag>.pem`/`key<tag>.pem` for localhost.
    pub(crate) fn issue(&self, tag: &str) {
        self.issue_for(tag, "DNS:localhost,IP:127.0.0.1");
    }

    /// Makes `ca<tag>.pem` and a leaf `cert<tag>.pem`/`key<tag>.pem` with these subject
    /// alternative names (openssl syntax).
    pub(crate) fn issue_for(&self, tag: &str, san: &str) {
        let d = &self.dir;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let ca = format!("ca{tag}.pem");
        let cakey = format!("ca{tag}.key");
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend(["-keyout", &cakey, "-out", &ca, "-days", "2", "-subj"]);
        let subj = format!("/CN=tether test CA {tag}");
        a.push(&subj);
        openssl(d, &a);
        let key = format!("key{tag}.pem");
        let csr = format!("leaf{tag}.csr");
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
        openssl(d, &a);
        std::fs::write(d.join("ext"), format!("subjectAltName={san}\n")).unwrap();
        let cert = format!("cert{tag}.pem");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &cakey,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
    }

    /// The path of a file in the directory, as a flag value.
    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// The first certificate of a PEM file in the directory.
    pub(crate) fn der(&self, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.dir.join(name)).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS client for `localhost` over `tcp`, trusting only `cas`, offering ALPN `http/1.1`
/// (the handshake runs on the first read or write).
pub(crate) fn tls_client(cas: &[CertificateDer<'static>], tcp: TcpStream) -> Tls {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
        .unwrap();
    StreamOwned::new(conn, tcp)
}

/// The `wss://` port of a node started with `--tls-listen 127.0.0.1:0`, read from its start
/// line.
pub(crate) fn tls_port(srv: &Server) -> u16 {
    // The start line reaches the log just after `Server::start` returns.
    assert!(eventually(Duration::from_secs(5), || srv
        .log()
        .contains(" tls_listen=")));
    let log = srv.log();
    let at = log.find(" tls_listen=").unwrap();
    let addr = log[at + 12..].split_whitespace().next().unwrap();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}
