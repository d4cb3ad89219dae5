//! `callbridge simulate`: the simulator as a standalone process.

use super::SimulatorConfig;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `callbridge simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Simulator settings (TOML, see docs/simulator.md); `CALLBRIDGE_SIMULATOR__*` overrides.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides `listen` in the file).
    #[arg(long)]
    pub listen: Option<String>,
}

/// Loads the settings: defaults, then the file, then the environment, then `--listen`.
pub fn load(args: &SimulateArgs) -> Result<SimulatorConfig, String> {
    let mut figment = Figment::from(Serialized::defaults(SimulatorConfig::default()));
    if let Some(p) = &args.config {
        if !p.exists() {
            return Err(format!("--config: {} does not exist", p.display()));
        }
        figment = figment.merge(Toml::file(p));
    }
    figment = figment.merge(Env::prefixed("CALLBRIDGE_SIMULATOR__").split("__"));
    if let Some(listen) = &args.listen {
        figment = figment.merge(Serialized::default("listen", listen));
    }
    figment.extract().map_err(|e| {
        e.into_iter()
            .map(|e| {
                let key = e.path.join(".");
                format!("{key}: {}", e.kind)
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Runs the simulator until Ctrl-C / SIGTERM.
pub async fn run(args: SimulateArgs) -> ExitCode {
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("simulator configuration error:\n{e}");
            return ExitCode::from(64);
        }
    };
    let sim = match super::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simulator failed to start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("GoTo Connect simulator listening on {}", sim.base_url());
    println!("  API and OAuth base URL: {}", sim.base_url());
    println!("  control:                {}/_simulator/", sim.base_url());
    crate::telemetry::shutdown_signal().await;
    sim.shutdown().await;
    ExitCode::SUCCESS
}
