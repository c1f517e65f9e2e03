//! The `tether-loadgen` binary: a run (coordinator) or, with the hidden `worker` subcommand,
//! one worker process spawned by a coordinator.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("worker") {
        return tether_loadgen::worker::main();
    }
    let argv = match tether_loadgen::scenario::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tether-loadgen: refused: {e}");
            return ExitCode::from(2);
        }
    };
    let args = tether_loadgen::cli::Args::parse_from(argv);
    tether_loadgen::coordinator::main(args)
}
