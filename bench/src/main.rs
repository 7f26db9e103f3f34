//! `mapcast-bench`: parse the scenario, run it, report.

use std::process::ExitCode;

use clap::Parser;
use mapcast_bench::BenchArgs;

fn main() -> ExitCode {
    match mapcast_bench::run(BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mapcast-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
