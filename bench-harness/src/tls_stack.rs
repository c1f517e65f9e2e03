//! `wss://` runs of tether-bench: the test PKI of a scenario with a `[tls]` table, the TLS
//! arguments of each server, and nginx terminating TLS in front of a `ws://` tether (what
//! operators run today), whose processes are measured together.
//!
//! The PKI is made once per scenario run by `scripts/test-pki.sh` (a CA and a leaf for
//! `localhost`/`127.0.0.1`, ECDSA P-256 or RSA-2048) under `<out>/<scenario>/pki/`; loadgen
//! trusts it with `--ca-file` and checks the certificate and the name on every full handshake.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::scenario::KeyType;

/// The files of a scenario's test PKI.
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// The PKI in `dir` (made by [`Pki::make`]).
    pub fn in_dir(dir: &Path) -> Pki {
        Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Makes a fresh PKI in `dir` with `scripts/test-pki.sh`.
    pub fn make(repo_root: &Path, dir: &Path, key: KeyType) -> Result<Pki, String> {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root.join("scripts/test-pki.sh")).arg(dir);
        if key == KeyType::Rsa2048 {
            cmd.arg("--rsa");
        }
        let out = cmd
            .output()
            .map_err(|e| format!("scripts/test-pki.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/test-pki.sh failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Pki::in_dir(dir))
    }
}

/// nginx's configuration: TLS on `listen` (one `reuseport` socket per worker, so the kernel
/// spreads the connections), proxying WebSocket upgrades to the `ws://` tether at `backend`.
/// Everything else is nginx's default or what a WebSocket deployment guide sets (HTTP/1.1 to
/// the upstream, the `Upgrade`/`Connection` headers, a long read timeout, a shared TLS session
/// cache beside the default session tickets).
pub fn nginx_conf(
    prefix: &Path,
    listen: std::net::SocketAddr,
    backend: std::net::SocketAddr,
    pki: &Pki,
) -> String {
    let p = prefix.display();
    format!(
        "daemon off;
master_process on;
worker_processes auto;
# This machine's hard limit of open files per process; each proxied connection takes two.
worker_rlimit_nofile 20000;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{
    worker_connections 19000;
}}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen {listen} ssl reuseport backlog=65535;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        location / {{
            proxy_pass http://{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
",
        cert = pki.cert.display(),
        key = pki.key.display(),
    )
}

/// The nginx binary: `NGINX` or Debian's `/usr/sbin/nginx`.
pub fn nginx_binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: apt-get install -y nginx (benchmarks only), or set NGINX",
            path.display()
        ))
    }
}

/// nginx in the foreground with the configuration written to `prefix/nginx.conf`.
pub fn nginx_command(
    prefix: &Path,
    listen: std::net::SocketAddr,
    backend: std::net::SocketAddr,
    pki: &Pki,
) -> Result<Command, String> {
    let bin = nginx_binary()?;
    std::fs::create_dir_all(prefix).map_err(|e| format!("{}: {e}", prefix.display()))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(prefix, listen, backend, pki))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut c = Command::new(bin);
    c.arg("-p")
        .arg(prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(&conf);
    Ok(c)
}

/// The process ids of `pid`'s children, grandchildren, ... (nginx's workers under its master).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_names_the_files_and_addresses() {
        let pki = Pki::in_dir(Path::new("/x/pki"));
        let conf = nginx_conf(
            Path::new("/x/ng"),
            "127.0.0.1:8443".parse().unwrap(),
            "127.0.0.1:9000".parse().unwrap(),
            &pki,
        );
        assert!(conf.contains("listen 127.0.0.1:8443 ssl reuseport"));
        assert!(conf.contains("proxy_pass http://127.0.0.1:9000;"));
        assert!(conf.contains("ssl_certificate /x/pki/cert.pem;"));
        assert!(conf.contains("ssl_certificate_key /x/pki/key.pem;"));
        assert!(conf.contains("pid /x/ng/nginx.pid;"));
    }

    #[test]
    fn finds_its_own_children() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let found = descendants(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
    }
}
