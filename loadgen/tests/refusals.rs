//! Impossible plans are refused before anything connects, with the reason and the fix.

mod common;

use std::process::Command;

/// A refusal by the preflight: exit status 2 and a `refused:` line; returns stderr.
fn refused(args: &[&str]) -> String {
    let stderr = common::usage_refused(args);
    assert!(stderr.contains("refused:"), "{stderr}");
    stderr
}

#[test]
fn more_clients_than_ports_to_one_destination() {
    let e = refused(&[
        "--url",
        "ws://127.0.0.1:9/",
        "--clients",
        "1000000",
        "--rate",
        "1000",
    ]);
    assert!(e.contains("ephemeral ports"), "{e}");
    assert!(e.contains("--source"), "{e}");
}

#[test]
fn too_few_workers_for_the_open_files_limit() {
    let e = refused(&[
        "--url",
        "ws://127.0.0.1:9/",
        "--clients",
        "25000",
        "--workers",
        "1",
    ]);
    assert!(e.contains("open-files"), "{e}");
}

#[test]
fn device_token_secrets_a_node_would_refuse() {
    let e = refused(&[
        "--url",
        "ws://127.0.0.1:9/ws",
        "--clients",
        "1",
        "--workload",
        "d2d",
        "--device-jwt-secret",
        "short",
    ]);
    assert!(e.contains("--device-jwt-secret"), "{e}");
    assert!(e.contains("5 bytes"), "{e}");
    let e = refused(&[
        "--url",
        "ws://127.0.0.1:9/echo",
        "--clients",
        "1",
        "--device-jwt-secret",
        "lg-test-secret-0123456789",
    ]);
    assert!(e.contains("echo workload"), "{e}");
}

#[test]
fn bad_urls_sources_and_sizes() {
    let e = refused(&["--url", "http://127.0.0.1:9/", "--clients", "1"]);
    assert!(e.contains("must start with ws:// or wss://"), "{e}");
    let e = refused(&["--url", "ws://127.0.0.1:9/", "--clients", "1", "--insecure"]);
    assert!(e.contains("for wss:// URLs"), "{e}");
    let e = refused(&[
        "--url",
        "ws://127.0.0.1:9/",
        "--clients",
        "1",
        "--source",
        "192.0.2.1",
    ]);
    assert!(e.contains("192.0.2.1"), "{e}");
    let e = refused(&[
        "--url",
        "ws://127.0.0.1:9/",
        "--clients",
        "1",
        "--msg-size",
        "8",
    ]);
    assert!(e.contains("--msg-size"), "{e}");
    let e = refused(&["--url", "ws://127.0.0.1:9/", "--clients", "0"]);
    assert!(e.contains("--clients"), "{e}");
    let e = refused(&[
        "--url",
        "ws://127.0.0.1:9/",
        "--clients",
        "10",
        "--rate",
        "10:100",
    ]);
    assert!(e.contains("--ramp"), "{e}");
}

#[test]
fn a_possible_plan_passes_the_preflight() {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
        .args([
            "--url",
            "ws://127.0.0.1:9/",
            "--url",
            "ws://127.0.0.1:10/",
            "--clients",
            "50000",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("preflight: open files"), "{stdout}");
    assert!(stdout.contains("preflight: ports"), "{stdout}");
    assert!(stdout.contains("somaxconn"), "{stdout}");
    // 50,000 clients need 3 workers under a 20,000 hard limit.
    let hard = std::fs::read_to_string("/proc/self/limits").unwrap();
    if hard.contains("Max open files            20000") {
        assert!(stdout.contains("workers: 3"), "{stdout}");
    }
}
