//! `capwin render`: a `WindowsKubeadmConfig` YAML file in, the payload bytes out.
//!
//! Cluster values the file cannot hold get placeholders that are obviously fake, so a rendered
//! example can never join a real cluster by accident:
//! endpoint `capwin-placeholder.invalid:6443` (`.invalid` never resolves, RFC 2606), token
//! `abcdef.0123456789abcdef`, CA hash `sha256:` + 64 zeros, Kubernetes `v1.35.0`, cloud `azure`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use capwin_api::bootstrap::WindowsKubeadmConfig;
use capwin_payload::{BootstrapToken, Cloud, ClusterInputs, RenderInput};
use clap::{Args, ValueEnum};

pub const PLACEHOLDER_ENDPOINT: &str = "capwin-placeholder.invalid:6443";
pub const PLACEHOLDER_TOKEN: &str = "abcdef.0123456789abcdef";
pub const PLACEHOLDER_CA_HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.35.0";
/// The example used when `--config` is not given.
pub const EMBEDDED_EXAMPLE: &str = include_str!("../../../config/samples/windowskubeadmconfig.yaml");

#[derive(Args)]
pub struct RenderArgs {
    /// WindowsKubeadmConfig YAML file ('-' for stdin). Default: the embedded example.
    #[arg(long)]
    config: Option<PathBuf>,
    /// API server host:port. Default: a placeholder that never resolves.
    #[arg(long)]
    endpoint: Option<String>,
    /// Bootstrap token <id>.<secret>. Default: a placeholder.
    #[arg(long)]
    token: Option<String>,
    /// CA public key hash sha256:<hex>; repeat for several. Default: a placeholder.
    #[arg(long = "ca-cert-hash")]
    ca_cert_hashes: Vec<String>,
    /// The Machine's Kubernetes version, vX.Y.Z.
    #[arg(long, default_value = DEFAULT_KUBERNETES_VERSION)]
    kubernetes_version: String,
    /// Target cloud: decides the size limit and compression.
    #[arg(long, value_enum, default_value_t = CloudArg::Azure)]
    cloud: CloudArg,
    /// Folder laid out like mounted Secrets (DIR/<secret>/<key>) for files[].contentFrom and
    /// windows.domainJoin.credentialsSecret.
    #[arg(long)]
    secret_dir: Option<PathBuf>,
    /// Print a size report to stderr.
    #[arg(long)]
    report: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum CloudArg {
    Azure,
    Aws,
}

pub fn run(args: RenderArgs) -> anyhow::Result<()> {
    let (text, source) = match &args.config {
        None => (EMBEDDED_EXAMPLE.to_string(), "the embedded example".to_string()),
        Some(p) if p.as_os_str() == "-" => (std::io::read_to_string(std::io::stdin())?, "stdin".into()),
        Some(p) => {
            (std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?, p.display().to_string())
        }
    };
    let config = parse_config(&text).with_context(|| format!("in {source}"))?;
    let mut placeholders = Vec::new();
    let endpoint = args.endpoint.clone().unwrap_or_else(|| {
        placeholders.push("endpoint");
        PLACEHOLDER_ENDPOINT.into()
    });
    let token = match &args.token {
        Some(t) => BootstrapToken::parse(t).map_err(|e| anyhow!("--token: {e}"))?,
        None => {
            placeholders.push("token");
            BootstrapToken::parse(PLACEHOLDER_TOKEN).expect("the placeholder token is well-formed")
        }
    };
    let ca_cert_hashes = if args.ca_cert_hashes.is_empty() {
        placeholders.push("ca-cert-hash");
        vec![PLACEHOLDER_CA_HASH.to_string()]
    } else {
        args.ca_cert_hashes.clone()
    };
    let secret_file_contents = resolve_secret_files(&config, args.secret_dir.as_deref())?;
    let domain_join = resolve_domain_join(&config, args.secret_dir.as_deref())?;
    let cluster = ClusterInputs {
        api_server_endpoint: endpoint,
        ca_cert_hashes,
        kubernetes_version: args.kubernetes_version.clone(),
        pod_cidrs: vec![],
        service_cidrs: vec![],
    };
    let cloud = match args.cloud {
        CloudArg::Azure => Cloud::Azure,
        CloudArg::Aws => Cloud::Aws,
    };
    let input = RenderInput {
        spec: &config.spec,
        secret_file_contents: &secret_file_contents,
        domain_join_secret: domain_join.as_ref(),
        cluster: &cluster,
        token: &token,
        cloud,
    };
    let payload = capwin_payload::render(&input)?;
    if !placeholders.is_empty() {
        eprintln!("capwin: using placeholder values for: {} (see `capwin render --help`)", placeholders.join(", "));
    }
    if args.report {
        eprintln!(
            "capwin: {} payload: {} bytes ({} as sent, base64), document {} bytes, gzip: {}",
            cloud.as_str(),
            payload.bytes.len(),
            payload.sent_bytes(),
            payload.document_bytes,
            payload.gzipped
        );
        for p in &payload.parts {
            eprintln!("  {:>7} bytes  {}", p.bytes, p.name);
        }
    }
    std::io::stdout().write_all(&payload.bytes)?;
    Ok(())
}

/// Strict parsing: a field capwin does not know is an error naming its path, never ignored.
pub fn parse_config(text: &str) -> anyhow::Result<WindowsKubeadmConfig> {
    let head: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).context("not a YAML document")?;
    let field = |k: &str| head.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    if field("apiVersion") != "bootstrap.cluster.x-k8s.io/v1alpha1" || field("kind") != "WindowsKubeadmConfig" {
        bail!("the file must hold a bootstrap.cluster.x-k8s.io/v1alpha1 WindowsKubeadmConfig (apiVersion/kind)");
    }
    let mut unknown = Vec::new();
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let ignored = serde_ignored::Deserializer::new(de, &mut record);
    let config: WindowsKubeadmConfig = serde_path_to_error::deserialize(ignored).map_err(|e| {
        let path = e.path().to_string();
        anyhow!("{}: {}", if path == "." { "(document)".into() } else { path }, e.into_inner())
    })?;
    // metadata is Kubernetes' own type; unknown keys there are the API server's business.
    unknown.retain(|p| !p.starts_with("metadata.") && p != "apiVersion" && p != "kind");
    if !unknown.is_empty() {
        bail!("unknown field{}: {}", if unknown.len() > 1 { "s" } else { "" }, unknown.join(", "));
    }
    Ok(config)
}

fn resolve_secret_files(
    config: &WindowsKubeadmConfig,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<BTreeMap<usize, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for (i, f) in config.spec.files.iter().enumerate() {
        let Some(from) = &f.content_from else { continue };
        let Some(dir) = dir else {
            bail!("spec.files[{i}].contentFrom: Secret {}/{} needs --secret-dir", from.secret.name, from.secret.key);
        };
        let path = dir.join(&from.secret.name).join(&from.secret.key);
        let bytes =
            std::fs::read(&path).with_context(|| format!("spec.files[{i}].contentFrom: reading {}", path.display()))?;
        out.insert(i, bytes);
    }
    Ok(out)
}

/// The domain join account from `--secret-dir`, as the controller reads it from its Secret.
fn resolve_domain_join(
    config: &WindowsKubeadmConfig,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<Option<capwin_payload::DomainJoinSecret>> {
    let Some(join) = &config.spec.windows.domain_join else { return Ok(None) };
    let r = &join.credentials_secret;
    let Some(dir) = dir else {
        bail!("spec.windows.domainJoin.credentialsSecret: Secret {} needs --secret-dir", r.name);
    };
    let read = |key: &str| {
        let path = dir.join(&r.name).join(key);
        std::fs::read(&path)
            .with_context(|| format!("spec.windows.domainJoin.credentialsSecret: reading {}", path.display()))
    };
    Ok(Some(capwin_payload::DomainJoinSecret { username: read(r.username_key())?, password: read(r.password_key())? }))
}
