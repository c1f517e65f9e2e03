//! `tether-bench`: runs side-by-side scenarios (tether against peer servers on one loadgen
//! schedule) and writes their reports.
//!
//! ```text
//! tether-bench run bench-harness/scenarios/handshake-saturation.toml
//! tether-bench run bench-harness/scenarios/*.toml --publish docs/bench
//! tether-bench run bench-harness/scenarios/prove-300k.toml --repetitions 1 \
//!     --set loadgen.clients=30000 --set server.nodes=3
//! tether-bench report target/bench/handshake-saturation/results.json
//! tether-bench check bench-harness/scenarios/*.toml
//! tether-bench hostile --bin-dir before --bin-dir after parked 1000 1048576
//! ```
//!
//! `run` runs its scenarios one after the other. It exits with status 99 when a `[[target]]` is
//! missed on a tether row (after writing the report, which says which and by how much, and
//! running the scenarios that follow), 1 on an error (at once), 0 otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether_bench::report::{self, TargetOutcome};
use tether_bench::results::Results;
use tether_bench::runner::{self, RunConfig};
use tether_bench::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "tether-bench",
    version,
    about = "Side-by-side WebSocket server benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios, one after the other, against every server each names; writes
    /// target/bench/<scenario>/.
    Run {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Folder with the release binaries [default: ${CARGO_TARGET_DIR:-target}/release].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Output root [default: ${CARGO_TARGET_DIR:-target}/bench].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the scenario's repetitions. Fewer than 3 gives no spread: for smoke runs
        /// and for a proof that takes the whole machine.
        #[arg(long)]
        repetitions: Option<u32>,
        /// Override a key of the scenario file: `KEY=VALUE` with a dotted KEY
        /// (`loadgen.clients=30000`, `probe.devices=100`); `server.KEY` sets it on every
        /// row (`server.nodes=3`). Repeatable; recorded with the command line.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Only servers whose label contains this or whose kind is this (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Also copy each scenario's report.md, results.json and plots to DIR/<scenario>/
        /// (docs/bench for the published results).
        #[arg(long, value_name = "DIR")]
        publish: Option<PathBuf>,
    },
    /// Hostile clients against each build in turn (folders holding `tether`, 2 shards): `parked
    /// N FRAME_BYTES`, `fanout N` or `admin SECONDS`; one JSON line per build (see
    /// docs/benchmarks.md, "Hostile clients").
    Hostile {
        /// A folder holding a `tether` build (repeatable: the builds run in this order).
        #[arg(long = "bin-dir", required = true)]
        builds: Vec<PathBuf>,
        /// Logs go to DIR/hostile/logs [default: ${CARGO_TARGET_DIR:-target}/bench].
        #[arg(long)]
        out: Option<PathBuf>,
        /// `parked N FRAME_BYTES`, `fanout N` or `admin SECONDS`.
        #[arg(required = true, num_args = 2..=3)]
        what: Vec<String>,
    },
    /// Re-render report.md and the plots from a results.json (into its folder).
    Report { results: PathBuf },
    /// Parse and validate scenario files.
    Check {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
}

/// The repository: the nearest ancestor of the working directory holding `bench-harness/`.
fn repo_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .find(|d| d.join("bench-harness/peers/ws-echo.mjs").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(cwd)
}

fn target_dir(repo: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo.join("target"),
    }
}

/// Exit status of a run in which a declared target was missed (as `tether-loadgen` uses for a
/// crossed threshold).
const EXIT_TARGET_MISSED: u8 = 99;

/// Prints the targets' outcomes; true if one was missed.
fn print_targets(outcomes: &[TargetOutcome]) -> bool {
    for o in outcomes {
        println!(
            "target {}: {} on {}: {}",
            if o.met { "met" } else { "MISSED" },
            o.description,
            o.server,
            o.detail
        );
    }
    outcomes.iter().any(|o| !o.met)
}

/// Copies a run's report.md, results.json and SVG plots from `dir` into `to`.
fn publish_report(dir: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "report.md" || name == "results.json" || name.ends_with(".svg") {
            std::fs::copy(&path, to.join(name))
                .map_err(|e| format!("copy {} to {}: {e}", path.display(), to.display()))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run {
            scenarios,
            bin_dir,
            out,
            repetitions,
            sets,
            only,
            publish,
        } => (|| {
            match repetitions {
                Some(0) => return Err("--repetitions must be at least 1".to_string()),
                Some(r) if r < tether_bench::scenario::REPETITIONS_MIN => eprintln!(
                    "tether-bench: --repetitions {r}: fewer than {} runs give no spread",
                    tether_bench::scenario::REPETITIONS_MIN
                ),
                _ => {}
            }
            // Every file is checked before the first run starts.
            let loaded = scenarios
                .iter()
                .map(|path| {
                    Scenario::load_with(path, &sets).map_err(|e| format!("{}: {e}", path.display()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let repo = repo_root();
            let target = target_dir(&repo);
            let cfg = RunConfig {
                bin_dir: bin_dir.unwrap_or_else(|| target.join("release")),
                out_root: out.unwrap_or_else(|| target.join("bench")),
                repo_root: repo,
                repetitions,
                only,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let mut missed = false;
            for sc in &loaded {
                let dir = runner::run(sc, &cfg)?;
                println!("{}", dir.join("report.md").display());
                if let Some(root) = &publish {
                    publish_report(&dir, &root.join(&sc.name))?;
                }
                let results = Results::load(&dir.join("results.json"))?;
                missed |= print_targets(&report::check_targets(&results));
            }
            Ok(missed)
        })(),
        Cmd::Hostile { builds, out, what } => (|| {
            let what = tether_bench::hostile::Hostile::parse(&what)?;
            let repo = repo_root();
            let target = target_dir(&repo);
            // Relative build folders are taken from the working directory.
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            let builds: Vec<PathBuf> = builds.iter().map(|b| cwd.join(b)).collect();
            let cfg = RunConfig {
                bin_dir: cwd,
                out_root: out.unwrap_or_else(|| target.join("bench")),
                repo_root: repo,
                repetitions: None,
                only: Vec::new(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            tether_bench::hostile::run(what, &builds, &cfg)?;
            Ok(false)
        })(),
        Cmd::Report { results } => (|| {
            let r = Results::load(&results)?;
            let dir = results.parent().unwrap_or(Path::new("."));
            for f in report::write_report(&r, dir)? {
                println!("{}", f.display());
            }
            // Re-rendering reports the targets but does not judge them again.
            print_targets(&report::check_targets(&r));
            Ok(false)
        })(),
        Cmd::Check { scenarios } => (|| {
            for path in &scenarios {
                let sc = Scenario::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
                println!(
                    "{}: ok ({} servers, {} metrics, {} targets, {} repetitions)",
                    path.display(),
                    sc.servers.len(),
                    sc.metrics.len(),
                    sc.targets.len(),
                    sc.repetitions
                );
            }
            Ok(false)
        })(),
    };
    match result {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => {
            eprintln!("tether-bench: a declared target was missed (see the report)");
            ExitCode::from(EXIT_TARGET_MISSED)
        }
        Err(e) => {
            eprintln!("tether-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
