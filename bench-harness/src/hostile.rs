//! `tether-bench hostile`: the hostile-client measurements of issue 12 (docs/benchmarks.md,
//! "Hostile clients"), one tether build after another (each a folder holding `tether`, 2
//! shards), one JSON line per build:
//!
//! - `parked N FRAME_BYTES`: N clients upgrade on `/echo`, each sends a binary frame header
//!   announcing FRAME_BYTES and all of its payload but the last byte, and stops; the node's RSS
//!   before and 3 s after, and how many of them the node closed with 1013;
//! - `fanout N`: N sessions of one device (one token) that never read, then three 1 MB `send`s
//!   to that device from another device; node RSS and the kernel's TCP memory before and after;
//! - `admin SECONDS`: one client trickling an admin request (a byte every 1.5 s) and ten idle
//!   admin connections; `/healthz` latency every 100 ms meanwhile.
//!
//! The clients are plain blocking sockets written here: the point is the bytes a hostile client
//! sends and never sends, which no WebSocket library would produce.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::deploy::Deployment;
use crate::procfs;
use crate::runner::RunConfig;
use crate::scenario::{Bus, ServerKind, ServerSpec};

/// Bound on every blocking socket operation of a hostile client.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest HTTP response head read during an upgrade.
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Shards of every node measured.
const SHARDS: u32 = 2;
/// Size of each `send` of the fanout measurement.
const FANOUT_SEND_BYTES: usize = 1_000_000;
/// How long the admin measurement waits for one `/healthz` answer.
const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(5);

/// One hostile measurement.
#[derive(Clone, Copy, Debug)]
pub enum Hostile {
    Parked { clients: u64, frame_bytes: u64 },
    Fanout { sessions: u64 },
    Admin { seconds: f64 },
}

impl Hostile {
    /// Parses `parked N FRAME_BYTES`, `fanout N` or `admin SECONDS`.
    pub fn parse(args: &[String]) -> Result<Hostile, String> {
        let num = |s: &String| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        match args {
            [m, n, f] if m == "parked" => Ok(Hostile::Parked {
                clients: num(n)?,
                frame_bytes: num(f)?.max(2),
            }),
            [m, n] if m == "fanout" => Ok(Hostile::Fanout { sessions: num(n)? }),
            [m, s] if m == "admin" => Ok(Hostile::Admin {
                seconds: s.parse().map_err(|e| format!("{s:?}: {e}"))?,
            }),
            _ => Err("usage: parked N FRAME_BYTES | fanout N | admin SECONDS".into()),
        }
    }
}

/// Runs `what` against each build in turn; one JSON object per build.
pub fn run(what: Hostile, builds: &[PathBuf], cfg: &RunConfig) -> Result<Vec<Value>, String> {
    let dir = cfg.out_root.join("hostile");
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for (i, build) in builds.iter().enumerate() {
        let spec = ServerSpec {
            kind: ServerKind::Tether,
            label: None,
            shards: Some(SHARDS),
            bin_dir: Some(build.clone()),
            extra_args: Vec::new(),
            // fanout needs devices on /ws: the in-process bus and a token secret.
            bus: matches!(what, Hostile::Fanout { .. }).then_some(Bus::Embedded),
            nodes: None,
            cpus: None,
            loadgen_args: Vec::new(),
        };
        let (mut d, _) = Deployment::start(&spec, cfg, &dir, &format!("build-{i}"), None)?;
        let result = measure(what, &d, build);
        d.stop();
        let mut v = result?;
        v["build"] = json!(build.display().to_string());
        println!("{v}");
        out.push(v);
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(out)
}

fn measure(what: Hostile, d: &Deployment, build: &Path) -> Result<Value, String> {
    let node = d.nodes.first().ok_or("no node")?;
    let pid = node.child.id();
    match what {
        Hostile::Parked {
            clients,
            frame_bytes,
        } => parked(node.listen, pid, clients, frame_bytes),
        Hostile::Fanout { sessions } => {
            let secret = d.jwt_secret.as_deref().ok_or("no token secret")?;
            fanout(node.listen, pid, sessions, &build.join("tether"), secret)
        }
        Hostile::Admin { seconds } => admin(node.admin.ok_or("no admin listener")?, seconds),
    }
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    procfs::rss_bytes(pid)
        .map(|b| b / 1024)
        .ok_or_else(|| "the node is gone".to_string())
}

fn tcp_mem_kib() -> u64 {
    procfs::tcp_sockstat().map_or(0, |(_, pages)| pages * procfs::page_size_bytes() / 1024)
}

/// A masked (key 0) final frame header, shortest length encoding.
fn frame_header(len: u64, opcode: u8) -> Vec<u8> {
    let mut h = vec![0x80 | opcode];
    match len {
        0..=125 => h.push(0x80 | len as u8),
        126..=0xFFFF => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
    }
    h.extend_from_slice(&[0; 4]);
    h
}

/// Connects and upgrades on `path`; the socket is left blocking with `IO_TIMEOUT`.
fn upgrade(addr: SocketAddr, path: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // Byte by byte up to the head's end, so no frame after it is consumed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > HEAD_BYTES_MAX || s.read(&mut b).map_err(|e| e.to_string())? == 0 {
            return Err("no complete response head".into());
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101 ") {
        let line = String::from_utf8_lossy(&head);
        return Err(format!(
            "not upgraded: {}",
            line.lines().next().unwrap_or("")
        ));
    }
    Ok(s)
}

fn parked(addr: SocketAddr, pid: u32, clients: u64, frame: u64) -> Result<Value, String> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(upgrade(addr, "/echo")?);
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kib(pid)?;
    let mut body = frame_header(frame, 0x2);
    body.resize(body.len() + frame as usize - 1, b'p');
    let t0 = Instant::now();
    for c in &mut conns {
        // A client the node closed (1013) cannot take the rest: that is the point.
        let _ = c.write_all(&body);
    }
    let send_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(pid)?;
    let mut closed = 0u64;
    for c in &mut conns {
        let _ = c.set_read_timeout(Some(Duration::from_millis(1)));
        let mut buf = [0u8; 64];
        if let Ok(n) = c.read(&mut buf) {
            if n >= 4 && buf[0] == 0x88 && u16::from_be_bytes([buf[2], buf[3]]) == 1013 {
                closed += 1;
            }
        }
    }
    Ok(json!({
        "scenario": "parked", "parked": clients, "frame_bytes": frame,
        "rss_before_kib": before, "rss_after_kib": after,
        "rss_growth_per_conn_kib": (after as f64 - before as f64) / clients.max(1) as f64,
        "closed_1013": closed, "send_s": send_s,
    }))
}

fn token(tether: &Path, device: &str, secret: &str) -> Result<String, String> {
    let out = Command::new(tether)
        .args(["token", "--sub", device, "--jwt-secret", secret])
        .output()
        .map_err(|e| format!("{}: {e}", tether.display()))?;
    if !out.status.success() {
        return Err(format!(
            "tether token: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn fanout(
    addr: SocketAddr,
    pid: u32,
    sessions: u64,
    tether: &Path,
    secret: &str,
) -> Result<Value, String> {
    let tv = token(tether, "tv", secret)?;
    let mut stalled = Vec::new();
    for _ in 0..sessions {
        // Never read: a stalled device.
        stalled.push(upgrade(addr, &format!("/ws?token={tv}"))?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let (before, kbefore) = (rss_kib(pid)?, tcp_mem_kib());
    let mut phone = upgrade(
        addr,
        &format!("/ws?token={}", token(tether, "phone", secret)?),
    )?;
    let mut hello = [0u8; 512];
    phone.read(&mut hello).map_err(|e| format!("hello: {e}"))?;
    let data = "x".repeat(FANOUT_SEND_BYTES);
    for i in 0..3 {
        let msg = json!({"op": "send", "to": "tv", "data": data, "id": format!("m{i}")});
        let msg = msg.to_string().into_bytes();
        let mut frame = frame_header(msg.len() as u64, 0x1);
        frame.extend_from_slice(&msg);
        phone.write_all(&frame).map_err(|e| format!("send: {e}"))?;
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (after, kafter) = (rss_kib(pid)?, tcp_mem_kib());
    Ok(json!({
        "scenario": "fanout", "sessions": sessions,
        "rss_before_kib": before, "rss_after_kib": after,
        "rss_growth_kib": after as i64 - before as i64,
        "tcp_mem_before_kib": kbefore, "tcp_mem_after_kib": kafter,
        "tcp_mem_growth_kib": kafter as i64 - kbefore as i64,
    }))
}

fn admin(addr: SocketAddr, seconds: f64) -> Result<Value, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                for b in req {
                    // The node cut it off: start over.
                    if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1500));
                }
            }
        })
    };
    let idle: Vec<TcpStream> = (0..10)
        .filter_map(|_| TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok())
        .collect();
    let (mut lat_ms, mut unanswered) = (Vec::new(), 0u64);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t0 = Instant::now();
        match crate::deploy::http_get_within(addr, "/healthz", HEALTHZ_TIMEOUT) {
            Some((200, _)) => lat_ms.push(t0.elapsed().as_secs_f64() * 1e3),
            _ => unanswered += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    drop(idle);
    let _ = trickler.join();
    lat_ms.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        lat_ms
            .get(((lat_ms.len() as f64 * q) as usize).min(lat_ms.len().saturating_sub(1)))
            .copied()
    };
    Ok(json!({
        "scenario": "admin", "requests": lat_ms.len() as u64 + unanswered,
        "answered": lat_ms.len(), "unanswered_5s": unanswered,
        "median_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": lat_ms.last(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_use_the_shortest_length() {
        assert_eq!(frame_header(5, 0x2), [0x82, 0x85, 0, 0, 0, 0]);
        assert_eq!(frame_header(300, 0x1), [0x81, 0xFE, 1, 44, 0, 0, 0, 0]);
        assert_eq!(frame_header(1 << 20, 0x2)[1], 0xFF);
        assert_eq!(frame_header(1 << 20, 0x2).len(), 2 + 8 + 4);
    }

    #[test]
    fn arguments() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(
            Hostile::parse(&a(&["parked", "10", "65536"])),
            Ok(Hostile::Parked {
                clients: 10,
                frame_bytes: 65536
            })
        ));
        assert!(matches!(
            Hostile::parse(&a(&["fanout", "3"])),
            Ok(Hostile::Fanout { sessions: 3 })
        ));
        assert!(Hostile::parse(&a(&["admin", "x"])).is_err());
        assert!(Hostile::parse(&a(&["parked", "10"])).is_err());
    }
}
