//! `nodeplane-perf`: measurement tools for nodeplane.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nodeplane-perf",
    version,
    about = "nodeplane measurement tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// In-memory pipeline micro-benchmark (no I/O, one core).
    Pipeline(perf::pipeline_bench::PipelineArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Pipeline(args) => {
            let r = perf::pipeline_bench::run(&args)?;
            perf::pipeline_bench::print(&r, args.json)
        }
    }
}
