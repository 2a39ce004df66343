//! `tern-bench`: the load generator on its own (the `tern` binary offers the same as
//! `tern bench`).

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "tern-bench",
    version,
    about = "MQTT load generator and benchmark for Tern and other brokers"
)]
struct Cli {
    #[command(flatten)]
    args: tern_bench::BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match tern_bench::run_blocking(cli.args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
