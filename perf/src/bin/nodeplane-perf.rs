//! `nodeplane-perf`: measurement tools for nodeplane. Argument parsing only; the
//! tools live in the library (`perf::pipeline_bench`, `gen`, `sink`, `suite`).

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
    /// In-memory cluster DNS answers per second (no I/O, one core).
    Dns(perf::dns_bench::DnsArgs),
    /// AF_XDP traffic generator (UDP, TCP or VXLAN frames carrying probes).
    Gen(Box<perf::gen::GenArgs>),
    /// Receives the generator's UDP probes: loss, reordering, one-way latency.
    Sink(perf::sink::SinkArgs),
    /// The end-to-end suite against the kernel path (root; builds its own labs).
    Bench(perf::suite::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Pipeline(args) => {
            let r = perf::pipeline_bench::run_all(&args)?;
            perf::pipeline_bench::print(&r, args.json)
        }
        Command::Dns(args) => {
            let r = perf::dns_bench::run(&args)?;
            perf::dns_bench::print(&r, args.json)
        }
        Command::Gen(args) => {
            let r = perf::gen::run(&args)?;
            perf::gen::print(&r, args.json)
        }
        Command::Sink(args) => {
            let r = perf::sink::run(&args)?;
            perf::sink::print(&r, args.json)
        }
        Command::Bench(args) => {
            let r = perf::suite::run(&args)?;
            let summary = perf::report::write(&r, &args.out)?;
            println!("{summary}");
            println!("results, report and plots in {}", args.out.display());
            Ok(())
        }
    }
}
