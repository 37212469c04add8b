//! `capwin-kit`: the test kit's standalone tools.
//!
//! `capwin-kit apiserver [--port N] [--crds DIR]... [--url-file F]` starts the in-memory API
//! server, prints `capwin-kit apiserver: listening on http://127.0.0.1:N` once it accepts
//! connections, and runs until interrupted. Poke it with `kubectl --server=http://127.0.0.1:N`.

use std::path::PathBuf;

use capwin_testkit::apiserver::{ApiServer, Config};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "capwin-kit", about = "capwin's test kit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the in-memory Kubernetes API server.
    Apiserver {
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// CRD YAML file or folder; repeat for several.
        #[arg(long = "crds")]
        crds: Vec<PathBuf>,
        /// Also write the URL to this file.
        #[arg(long)]
        url_file: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Apiserver { port, crds, url_file } => {
            let server = ApiServer::start(Config { port, crd_paths: crds, ..Config::default() }).await?;
            if let Some(f) = url_file {
                std::fs::write(f, server.url())?;
            }
            println!("capwin-kit apiserver: listening on {}", server.url());
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            Ok(())
        }
    }
}
