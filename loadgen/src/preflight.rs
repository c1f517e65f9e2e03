//! Preflight: what this host allows (open files per process, ephemeral port range, source
//! addresses × ports per target, somaxconn, system-wide files), how many connections that
//! permits, how many worker processes the plan needs, and a refusal (with the reason and the
//! fix) for a plan that cannot work.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};

use serde::Serialize;

use crate::plan::Plan;
use crate::sys;

/// File descriptors a worker keeps for itself (stdio, runtime, pipes) besides its sockets.
pub const FD_RESERVE: u64 = 100;
/// Most worker processes one run may spawn.
pub const WORKERS_MAX: u64 = 512;

/// Limits of this host that bound the plan.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub port_range: (u32, u32),
    pub somaxconn: Option<u64>,
    /// `fs.file-max` minus the files already allocated (`fs.file-nr`).
    pub files_free: Option<u64>,
    pub cpus: u64,
}

fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl Host {
    pub fn probe() -> Host {
        let (nofile_soft, nofile_hard) = sys::nofile_limits().unwrap_or((1024, 1024));
        let port_range = read_proc("/proc/sys/net/ipv4/ip_local_port_range")
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        let somaxconn =
            read_proc("/proc/sys/net/core/somaxconn").and_then(|s| s.trim().parse().ok());
        let files_free = read_proc("/proc/sys/fs/file-nr").and_then(|s| {
            let v: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 3).then(|| v[2].saturating_sub(v[0]))
        });
        Host {
            nofile_soft,
            nofile_hard,
            port_range,
            somaxconn,
            files_free,
            cpus: sys::cpu_count() as u64,
        }
    }

    pub fn ports(&self) -> u64 {
        u64::from(self.port_range.1.saturating_sub(self.port_range.0)) + 1
    }

    /// Connections one worker process may hold.
    pub fn per_worker_capacity(&self) -> u64 {
        self.nofile_hard.saturating_sub(FD_RESERVE)
    }
}

/// The outcome of a preflight that accepted the plan.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub workers: u32,
    pub per_worker_capacity: u64,
    /// Connections the port space allows for this plan's targets and sources.
    pub port_capacity: u64,
    /// The most clients any one (source, destination) pair must carry.
    pub busiest_pair_clients: u64,
    pub host: Host,
    pub lines: Vec<String>,
}

/// Checks the plan against the host; `workers_requested` is `--workers` when given. The steps:
/// worker processes for the open-files limit, ephemeral ports per (source, destination) pair,
/// then the host's source addresses, accept queue and system-wide files.
pub fn check(plan: &Plan, host: &Host, workers_requested: Option<u32>) -> Result<Verdict, String> {
    let mut lines = Vec::new();
    let cap = host.per_worker_capacity();
    let workers = size_workers(plan, host, cap, workers_requested, &mut lines)?;
    let (port_capacity, busiest) = check_ports(plan, host, &mut lines)?;
    check_host(plan, host, &mut lines)?;
    let allowed = port_capacity.min(cap * WORKERS_MAX);
    lines.push(format!(
        "plan: {} clients to {} target(s); this host allows about {allowed} -> ok",
        plan.clients,
        plan.targets.len()
    ));
    Ok(Verdict {
        workers: workers as u32,
        per_worker_capacity: cap,
        port_capacity,
        busiest_pair_clients: busiest,
        host: host.clone(),
        lines,
    })
}

/// The worker processes: enough that none holds more than `cap` sockets (the open-files
/// limit), at least one per CPU when `--workers` is not given, at most [`WORKERS_MAX`].
fn size_workers(
    plan: &Plan,
    host: &Host,
    cap: u64,
    workers_requested: Option<u32>,
    lines: &mut Vec<String>,
) -> Result<u64, String> {
    if cap == 0 {
        return Err(format!(
            "the open-files hard limit is {}, which leaves no room for sockets after the {} \
             descriptors a worker keeps; raise it (ulimit -Hn / LimitNOFILE)",
            host.nofile_hard, FD_RESERVE
        ));
    }
    lines.push(format!(
        "open files: soft {} hard {} -> {} connections per worker process",
        host.nofile_soft, host.nofile_hard, cap
    ));
    if plan.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let needed = plan.clients.div_ceil(cap);
    let workers = match workers_requested {
        Some(0) => return Err("--workers must be at least 1".into()),
        Some(w) if u64::from(w) < needed => {
            return Err(format!(
                "{} clients over {w} worker(s) is {} per worker, above the {cap} sockets one \
                 process may hold (open-files hard limit {}); use --workers {needed} or more, \
                 or leave --workers out to size it automatically",
                plan.clients,
                plan.clients.div_ceil(u64::from(w)),
                host.nofile_hard
            ))
        }
        Some(w) => u64::from(w),
        None => needed.max(host.cpus.min(plan.clients)).max(1),
    };
    let workers = workers.min(plan.clients);
    if workers > WORKERS_MAX {
        return Err(format!(
            "the plan needs {workers} worker processes, more than the {WORKERS_MAX} allowed; \
             raise the open-files hard limit so that each holds more"
        ));
    }
    lines.push(format!(
        "workers: {workers} ({} clients each at most; {} needed for the open-files limit)",
        plan.clients.div_ceil(workers),
        needed
    ));
    Ok(workers)
}

/// Ports: every (source address, destination) pair has its own ephemeral port range, and the
/// busiest pair must fit in it. Returns the port capacity of the plan and the busiest pair's
/// client count.
fn check_ports(plan: &Plan, host: &Host, lines: &mut Vec<String>) -> Result<(u64, u64), String> {
    let ports = host.ports();
    let sources = plan.sources.len().max(1) as u64;
    let targets = plan.targets.len() as u64;
    let mut pair_load: BTreeMap<(usize, SocketAddr), u64> = BTreeMap::new();
    for t in 0..targets {
        let with_target = if t < plan.clients {
            (plan.clients - t).div_ceil(targets)
        } else {
            0
        };
        for s in 0..sources {
            let n = if s < with_target {
                (with_target - s).div_ceil(sources)
            } else {
                0
            };
            *pair_load
                .entry((s as usize, plan.targets[t as usize].addr))
                .or_default() += n;
        }
    }
    let destinations: std::collections::BTreeSet<SocketAddr> =
        plan.targets.iter().map(|t| t.addr).collect();
    let port_capacity = ports * sources * destinations.len() as u64;
    lines.push(format!(
        "ports: ip_local_port_range {}-{} ({ports} ports) x {sources} source address(es) x {} \
         destination(s) -> {port_capacity} connections",
        host.port_range.0,
        host.port_range.1,
        destinations.len()
    ));
    let ((busiest_src, busiest_dst), busiest) = pair_load
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, n)| (*k, *n))
        .expect("at least one target");
    if busiest > ports {
        let src = plan
            .sources
            .get(busiest_src)
            .map_or("the kernel's default source".to_string(), |a| a.to_string());
        return Err(format!(
            "{busiest} clients would connect to {busiest_dst} from {src}, but one (source, \
             destination) pair has only {ports} ephemeral ports (ip_local_port_range {}-{}); \
             add source addresses (--source 127.0.0.2-127.0.0.{}) or more --url targets",
            host.port_range.0,
            host.port_range.1,
            (1 + plan.clients.div_ceil(ports * destinations.len() as u64)).min(254)
        ));
    }
    if plan.storm_drop_fraction > 0.0 || plan.churn_per_s > 0.0 {
        lines.push(
            "note: client-closed sockets (storm drops) hold their port in TIME_WAIT for 60 s; \
             reconnects need spare ports"
                .into(),
        );
    }
    Ok((port_capacity, busiest))
}

/// The host: every source address is local, the accept queue (reported), and enough free
/// file descriptors system-wide.
fn check_host(plan: &Plan, host: &Host, lines: &mut Vec<String>) -> Result<(), String> {
    for src in plan.sources.iter().take(4096) {
        if let Err(e) = UdpSocket::bind(SocketAddr::new((*src).into(), 0)) {
            return Err(format!(
                "source address {src} cannot be bound ({e}); it is not an address of this host"
            ));
        }
    }
    if let Some(s) = host.somaxconn {
        lines.push(format!(
            "somaxconn: {s} (caps each server listener's accept queue; a connect burst above \
             it sees SYN retries of about 1 s)"
        ));
    }
    if let Some(free) = host.files_free {
        lines.push(format!(
            "system files free (fs.file-max - allocated): {free}"
        ));
        if plan.clients > free {
            return Err(format!(
                "{} clients need {} file descriptors but the system has {free} free \
                 (fs.file-max); raise it with sysctl -w fs.file-max=N",
                plan.clients, plan.clients
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse_url;

    fn host() -> Host {
        Host {
            nofile_soft: 1024,
            nofile_hard: 20_000,
            port_range: (32768, 60999),
            somaxconn: Some(4096),
            files_free: Some(10_000_000),
            cpus: 2,
        }
    }

    fn plan(clients: u64, urls: &[&str]) -> Plan {
        let mut p = crate::plan::tests::test_plan();
        p.clients = clients;
        p.targets = urls.iter().map(|u| parse_url(u).unwrap()).collect();
        p
    }

    #[test]
    fn sizes_workers_by_open_files() {
        let v = check(&plan(25_000, &["ws://127.0.0.1:1/"]), &host(), None).unwrap();
        assert_eq!(v.workers, 2);
        let v = check(
            &plan(50_000, &["ws://127.0.0.1:1/", "ws://127.0.0.1:2/"]),
            &host(),
            None,
        )
        .unwrap();
        assert_eq!(v.workers, 3);
        let v = check(&plan(1, &["ws://127.0.0.1:1/"]), &host(), None).unwrap();
        assert_eq!(v.workers, 1);
    }

    #[test]
    fn refuses_too_few_workers() {
        let e = check(&plan(25_000, &["ws://127.0.0.1:1/"]), &host(), Some(1)).unwrap_err();
        assert!(e.contains("--workers 2"), "{e}");
    }

    #[test]
    fn refuses_more_clients_than_ports() {
        let e = check(&plan(30_000, &["ws://127.0.0.1:1/"]), &host(), None).unwrap_err();
        assert!(e.contains("28232 ephemeral ports"), "{e}");
        // The same address twice does not add ports.
        let e = check(
            &plan(60_000, &["ws://127.0.0.1:1/a", "ws://127.0.0.1:1/b"]),
            &host(),
            None,
        )
        .unwrap_err();
        assert!(e.contains("ephemeral ports"), "{e}");
        let mut p = plan(60_000, &["ws://127.0.0.1:1/"]);
        p.sources = crate::plan::parse_sources("127.0.0.2-127.0.0.4").unwrap();
        assert!(check(&p, &host(), None).is_ok());
    }

    #[test]
    fn refuses_unassigned_source() {
        let mut p = plan(10, &["ws://127.0.0.1:1/"]);
        p.sources = vec!["192.0.2.1".parse().unwrap()];
        let e = check(&p, &host(), None).unwrap_err();
        assert!(e.contains("192.0.2.1"), "{e}");
    }
}
