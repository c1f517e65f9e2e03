//! `tether-bench`: runs side-by-side scenarios (tether against peer servers on one loadgen
//! schedule) and writes their reports.
//!
//! ```text
//! tether-bench run bench-harness/scenarios/handshake-saturation.toml
//! tether-bench run bench-harness/scenarios/prove-300k.toml --repetitions 1 \
//!     --set loadgen.clients=30000 --set server.nodes=3
//! tether-bench report target/bench/handshake-saturation/results.json
//! tether-bench check bench-harness/scenarios/*.toml
//! ```
//!
//! `run` exits with status 99 when a `[[target]]` of the scenario is missed on a tether row
//! (after writing the report, which says which and by how much), 1 on an error, 0 otherwise.

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
    /// Run a scenario against every server it names; writes target/bench/<scenario>/.
    Run {
        scenario: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run {
            scenario,
            bin_dir,
            out,
            repetitions,
            sets,
            only,
        } => (|| {
            let sc = Scenario::load_with(&scenario, &sets)
                .map_err(|e| format!("{}: {e}", scenario.display()))?;
            match repetitions {
                Some(0) => return Err("--repetitions must be at least 1".to_string()),
                Some(r) if r < tether_bench::scenario::REPETITIONS_MIN => eprintln!(
                    "tether-bench: --repetitions {r}: fewer than {} runs give no spread",
                    tether_bench::scenario::REPETITIONS_MIN
                ),
                _ => {}
            }
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
            let dir = runner::run(&sc, &cfg)?;
            println!("{}", dir.join("report.md").display());
            let results = Results::load(&dir.join("results.json"))?;
            Ok(print_targets(&report::check_targets(&results)))
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
