//! The capwin payload renderer: a pure function from typed input to the exact bytes of a
//! cloudbase-init user-data payload (the bootstrap data Secret's `value`).
//!
//! Shape of every payload (see `windows-node.md` §3): a `#cloud-config` document without a
//! Jinja header whose `write_files` drops
//! - `C:\run\kubeadm\kubeadm-join-config.yaml`: the kubeadm `JoinConfiguration` (v1beta4), holding
//!   the bootstrap token; node name, node IP and provider ID are `@@CAPWIN_…@@` placeholders the
//!   script fills from the instance (the only values not known at render time);
//! - `C:\run\capwin\bootstrap.ps1`: one static PowerShell script (code only, same for every node);
//! - `C:\run\capwin\bootstrap.json`: every user value and every decision of [`node`] as
//!   ASCII-escaped JSON (data only): the script performs, it does not decide;
//! - `C:\run\capwin\domain-join.json` when the node joins an AD domain (the join account; the
//!   script deletes it after the join);
//! - the user's files and containerd drop-ins;
//!
//! plus `users` and `ntp`, and one `runcmd` line that runs the script and passes on its exit
//! code. Keeping user values out of code is what makes hostile strings harmless: they are
//! serialised by serde (YAML, JSON, base64), never spliced into PowerShell or cmd.exe text.

mod budget;
mod cloudconfig;
mod json;
mod kubeadm;
pub mod node;
mod params;
pub mod script;
pub mod serial;
pub mod validate;

use capwin_api::bootstrap::WindowsKubeadmConfigSpec;

pub use budget::{AWS_USER_DATA_LIMIT, AZURE_CUSTOM_DATA_LIMIT, Cloud, PartSize};
pub use validate::FieldError;

/// The readable bootstrap script (`ps/bootstrap.ps1`); what ships is [`bootstrap_script`].
pub const BOOTSTRAP_SOURCE: &str = script::SOURCE;

/// The bootstrap script with every optional part, as shipped (the source without comments).
pub fn bootstrap_script() -> &'static str {
    script::shipped(script::Features::ALL)
}
/// Where the script lands on the node.
pub const SCRIPT_PATH: &str = r"C:\run\capwin\bootstrap.ps1";
/// Where the parameters land on the node.
pub const PARAMS_PATH: &str = r"C:\run\capwin\bootstrap.json";
/// Where the join configuration lands (CABPK's path, resolved on the system drive).
pub const JOIN_CONFIG_PATH: &str = r"C:\run\kubeadm\kubeadm-join-config.yaml";
/// The `runcmd` line: cmd.exe runs it, so it must stay free of `%` and user text.
pub const RUNCMD: &str =
    r"powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File C:\run\capwin\bootstrap.ps1";
/// The Secret `format` key value.
pub const FORMAT: &str = "cloud-config";

/// A kubeadm bootstrap token `<id>.<secret>`. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

impl BootstrapToken {
    /// Parses `abcdef.0123456789abcdef` (kubeadm's `[a-z0-9]{6}.[a-z0-9]{16}`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (id, secret) = s.split_once('.').ok_or("a token is <id>.<secret>")?;
        let ok = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok(id, 6) || !ok(secret, 16) {
            return Err("a token is 6 and 16 characters of [a-z0-9] joined by '.'".into());
        }
        Ok(Self { id: id.into(), secret: secret.into() })
    }
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// A value that never shows in `Debug` output (secrets inside otherwise printable structs).
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The Active Directory join account of `spec.windows.domainJoin`, exactly as the controller read
/// it from the Secret `credentialsSecret.name` in the config's namespace: the bytes of
/// `data[credentialsSecret.usernameKey]` (default key `username`) and
/// `data[credentialsSecret.passwordKey]` (default key `password`), like `files[].contentFrom`
/// contents. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct DomainJoinSecret {
    pub username: Vec<u8>,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for DomainJoinSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DomainJoinSecret(<redacted>)")
    }
}

/// What the renderer needs from the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInputs {
    /// `host:port` of the API server (`Cluster.spec.controlPlaneEndpoint`).
    pub api_server_endpoint: String,
    /// `sha256:<hex>` of the CA public key(s).
    pub ca_cert_hashes: Vec<String>,
    /// The Machine's Kubernetes version, `vX.Y.Z`.
    pub kubernetes_version: String,
    /// Pod CIDRs (for the containerd proxy bypass list).
    pub pod_cidrs: Vec<String>,
    /// Service CIDRs (for the containerd proxy bypass list).
    pub service_cidrs: Vec<String>,
}

/// Everything a payload is made of.
#[derive(Clone, Debug)]
pub struct RenderInput<'a> {
    pub spec: &'a WindowsKubeadmConfigSpec,
    /// Bytes of each `spec.files[i]` that uses `contentFrom`, as read from the Secret, by index.
    pub secret_file_contents: &'a std::collections::BTreeMap<usize, Vec<u8>>,
    /// The join account when `spec.windows.domainJoin` is set (see [`DomainJoinSecret`]); `None`
    /// otherwise. A spec with a domain join and no resolved account fails validation.
    pub domain_join_secret: Option<&'a DomainJoinSecret>,
    pub cluster: &'a ClusterInputs,
    pub token: &'a BootstrapToken,
    pub cloud: Cloud,
}

/// A rendered payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The exact bytes for the Secret's `value` (gzip on AWS when needed to fit).
    pub bytes: Vec<u8>,
    /// Size of the `#cloud-config` document before any whole-payload compression.
    pub document_bytes: usize,
    /// Whether the whole payload is gzip (EC2 only).
    pub gzipped: bool,
    /// Size of each part as it appears in the document, largest first.
    pub parts: Vec<PartSize>,
}

impl Payload {
    /// Bytes as the cloud API carries them (base64 of `bytes`).
    pub fn sent_bytes(&self) -> usize {
        self.bytes.len().div_ceil(3) * 4
    }
}

/// Why a payload could not be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The spec (or a cluster input) is invalid; each error names the field.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// Still over the cloud's limit after compression.
    #[error("payload is {size} bytes, over the {cloud} limit of {limit} bytes even compressed; largest parts: {}", .largest.iter().map(|p| format!("{} ({} bytes)", p.name, p.bytes)).collect::<Vec<_>>().join(", "))]
    TooLarge { cloud: Cloud, size: usize, limit: usize, largest: Vec<PartSize> },
}

/// Renders the payload. Pure: the same input always gives the same bytes.
pub fn render(input: &RenderInput<'_>) -> Result<Payload, RenderError> {
    let checked = validate::validate(input).map_err(RenderError::Invalid)?;
    let join = kubeadm::join_configuration(input, &checked);
    let params = params::parameters(input, &checked);
    let doc = cloudconfig::Document::build(input, &checked, join, params);
    budget::fit(&doc, input.cloud)
}
