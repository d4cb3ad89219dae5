//! The `callbridge` binary: a thin command line over the library.
//!
//! Exit codes: 0 success, 1 runtime failure (or an imperfect demo stream), 64 bad usage or
//! configuration (`EX_USAGE`).

use callbridge::config::{BridgeConfig, LoadError};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "callbridge",
    version,
    about = "GoTo Connect call events → gap-free, ordered Kafka streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge.
    Run {
        /// Configuration file (TOML); `CALLBRIDGE_*` environment variables override it.
        #[arg(long, short, env = "CALLBRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and explain every problem.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, env = "CALLBRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run a local GoTo Connect simulator.
    Simulate(callbridge::simulator::cli::SimulateArgs),
    /// Run the whole pipeline on embedded defaults and verify the stream it produced.
    Demo(callbridge::demo::DemoArgs),
    /// Measure throughput, latency, CPU and memory end to end, beside the HTTP and Kafka
    /// ceilings (needs tansu; see docs/performance.md).
    Bench(callbridge::bench::BenchArgs),
    /// The benchmark's load generator (started by `bench`).
    #[command(hide = true)]
    BenchLoad,
    /// The benchmark's bare HTTP server (started by `bench`).
    #[command(hide = true)]
    BenchSink,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match BridgeConfig::load(config.as_deref()) {
            Ok(_) => {
                println!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(&e),
        },
        Command::Run { config } => {
            tune_allocator();
            let config = match BridgeConfig::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => return usage_error(&e),
            };
            callbridge::telemetry::init(&config.log.format, &config.log.level);
            runtime().block_on(async {
                match callbridge::app::run(config, callbridge::telemetry::shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = %e, "callbridge stopped");
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Simulate(args) => {
            callbridge::telemetry::init("human", "info");
            runtime().block_on(callbridge::simulator::cli::run(args))
        }
        Command::Bench(args) => {
            callbridge::telemetry::init("human", "warn");
            runtime().block_on(callbridge::bench::run(args))
        }
        Command::BenchLoad => {
            callbridge::telemetry::init("human", "warn");
            runtime().block_on(callbridge::bench::load::run())
        }
        Command::BenchSink => runtime().block_on(callbridge::bench::sink::run()),
        Command::Demo(args) => {
            tune_allocator();
            // Gap records are expected in the demo; keep its table readable (RUST_LOG overrides).
            callbridge::telemetry::init("human", "error");
            runtime().block_on(callbridge::demo::run(args))
        }
    }
}

fn usage_error(e: &LoadError) -> ExitCode {
    eprintln!("configuration error:\n{e}");
    ExitCode::from(64)
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// Turns glibc's fastbins off (`M_MXFAST` 0) in the bridge's process (`run`, `demo`; not the
/// benchmark's load generator and sink, so the ceilings stay comparable), unless
/// `GLIBC_TUNABLES` sets `mxfast` itself: an operator can turn them back on that way.
///
/// With fastbins, every allocation of 1 KiB or more first merges every freed small block
/// (`malloc_consolidate`), and most states' record values are such an allocation, among many
/// small ones (headers, librdkafka's messages). The profile found `malloc_consolidate` in 25 of
/// the 40 samples of rendering a record value; without fastbins small blocks still come from
/// glibc's per-thread cache (docs/performance.md, "Session 20").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mxfast")) {
        return;
    }
    // SAFETY: `mallopt` only sets a parameter of the allocator, and it runs first in `main`,
    // before this process starts any thread.
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
