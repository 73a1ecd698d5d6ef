//! `nodeplane`: the node agent (`run`) and its status client (`status`). Only
//! argument parsing and logging set-up live here; everything else is in the
//! library (`control::agent`, `control::status`).

use std::process::ExitCode;

use clap::Parser;
use control::config::{resolve, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NODEPLANE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(args) => {
            let settings = match resolve(&args) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("nodeplane: {e}");
                    return ExitCode::from(2);
                }
            };
            match control::agent::run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nodeplane: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cleanup(args) => match control::cleanup::run(&args.state_dir, args.status_addr) {
            Ok(r) => {
                for (ifname, modes) in &r.programs {
                    println!(
                        "detached nodeplane's XDP program from {ifname} ({})",
                        modes.join(", ")
                    );
                }
                for ifname in &r.tc_filters {
                    println!("removed nodeplane's tc egress filter from {ifname}");
                }
                if r.host_interface {
                    println!(
                        "removed the host interface {} and its routes",
                        control::hostif::KERNEL_END
                    );
                }
                if r.pod_cidr_file {
                    println!(
                        "removed {}",
                        args.state_dir
                            .join(control::podstate::POD_CIDR_FILE)
                            .display()
                    );
                }
                if r.programs.is_empty()
                    && r.tc_filters.is_empty()
                    && !r.host_interface
                    && !r.pod_cidr_file
                {
                    println!("nothing of nodeplane was left on this node");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nodeplane cleanup: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::ServiceEnv(args) => {
            let store = control::store::StoreHandle::new();
            let dir = match control::manifests::load(&args.manifests, &store) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("nodeplane service-env: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // A broken manifest is reported; the others still count.
            for e in dir.errors() {
                eprintln!("nodeplane service-env: {e}");
            }
            let vars = store.read(|s| {
                control::serviceenv::for_namespace(
                    &s.services(),
                    &args.namespace,
                    !args.no_service_links,
                )
            });
            for (k, v) in &vars {
                if args.format == "shell" {
                    println!("export {}", control::serviceenv::shell_line(k, v));
                } else {
                    println!("{k}={v}");
                }
            }
            ExitCode::SUCCESS
        }
        Command::Status(args) => {
            let json = match args.output.as_str() {
                "json" => true,
                "table" | "wide" => false,
                other => {
                    eprintln!(
                        "nodeplane status: unknown output format '{other}' (want table or json)"
                    );
                    return ExitCode::from(2);
                }
            };
            let mut out = std::io::stdout().lock();
            match control::status::print_status(&args.addr, json, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nodeplane status: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
