//! `capwin manager`: runs the controllers against the management cluster.
//!
//! Connects with in-cluster config or `KUBECONFIG` (or `--kubeconfig`), serves `/healthz` and
//! `/readyz` (plain HTTP) and `/metrics` (HTTPS behind TokenReview + SubjectAccessReview unless
//! `--metrics-secure=false`), optionally elects a leader through a `coordination.k8s.io` Lease,
//! and logs structured lines (text or JSON).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use capwin_bootstrap::metrics::Metrics;
use capwin_bootstrap::reconcile::{Context, Settings};
use clap::{Args, ValueEnum};
use kube::Client;
use prometheus_client::registry::Registry;

use crate::{leader, metrics_auth, serve};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ControllerName {
    Bootstrap,
    Azure,
    Aws,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct ManagerArgs {
    /// Controllers to run (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["bootstrap"])]
    controllers: Vec<ControllerName>,
    /// Watch only this namespace (default: all).
    #[arg(long)]
    namespace: Option<String>,
    /// Only reconcile objects labelled cluster.x-k8s.io/watch-filter=<value>.
    #[arg(long)]
    watch_filter: Option<String>,
    /// Elect a leader through a Lease before running controllers.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else default).
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "capwin-manager")]
    leader_election_id: String,
    /// Where /metrics is served: host:port, :port for every interface, "0" disables.
    #[arg(long, default_value = ":8443")]
    metrics_bind_address: String,
    /// Serve /metrics over HTTPS, each request authenticated (TokenReview) and authorised
    /// (SubjectAccessReview, nonResourceURLs /metrics, verb get) through the API server;
    /// `--metrics-secure=false` serves plain HTTP to anyone (local use).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    metrics_secure: bool,
    /// Folder with tls.crt and tls.key for the secure metrics endpoint (e.g. a mounted
    /// cert-manager Secret); without it a self-signed certificate is generated at start.
    #[arg(long)]
    metrics_cert_dir: Option<std::path::PathBuf>,
    /// Where /healthz and /readyz are served ("0" disables).
    #[arg(long, default_value = "0.0.0.0:9440")]
    health_probe_bind_address: String,
    /// Reconcile every object at least this often, e.g. 10m.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    sync_period: Duration,
    /// Reconciles running at once per controller.
    #[arg(long, default_value_t = 10)]
    concurrency: u16,
    /// Lifetime of kubeadm bootstrap tokens; refreshed until the Node joins.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    bootstrap_token_ttl: Duration,
    /// AWS region for the aws controller (default: AWS_REGION).
    #[arg(long)]
    aws_region: Option<String>,
    /// Namespace of the per-cluster AWS identity Secrets (default: POD_NAMESPACE, else
    /// capwin-infrastructure-system).
    #[arg(long)]
    aws_identity_namespace: Option<String>,
    /// Azure Resource Manager endpoint for the azure controller.
    #[arg(long, default_value = "https://management.azure.com")]
    azure_arm_endpoint: String,
    /// Entra ID authority host (default: AZURE_AUTHORITY_HOST, else the public cloud's).
    #[arg(long)]
    azure_authority_host: Option<String>,
    /// PEM bundle of extra CAs to trust for ARM and Entra ID (a stand-in, or a TLS proxy).
    #[arg(long)]
    azure_ca_bundle: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Kubeconfig file (default: in-cluster config, else KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
}

/// `90s`, `15m`, `2h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 15m or 2h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?} is not a duration like 90s, 15m or 2h")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            Ok(Client::try_from(cfg)?)
        }
        None => Ok(Client::try_default().await.context("no in-cluster config and no usable KUBECONFIG")?),
    }
}

/// `host:port`, `:port` (every interface, as Go's net.Listen reads it) or `0` (disabled).
fn bind(addr: &str) -> anyhow::Result<Option<SocketAddr>> {
    if addr == "0" {
        return Ok(None);
    }
    let full = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr.to_string() };
    Ok(Some(full.parse().with_context(|| format!("{addr} is not host:port or :port"))?))
}

pub async fn run(args: ManagerArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let client = client(args.kubeconfig.as_deref()).await?;
    // Only the series of the controllers this manager runs.
    let mut registry = Registry::default();
    let runs = |c: ControllerName| args.controllers.contains(&c);
    let metrics = runs(ControllerName::Bootstrap).then(|| Metrics::register(&mut registry));
    let aws_metrics = runs(ControllerName::Aws).then(|| capwin_aws::metrics::register(&mut registry));
    let azure_metrics = runs(ControllerName::Azure).then(|| capwin_azure::metrics::register(&mut registry));
    let queue = capwin_runtime::QueueMetrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(registry);
    if let Some(addr) = bind(&args.health_probe_bind_address)? {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!(address = %listener.local_addr()?, "serving /healthz and /readyz");
        tokio::spawn(serve::serve(listener, registry.clone(), ready.clone(), false));
    }
    if let Some(addr) = bind(&args.metrics_bind_address)? {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        if args.metrics_secure {
            let tls = metrics_auth::tls_config(args.metrics_cert_dir.as_deref())?;
            let auth = Arc::new(metrics_auth::Auth::new(client.clone()));
            tracing::info!(
                address = %listener.local_addr()?,
                certificate = args.metrics_cert_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "self-signed".into()),
                "serving /metrics over HTTPS (TokenReview + SubjectAccessReview)"
            );
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            tokio::spawn(serve::serve_secure(listener, acceptor, registry.clone(), ready.clone(), auth));
        } else {
            tracing::info!(address = %listener.local_addr()?, "serving /metrics over plain HTTP (--metrics-secure=false)");
            tokio::spawn(serve::serve(listener, registry.clone(), ready.clone(), true));
        }
    }
    if args.leader_elect {
        let ns = args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        leader::acquire(client.clone(), &ns, &args.leader_election_id).await?;
    }
    let settings = Settings {
        token_ttl: args.bootstrap_token_ttl,
        namespace: args.namespace.clone(),
        watch_filter: args.watch_filter.clone(),
        sync_period: args.sync_period,
        concurrency: args.concurrency,
    };
    let machine_settings = capwin_infra::watch::RunSettings {
        namespace: args.namespace.clone(),
        watch_filter: args.watch_filter.clone(),
        concurrency: args.concurrency,
        sync_period: args.sync_period,
    };
    // Every controller is a task; the manager exits non-zero as soon as any of them ends, so the
    // Deployment restarts it (a controller never ends on its own).
    let mut tasks = tokio::task::JoinSet::new();
    for c in &args.controllers {
        match c {
            ControllerName::Bootstrap => {
                let metrics = metrics.clone().expect("registered for a controller it runs");
                let ctx = Context::new(client.clone(), metrics, queue.clone(), settings.clone());
                tasks.spawn(capwin_bootstrap::reconcile::run(ctx));
                tracing::info!(
                    namespace = args.namespace.as_deref().unwrap_or("(all)"),
                    "bootstrap controller started"
                );
            }
            ControllerName::Aws => {
                // An empty AWS_REGION (unset clusterctl variable) counts as unset. Without a
                // region the controller still runs (no crash loop) and machines say RegionNotSet.
                let region =
                    args.aws_region.clone().or_else(|| std::env::var("AWS_REGION").ok()).filter(|r| !r.is_empty());
                if region.is_none() {
                    tracing::warn!("no AWS region (--aws-region or AWS_REGION): AWS machines wait with RegionNotSet");
                }
                let identity_ns = args
                    .aws_identity_namespace
                    .clone()
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .unwrap_or_else(|| "capwin-infrastructure-system".into());
                let ctx = capwin_aws::reconcile::Context::new(
                    client.clone(),
                    region.clone(),
                    args.namespace.clone(),
                    identity_ns,
                    aws_metrics.clone().expect("registered for a controller it runs"),
                )
                .await;
                tasks.spawn(capwin_aws::reconcile::run(ctx, queue.clone(), machine_settings.clone()));
                tracing::info!(region = region.as_deref().unwrap_or("(none)"), "aws controller started");
            }
            ControllerName::Azure => {
                let ctx = azure_context(
                    &args,
                    client.clone(),
                    azure_metrics.clone().expect("registered for a controller it runs"),
                )?;
                tasks.spawn(capwin_azure::reconcile::run(ctx, queue.clone(), machine_settings.clone()));
                tracing::info!(arm = %args.azure_arm_endpoint, "azure controller started");
            }
        }
    }
    ready.store(true, Ordering::SeqCst);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
        _ = tasks.join_next() => anyhow::bail!("a controller stopped unexpectedly"),
    }
    Ok(())
}

/// The azure controller's context. Its credential comes from the standard `AZURE_*`
/// environment (client secret, workload identity, else managed identity).
fn azure_context(
    args: &ManagerArgs,
    client: Client,
    metrics: Arc<capwin_azure::metrics::Metrics>,
) -> anyhow::Result<Arc<capwin_azure::reconcile::Context>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let arm = args
        .azure_arm_endpoint
        .parse()
        .with_context(|| format!("--azure-arm-endpoint {} is not a URL", args.azure_arm_endpoint))?;
    let ca_pem = match &args.azure_ca_bundle {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("--azure-ca-bundle {}", p.display()))?),
        None => None,
    };
    let settings = capwin_azure::reconcile::Settings {
        endpoint: capwin_azure::arm::Endpoint { arm, ca_pem },
        authority: args.azure_authority_host.clone().or_else(|| env("AZURE_AUTHORITY_HOST")),
        namespace: args.namespace.clone(),
        federated_token_file: env("AZURE_FEDERATED_TOKEN_FILE"),
        tenant: env("AZURE_TENANT_ID"),
    };
    let own = capwin_azure::credentials::from_environment(env);
    tracing::info!(credential = ?own, "azure credential from the environment");
    Ok(capwin_azure::reconcile::Context::new(client, settings, own, metrics))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ManagerArgs,
    }

    fn parse(flags: &[&str]) -> ManagerArgs {
        Cli::try_parse_from(std::iter::once("manager").chain(flags.iter().copied())).unwrap().args
    }

    #[test]
    fn metrics_are_secure_on_8443_unless_turned_off() {
        let defaults = parse(&[]);
        assert!(defaults.metrics_secure);
        assert_eq!(defaults.metrics_bind_address, ":8443");
        assert_eq!(bind(&defaults.metrics_bind_address).unwrap(), Some("0.0.0.0:8443".parse().unwrap()));
        assert!(!parse(&["--metrics-secure=false"]).metrics_secure);
        assert!(!parse(&["--metrics-secure", "false"]).metrics_secure);
        assert!(parse(&["--metrics-secure"]).metrics_secure);
        assert_eq!(bind("0").unwrap(), None);
        assert!(bind("localhost:8443").is_err());
    }
}
