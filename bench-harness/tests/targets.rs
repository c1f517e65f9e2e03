//! `tether-bench run` judges the targets its scenario declares: exit status 99 when one is
//! missed on the tether row, 0 when all are met; the report says which. Several scenarios run
//! in one invocation (a missed target does not stop the next), `--publish` copies their
//! reports, and a tether row's `bin_dir` runs that folder's build. Runs tiny scenarios against
//! the real `tether` and `tether-loadgen` binaries of the same build profile.

use std::path::PathBuf;
use std::process::Command;

/// The folder of this test's `tether-bench`, which must also hold `tether` and
/// `tether-loadgen` (built by `cargo build --workspace` or `cargo test --workspace`).
fn bin_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_tether-bench"))
        .parent()
        .expect("a folder")
        .to_path_buf();
    for b in ["tether", "tether-loadgen"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build it with `cargo build --workspace --bins` (same profile)",
            dir.join(b).display()
        );
    }
    dir
}

fn scenario(name: &str, at_least: u64) -> String {
    scenario_with(name, at_least, "")
}

/// `row` is added to the tether row (`bin_dir = "..."`).
fn scenario_with(name: &str, at_least: u64, row: &str) -> String {
    format!(
        r#"name = "{name}"
description = "50 clients, a target on the handshakes that completed"
repetitions = 3
settle_ms = 100
cooldown_ms = 100
[loadgen]
clients = 50
rate = 500
hold_s = 0.2
timeout_s = 60
[[server]]
kind = "tether"
shards = 1
{row}
[[metric]]
key = "handshakes_ok"
label = "handshakes ok"
better = "higher"
[[target]]
description = "every client upgraded"
key = "handshakes_ok"
at_least = {at_least}
"#
    )
}

fn run(name: &str, at_least: u64) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("tether-bench-targets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, scenario(name, at_least)).expect("scenario written");
    let out = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
        .arg("run")
        .arg(&path)
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .expect("tether-bench runs");
    let report = std::fs::read_to_string(dir.join("out").join(name).join("report.md"))
        .unwrap_or_else(|e| {
            panic!(
                "no report ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), stdout, report)
}

#[test]
fn a_missed_target_exits_99_and_a_met_one_0() {
    let (code, stdout, report) = run("missed", 51);
    assert_eq!(code, Some(99), "{stdout}\n{report}");
    assert!(
        stdout.contains("target MISSED: every client upgraded"),
        "{stdout}"
    );
    assert!(
        report.contains("| every client upgraded | tether (1 shards) | **missed** |"),
        "{report}"
    );

    let (code, stdout, report) = run("met", 50);
    assert_eq!(code, Some(0), "{stdout}\n{report}");
    assert!(
        stdout.contains("target met: every client upgraded"),
        "{stdout}"
    );
}

#[test]
fn scenarios_run_in_turn_are_published_and_rows_take_their_build() {
    let dir = std::env::temp_dir().join(format!("tether-bench-several-{}", std::process::id()));
    let other = dir.join("other-build");
    std::fs::create_dir_all(&other).expect("temp dir");
    let bins = bin_dir();
    std::os::unix::fs::symlink(bins.join("tether"), other.join("tether")).expect("symlink");
    let first = dir.join("first.toml");
    std::fs::write(&first, scenario("first", 51)).expect("written");
    let second = dir.join("second.toml");
    let row = format!(
        "bin_dir = {:?}\nlabel = \"other build\"",
        other.display().to_string()
    );
    std::fs::write(&second, scenario_with("second", 50, &row)).expect("written");
    let out = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
        .arg("run")
        .arg(&first)
        .arg(&second)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--publish")
        .arg(dir.join("pub"))
        .output()
        .expect("tether-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The first scenario's missed target is the exit status; the second still ran.
    assert_eq!(out.status.code(), Some(99), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("target MISSED: every client upgraded on tether"),
        "{stdout}"
    );
    assert!(
        stdout.contains("target met: every client upgraded on other build"),
        "{stdout}"
    );
    for name in ["first", "second"] {
        for file in ["report.md", "results.json"] {
            assert!(
                dir.join("pub").join(name).join(file).is_file(),
                "{name}/{file} not published"
            );
        }
    }
    let results = std::fs::read_to_string(dir.join("out/second/results.json")).expect("results");
    assert!(
        results.contains(&other.join("tether").display().to_string()),
        "{results}"
    );

    // A row whose folder holds no tether fails the run with the path it looked for.
    let missing = dir.join("missing.toml");
    std::fs::write(
        &missing,
        scenario_with("missing", 50, "bin_dir = \"no-such-build\""),
    )
    .expect("written");
    let out = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
        .arg("run")
        .arg(&missing)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .expect("tether-bench runs");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("no-such-build/tether not built"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}
