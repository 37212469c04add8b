//! `capwin`: one binary, several subcommands.
//!
//! - `capwin crds [--out-dir DIR]`: print (or write) every CRD generated from the Rust types.
//! - `capwin render --config FILE ...`: render a `WindowsKubeadmConfig` into the payload bytes.
//! - `capwin manager [flags]`: run the controllers.
//! - `capwin bench scale --machines N --cloud aws|azure`: the test kit with N machines and two
//!   manager processes; counts API requests, cloud calls, CPU and memory per machine.
//! - `capwin sandbox`: the test kit, a cluster template from `templates/` with a local cloud
//!   (moto or the fake ARM), and the controllers, end to end.
//! - `capwin release --version vX.Y.Z`: the clusterctl repository layout.

#[cfg(feature = "kit")]
mod bench;
mod leader;
mod manager;
mod metrics_auth;
mod release;
mod render;
#[cfg(feature = "kit")]
mod sandbox;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "capwin", version, about = "Cluster API provider for Windows worker nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every capwin CRD as a multi-document YAML stream.
    Crds {
        /// Write the files of `crds/` into this folder instead: per provider a folder with one file
        /// per CRD and a kustomization.yaml.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Render a WindowsKubeadmConfig into its cloudbase-init payload, printed to stdout.
    Render(render::RenderArgs),
    /// Run the controllers against the management cluster.
    Manager(Box<manager::ManagerArgs>),
    /// Bring up the test kit, apply a cluster template against a local cloud and watch it join.
    #[cfg(feature = "kit")]
    Sandbox(sandbox::SandboxArgs),
    /// Measure capwin on the test kit: `bench scale --machines N --cloud aws|azure`.
    #[cfg(feature = "kit")]
    Bench(bench::BenchArgs),
    /// Write a clusterctl repository layout (components, metadata, templates) for a version.
    Release(release::ReleaseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { out_dir } => crds(out_dir),
        Command::Render(args) => render::run(args),
        Command::Manager(args) => runtime().and_then(|rt| rt.block_on(manager::run(*args))),
        #[cfg(feature = "kit")]
        Command::Sandbox(args) => runtime().and_then(|rt| rt.block_on(sandbox::run(args))),
        #[cfg(feature = "kit")]
        Command::Bench(args) => runtime().and_then(|rt| rt.block_on(bench::run(args))),
        Command::Release(args) => release::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capwin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::Write;
    match out_dir {
        None => std::io::stdout().write_all(capwin_api::crds::all_yaml().as_bytes())?,
        Some(dir) => {
            for (file, text) in capwin_api::crds::files() {
                let path = dir.join(file);
                std::fs::create_dir_all(path.parent().unwrap_or(&dir))?;
                std::fs::write(&path, text)?;
            }
        }
    }
    Ok(())
}
