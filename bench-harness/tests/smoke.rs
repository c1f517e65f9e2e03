//! Smoke test of the bench harness without running any benchmark: every scenario file parses and
//! validates, and the report writer turns a fixed `results.json` into the expected table,
//! ratios, target verdicts and plots.

use std::path::{Path, PathBuf};

use tether_bench::report::{self, check_targets};
use tether_bench::results::Results;
use tether_bench::scenario::{Scenario, ServerKind};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_scenario_file_parses() {
    let dir = crate_dir().join("scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let sc = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(sc.repetitions >= 3, "{}", path.display());
        assert!(
            sc.servers.iter().any(|s| s.kind == ServerKind::Tether),
            "{}: no tether server",
            path.display()
        );
        // A baseline in the same run: a Rust peer, or a second tether row (another bus, node
        // count or rate). The proof is a verdict on one deployment, not a comparison.
        assert!(
            sc.name == "prove-300k"
                || sc.servers.iter().any(|s| s.kind.is_rust_peer())
                || sc.servers.len() >= 2,
            "{}: nothing to compare with",
            path.display()
        );
        names.push(sc.name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "durable-delivery",
            "durable-memory",
            "echo-saturation-1k",
            "echo-saturation-64",
            "echo-throughput",
            "handshake-10k",
            "handshake-cpu",
            "handshake-saturation",
            "idle-memory",
            "idle-memory-19k",
            "natsws-idle-memory",
            "natsws-routed",
            "nodes-17-vs-2",
            "prove-300k",
            "routed-saturation",
            "tls-handshake-full-ecdsa",
            "tls-handshake-full-rsa",
            "tls-handshake-latency-ecdsa",
            "tls-handshake-latency-rsa",
            "tls-idle-memory",
            "tls-storm-off-ecdsa",
            "tls-storm-off-rsa",
            "tls-storm-on-ecdsa",
            "tls-storm-on-rsa",
            "ws-idle-memory",
        ]
    );
}

fn fixture() -> Results {
    Results::load(&crate_dir().join("tests/data/results-fixture.json")).unwrap()
}

#[test]
fn report_from_fixed_results() {
    let results = fixture();
    let md = report::render_markdown(&results, &[]);
    let expect = [
        "# Scenario `fixture`",
        "| server | connects/s ↑ | handshake p99 µs ↓ | handshakes ok ↑ |",
        // Medians with min–max; the failed tungstenite run (99,999/s) does not count.
        "| tether (2 shards) | 21,000 (20,000–22,000) | 10,000 (9,000–12,000) | 1,000 (1,000–1,000) |",
        "| tokio-tungstenite | 15,000 (14,000–16,000) | 25,000 (20,000–30,000) |",
        "| node ws | skipped: Node `ws` not installed",
        // Ratios to the best Rust peer (fastwebsockets on both metrics) and the raw ceiling.
        "| connects/s | tether (2 shards) | 1.17× (fastwebsockets 18,000) | 0.84× (25,000) |",
        "| handshake p99 µs | tether (2 shards) | 1.50× (fastwebsockets 15,000) | 0.50× (5,000) |",
        "| rate ≥ 20,000/s | tether (2 shards) | met | 21,000 ≥ 20,000 (margin 5.0%) |",
        "| rate ≥ 90% of raw | tether (2 shards) | **missed** | 84.0% of raw ceiling 25,000 (< 90.0%: missed by 6.0 points) |",
        "| rate ahead of best Rust peer | tether (2 shards) | met | ahead of fastwebsockets 18,000 (1.17×) |",
        "| p99 ≤ 20 ms | tether (2 shards) | met | 10,000 ≤ 20,000 (margin 50.0%) |",
        "  - run 4 failed: loadgen exited with exit status: 1: refused",
        "- Machine: 2 CPUs, kernel 6.18.0-test, rustc 1.95.0;",
    ];
    for line in expect {
        assert!(md.contains(line), "report lacks {line:?}:\n{md}");
    }
    // Context metrics (compare = false) get no ratio row.
    assert!(!md.contains("| handshakes ok | tether"), "{md}");
    let outcomes = check_targets(&results);
    assert_eq!(
        outcomes.iter().map(|o| o.met).collect::<Vec<_>>(),
        [true, false, true, true]
    );
}

#[test]
fn report_files_and_plots_are_written() {
    let dir = std::env::temp_dir().join(format!("tether-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files = report::write_report(&fixture(), &dir).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "report.md",
        "handshake-latency-us.svg",
        "loadgen-connects.svg",
        "connections.svg",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // The fixture's CPU and RSS timelines are the same for every server: nothing to tell
    // apart, so no plot (and none for the dropped Δ-fds connect rate).
    for unwanted in ["cpu.svg", "rss.svg", "connect-rate.svg"] {
        assert!(
            !names.iter().any(|n| n == unwanted),
            "{unwanted} in {names:?}"
        );
    }
    // No messages in the fixture: no message plots.
    assert!(!names.iter().any(|n| n.contains("message")), "{names:?}");
    let svg = std::fs::read_to_string(dir.join("handshake-latency-us.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    for label in ["tether (2 shards)", "fastwebsockets", "raw epoll 101"] {
        assert!(svg.contains(label), "latency plot has no {label}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("](handshake-latency-us.svg)"), "{md}");
    assert!(md.contains("](connections.svg)"), "{md}");
    assert!(!md.contains("](cpu.svg)"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!Path::new(&dir).exists());
}
