//! tether-loadgen as a CI gate, against real `tether` nodes: thresholds (exit status 99 when
//! one is crossed, 0 when all hold), a scenario file, and Ctrl-C (SIGINT) ending a run with a
//! summary, the JSON report and close frames (the node counts 1000 closes, no 1006).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, metric_sum, scratch, tether_node, tether_node_with, u};

fn code(run: &common::Run) -> Option<i32> {
    run.output.status.code()
}

#[test]
fn a_crossed_threshold_exits_99_with_a_table() {
    // The node admits 40 connections; the other 60 clients get 503.
    let node = tether_node_with(1, &["--max-connections", "40"]);
    let url = format!("ws://127.0.0.1:{}/echo", node.port);
    let run = common::loadgen(&[
        "--url",
        &url,
        "--clients",
        "100",
        "--rate",
        "500",
        "--hold",
        "1s",
        "--quiet",
        "--threshold",
        "errors==0",
        "--threshold",
        "handshake_p99 < 30s",
    ]);
    assert_eq!(code(&run), Some(99), "{}\n{}", run.stdout(), run.stderr());
    let v = run.json();
    assert_eq!(u(v, "schema_version"), 1);
    assert_eq!(u(v, "handshakes_ok"), 40, "{v:#}");
    // Each refused client reads the 503 (or, past the node's lingering budget for refused
    // sockets, may see the connection reset under it).
    assert_eq!(u(v, "handshake_errors_total"), 60, "{v:#}");
    assert!(u(v, "handshake_errors.status_503") > 0, "{v:#}");
    let t = v["thresholds"]
        .as_array()
        .expect("thresholds in the report");
    assert_eq!(t.len(), 2);
    assert_eq!(t[0]["threshold"], "errors==0");
    assert_eq!(t[0]["actual"], 60.0);
    assert_eq!(t[0]["ok"], false);
    assert_eq!(t[1]["ok"], true, "{v:#}");
    let out = run.stdout();
    assert!(out.contains("== thresholds"), "{out}");
    let crossed = out
        .lines()
        .find(|l| l.trim_start().starts_with("errors==0"))
        .unwrap_or_else(|| panic!("no errors==0 row in\n{out}"));
    assert!(
        crossed.ends_with("CROSSED") && crossed.contains(" 60 "),
        "{crossed}"
    );
    assert!(out.contains("1 of 2 thresholds crossed"), "{out}");
}

#[test]
fn thresholds_that_hold_exit_0_and_a_scenario_file_sets_the_options() {
    let node = tether_node(1);
    let scenario = scratch("gate.toml");
    std::fs::write(
        &scenario,
        format!(
            "url = [\"ws://127.0.0.1:{}/echo\"]\nclients = 100\nrate = 500\nhold = \"1s\"\n\
             quiet = true\nthreshold = [\"errors==0\", \"handshake_p99<30s\", \"connected_peak>=100\"]\n",
            node.port
        ),
    )
    .expect("scenario written");
    let run = common::loadgen(&["--scenario", scenario.to_str().expect("utf-8 path")]);
    assert_eq!(code(&run), Some(0), "{}\n{}", run.stdout(), run.stderr());
    let v = run.json();
    assert_eq!(u(v, "handshakes_ok"), 100, "{v:#}");
    assert_eq!(v["scenario"], scenario.display().to_string());
    let t = v["thresholds"].as_array().expect("thresholds");
    assert_eq!(t.len(), 3, "{v:#}");
    assert!(t.iter().all(|o| o["ok"] == true), "{v:#}");
    // The command line wins over the file: one threshold that cannot hold.
    let run = common::loadgen(&[
        "--scenario",
        scenario.to_str().expect("utf-8 path"),
        "--threshold",
        "handshakes_ok>100",
    ]);
    assert_eq!(code(&run), Some(99), "{}\n{}", run.stdout(), run.stderr());
    assert_eq!(run.json()["thresholds"].as_array().map(Vec::len), Some(1));
    // A threshold it cannot read refuses the plan before anything connects.
    let run = common::loadgen(&[
        "--scenario",
        scenario.to_str().unwrap(),
        "--threshold",
        "handshake_p99<20",
    ]);
    assert_eq!(code(&run), Some(2), "{}", run.stderr());
    assert!(run.stderr().contains("needs a unit"), "{}", run.stderr());
}

#[test]
fn sigint_drains_with_1000_closes_and_prints_the_summary() {
    let node = tether_node(2);
    let json = scratch("interrupted.json");
    let clients = 200u64;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
        .args(["--url", &format!("ws://127.0.0.1:{}/echo", node.port)])
        .args(["--clients", &clients.to_string(), "--rate", "400"])
        .args(["--hold", "10m", "--workers", "2", "--msg-rate", "2"])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether-loadgen runs");
    // Wait (bounded) until the node holds every client.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = metric_sum(
            &http_get(node.admin_port, "/metrics"),
            "tether_connections",
            "",
        );
        if held == clients {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node holds {held} of {clients} clients after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGINT to the coordinator only, as a terminal's Ctrl-C (the workers have a group of
    // their own).
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let stdout = child.stdout.take().expect("stdout");
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "loadgen still running 60 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    let out = lines.join("\n");
    assert_eq!(status.code(), Some(130), "{out}\n{stderr}");
    assert!(out.contains("== summary (INTERRUPTED"), "{out}");
    assert!(
        stderr.contains("interrupted: stopping the schedule"),
        "{stderr}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).expect("JSON");
    assert_eq!(v["interrupted"], true);
    assert_eq!(u(&v, "handshakes_ok"), clients, "{v:#}");
    assert_eq!(u(&v, "closes.clean"), clients, "{v:#}");
    // The node saw a close handshake with 1000 on every connection and none ended without one
    // (its counters move as each connection task ends: wait for them, bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = http_get(node.admin_port, "/metrics");
        let (c1000, c1006) = (
            metric_sum(&m, "tether_closes_total", "code=\"1000\""),
            metric_sum(&m, "tether_closes_total", "code=\"1006\""),
        );
        assert_eq!(c1006, 0, "{m}");
        if c1000 == clients {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "1000 closes: {c1000} of {clients}\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
