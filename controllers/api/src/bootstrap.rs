//! `WindowsKubeadmConfig` and `WindowsKubeadmConfigTemplate` (`bootstrap.cluster.x-k8s.io/v1alpha1`).
//!
//! The spec mirrors the parts of CABPK's `KubeadmConfig` (v1beta2) that a Windows worker join
//! needs, and adds typed Windows settings so that a standard node needs no PowerShell at all.
//! Deliberate differences from `KubeadmConfig`, and why:
//! - no `initConfiguration`/`clusterConfiguration`/`joinConfiguration.controlPlane`: Windows only
//!   ever joins as a worker;
//! - no `discovery.bootstrapToken.token`: the controller mints a short-lived token in the
//!   workload cluster and keeps it in a Secret, never in a spec;
//! - no `files[].owner`, `bootCommands`, `diskSetup`, `mounts`: cloudbase-init ignores them on
//!   Windows, and silently ignored fields are worse than absent ones;
//! - no `users[].passwd`: a password in user data lands in cloudbase-init's log; SSH keys only.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretKeyRef, TemplateObjectMeta};

/// The regular expressions of the schema's `pattern`s. kube-apiserver compiles `pattern` with Go's
/// `regexp` (RE2) and the test kit with Rust's `regex`; these use only what both read alike: no
/// look-around, no `\s`/`\d`/`\w` (Unicode in Rust, ASCII in Go), code points only as `\xHH`.
/// Each mirrors a check of `capwin_payload::validate`, which stays as the second line (a few
/// Unicode corner cases, e.g. U+2000 spaces, are left to it).
pub mod patterns {
    /// The CEL rules of a list of Windows paths (Defender exclusions): no reserved device
    /// names, at most MAX_PATH once `C:` is prefixed to a rooted path.
    pub fn path_list_rules() -> serde_json::Value {
        serde_json::json!([
            {
                "rule": "self.all(p, !p.matches('(?i)(^|[\\\\\\\\/])(con|prn|aux|nul|com[0-9]|lpt[0-9])(\\\\.[^\\\\\\\\/]*)?([\\\\\\\\/]|$)'))",
                "message": "a path must not name a reserved Windows device (CON, PRN, AUX, NUL, COM0-9, LPT0-9)"
            },
            {
                "rule": "self.all(p, size(p) <= (p.startsWith('/') || p.startsWith('\\\\') ? 257 : 259))",
                "message": "a path must be at most 259 characters as C:\\... (Windows MAX_PATH)"
            }
        ])
    }

    /// A Kubernetes label value (may be empty); the length (63) is a `maxLength`.
    pub const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
    /// A qualified name (`[dns-prefix/]name`, name 1-63 characters), as label and taint keys.
    pub const QUALIFIED_NAME: &str = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
    /// An absolute Windows path, `X:\a\b` or `/a/b` (either slash): components non-empty, not
    /// `.`/`..`, without `<>:"|?*` or control characters, not ending with a space or a dot.
    pub const WINDOWS_PATH: &str = r#"^([A-Za-z]:)?[\\/][^\\/<>:"|?*\x00-\x1f\x7f-\x9f]*[^\\/<>:"|?*\x00-\x1f\x7f-\x9f .]([\\/][^\\/<>:"|?*\x00-\x1f\x7f-\x9f]*[^\\/<>:"|?*\x00-\x1f\x7f-\x9f .])*$"#;
    /// A local Windows user name: none of `"/\[]:;|=,+*?<>@` or control characters, no space at
    /// either end, not ending with a dot (the length, 20, is a `maxLength`).
    pub const USER_NAME: &str = r#"^([^"/\\\[\]:;|=,+*?<>@\x00-\x1f\x7f-\x9f \xa0.]|[^"/\\\[\]:;|=,+*?<>@\x00-\x1f\x7f-\x9f \xa0][^"/\\\[\]:;|=,+*?<>@\x00-\x1f\x7f-\x9f]*[^"/\\\[\]:;|=,+*?<>@\x00-\x1f\x7f-\x9f \xa0.])$"#;
    /// A local group name: as a user name, but it may end with a dot.
    pub const GROUP_NAME: &str = r#"^([^"/\\\[\]:;|=,+*?<>@\x00-\x1f\x7f-\x9f \xa0]|[^"/\\\[\]:;|=,+*?<>@\x00-\x1f\x7f-\x9f \xa0][^"/\\\[\]:;|=,+*?<>@\x00-\x1f\x7f-\x9f]*[^"/\\\[\]:;|=,+*?<>@\x00-\x1f\x7f-\x9f \xa0])$"#;
    /// One OpenSSH public key line of a type Windows OpenSSH accepts, without line breaks.
    pub const SSH_KEY_LINE: &str = r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [^\x00-\x1f\x7f-\x9f]*$";
    /// Text without control characters.
    pub const NO_CONTROL: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
    /// A kubelet flag value kubeadm-flags.env can carry: no whitespace, quotes or control characters.
    pub const FLAG_VALUE: &str = r#"^[^\x00-\x20\x7f-\x9f\xa0"']*$"#;
    /// A kubeadm preflight check name, or `all`.
    pub const PREFLIGHT_CHECK: &str = r"^[A-Za-z0-9.-]{1,64}$";
    /// A command: not blank, no NUL.
    pub const COMMAND: &str = r"^[^\x00]*[^\x00\x09-\x0d\x20\x85\xa0][^\x00]*$";
    /// `host:port`: a DNS name or an IP address (IPv6 optionally in brackets), port 1-65535.
    pub const HOST_PORT: &str = r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*):\+?0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";
    /// A host name or an IP address.
    pub const HOST: &str =
        r"^([0-9A-Fa-f:.]+|[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*)$";
    /// An `https://` URL without whitespace, quotes, backticks or control characters.
    pub const HTTPS_URL: &str = r#"^https://[^\x00-\x20\x7f-\x9f\xa0"'`/][^\x00-\x20\x7f-\x9f\xa0"'`]*$"#;
    /// An `http://` or `https://` URL without whitespace, quotes or control characters.
    pub const PROXY_URL: &str = r#"^https?://[^\x00-\x20\x7f-\x9f\xa0"']+$"#;
    /// A `noProxy` entry: a host, domain or CIDR without commas, quotes or whitespace.
    pub const NO_PROXY_ENTRY: &str = r#"^[^\x00-\x20\x7f-\x9f\xa0,"']+$"#;
    /// The DNS name of an Active Directory domain (at least two labels).
    pub const DOMAIN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)+$";
}

/// Desired state of a Windows worker's bootstrap configuration.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "bootstrap.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "WindowsKubeadmConfig",
    plural = "windowskubeadmconfigs",
    namespaced,
    status = "WindowsKubeadmConfigStatus",
    category = "cluster-api",
    shortname = "wkc",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    // `clusterctl move` discovers the kinds of CRDs with this label (clusterctl init adds it;
    // kustomize, Tilt or Helm installs get it from here).
    label("clusterctl.cluster.x-k8s.io", ""),
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']","description":"Cluster this config belongs to"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status","description":"Bootstrap data is ready"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason","description":"Why the config is (not) ready"}"#,
    printcolumn = r#"{"name":"Data Secret","type":"string","jsonPath":".status.dataSecretName","description":"Secret holding the payload"}"#,
    printcolumn = r#"{"name":"CNI","type":"string","priority":1,"jsonPath":".spec.windows.cni.flavour","description":"CNI flavour"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WindowsKubeadmConfigSpec {
    /// The kubeadm join settings for this worker.
    #[serde(default)]
    pub join_configuration: JoinConfiguration,
    /// Files written to the node before the join, with cloudbase-init `write_files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub files: Vec<File>,
    /// PowerShell commands run, in order, before `kubeadm join`. Each entry is one script
    /// block; the first that fails stops the bootstrap with a failure report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(regex(pattern = patterns::COMMAND)))]
    pub pre_kubeadm_commands: Vec<String>,
    /// PowerShell commands run, in order, after a successful `kubeadm join`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(regex(pattern = patterns::COMMAND)))]
    pub post_kubeadm_commands: Vec<String>,
    /// Local users to create, with SSH keys and groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(u, self.exists_one(v, v.name.lowerAscii() == u.name.lowerAscii()))",
        "message": "user names must be unique (Windows user names ignore case)"
    }]))]
    pub users: Vec<User>,
    /// Time synchronisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp: Option<Ntp>,
    /// kubeadm log verbosity (`-v`), 0 to 10. Defaults to 5 so a failed join explains itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub verbosity: Option<u8>,
    /// Windows node settings.
    #[serde(default)]
    pub windows: WindowsSettings,
}

/// kubeadm `JoinConfiguration` fields a Windows worker uses (rendered as `kubeadm.k8s.io/v1beta4`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinConfiguration {
    #[serde(default)]
    pub node_registration: NodeRegistration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
}

/// How the node registers itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRegistration {
    /// Node name. Empty means: on AWS the instance's private DNS name (what the AWS cloud
    /// controller expects), elsewhere the Windows computer name, lower-cased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: Option<String>,
    /// Extra kubelet flags (without the leading `--`), in the v1beta2 list form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub kubelet_extra_args: Vec<Arg>,
    /// Taints the Node registers with, in addition to CAPI's
    /// `node.cluster.x-k8s.io/uninitialized:NoSchedule` which capwin always adds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(t, self.exists_one(u, u.key == t.key && u.effect == t.effect))",
        "message": "a taint key may appear only once per effect"
    }]))]
    pub taints: Vec<Taint>,
    /// kubeadm preflight errors to ignore (e.g. `SystemVerification`), or `all`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(regex(pattern = patterns::PREFLIGHT_CHECK)))]
    pub ignore_preflight_errors: Vec<String>,
}

/// A command-line argument `--name=value`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(self.name in ['register-with-taints', 'hostname-override', 'container-runtime-endpoint', 'windows-service'])",
        "message": "is set by capwin (taints: joinConfiguration.nodeRegistration.taints or windows.node.osTaint; node name: joinConfiguration.nodeRegistration.name)",
        "fieldPath": ".name"
    },
    {"rule": "!self.value.contains('@@CAPWIN_')", "message": "must not contain @@CAPWIN_", "fieldPath": ".value"}
]))]
pub struct Arg {
    /// Flag name without leading dashes, e.g. `node-ip`.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Flag value: no whitespace, quotes or control characters (kubeadm-flags.env cannot carry them).
    #[schemars(length(max = 4096), regex(pattern = patterns::FLAG_VALUE))]
    pub value: String,
}

/// A Node taint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    #[schemars(length(min = 1, max = 316), regex(pattern = patterns::QUALIFIED_NAME))]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = patterns::LABEL_VALUE))]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

/// What a taint does to pods that do not tolerate it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TaintEffect {
    #[default]
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// Discovery settings. The token itself is minted by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<BootstrapTokenDiscovery>,
}

/// Token discovery overrides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapTokenDiscovery {
    /// `host:port` of the API server. Defaults to `Cluster.spec.controlPlaneEndpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = patterns::HOST_PORT))]
    pub api_server_endpoint: Option<String>,
    /// `sha256:<hex>` hashes of the CA's public key. Default: computed from `<cluster>-ca`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ca_cert_hashes: Vec<CaCertHash>,
    /// Join without pinning the CA. Only honoured when no hash is known at all.
    #[serde(default, rename = "unsafeSkipCAVerification", skip_serializing_if = "std::ops::Not::not")]
    pub unsafe_skip_ca_verification: bool,
}

/// `sha256:` followed by 64 lower-case hex digits.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct CaCertHash(#[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))] pub String);

/// A file written to the node. Exactly one of `content` and `contentFrom` is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.content) != has(self.contentFrom)").message("exactly one of content and contentFrom must be set"))]
#[x_kube(validation = Rule::new(r"!self.path.matches('(?i)(^|[\\\\/])(con|prn|aux|nul|com[0-9]|lpt[0-9])(\\.[^\\\\/]*)?([\\\\/]|$)')").message("must not name a reserved Windows device (CON, PRN, AUX, NUL, COM0-9, LPT0-9)").field_path(".path"))]
#[x_kube(validation = Rule::new(r"size(self.path) <= (self.path.startsWith('/') || self.path.startsWith('\\') ? 257 : 259)").message(r"must be at most 259 characters as C:\... (Windows MAX_PATH)").field_path(".path"))]
#[x_kube(validation = Rule::new(r"!self.path.matches('(?i)^(c:)?[\\\\/]run[\\\\/](capwin[\\\\/]|cluster-api[\\\\/]|kubeadm[\\\\/]kubeadm-join-config\\.yaml$)')").message("is reserved for capwin's own bootstrap files").field_path(".path"))]
#[x_kube(validation = Rule::new("!has(self.append) || !self.append || !has(self.permissions) || self.permissions.matches('^0?[0-7][2367][0-7]$')").message("a read-only file cannot be appended to").field_path(".permissions"))]
pub struct File {
    /// Absolute Windows path, e.g. `C:\k\extra.conf` (forward slashes are accepted; `/x` means
    /// `C:\x`, as CABPK's Linux paths resolve on Windows).
    #[schemars(length(min = 1, max = 260), regex(pattern = patterns::WINDOWS_PATH))]
    pub path: String,
    /// Octal mode as for Linux. On Windows only two things follow from it: without the owner
    /// write bit the file is read-only, and without any group/other read bit the file's ACL is
    /// reduced to SYSTEM and Administrators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0?[0-7]{3}$"))]
    pub permissions: Option<String>,
    /// How `content` (or the Secret's bytes) is encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<FileEncoding>,
    /// Append instead of overwrite.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
    /// Inline content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576))]
    pub content: Option<String>,
    /// Content read from a Secret in the config's namespace when the payload is rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_from: Option<FileSource>,
}

/// Encodings of file content (the KubeadmConfig values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FileEncoding {
    #[serde(rename = "base64")]
    Base64,
    #[serde(rename = "gzip")]
    Gzip,
    #[serde(rename = "gzip+base64")]
    GzipBase64,
}

/// Where file content comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    pub secret: SecretKeyRef,
}

/// A local Windows user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Windows user name (no `"/\[]:;|=,+*?<>@` and at most 20 characters).
    #[schemars(length(min = 1, max = 20), regex(pattern = patterns::USER_NAME))]
    pub name: String,
    /// Full name / description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), regex(pattern = patterns::NO_CONTROL))]
    pub gecos: Option<String>,
    /// Local groups to add the user to, e.g. `Administrators`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256), regex(pattern = patterns::GROUP_NAME)))]
    pub groups: Vec<String>,
    /// OpenSSH public keys. For members of `Administrators` they are also written to
    /// `C:\ProgramData\ssh\administrators_authorized_keys`, which is the file Windows OpenSSH
    /// reads for administrators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = patterns::SSH_KEY_LINE)))]
    pub ssh_authorized_keys: Vec<String>,
}

/// NTP settings (cloudbase-init `ntp` module; configures w32time).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ntp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// NTP servers (host names or IPs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253), regex(pattern = patterns::HOST)))]
    pub servers: Vec<String>,
}

/// Windows Server release of the node image. The bootstrap accepts the image builds Kubernetes
/// supports for that release ([`WindowsServerVersion::accepted_builds`]) and names the build it
/// found otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum WindowsServerVersion {
    /// Windows Server 2019 (build 17763): best effort, Kubernetes no longer lists it as supported.
    #[serde(rename = "2019")]
    Ws2019,
    /// Windows Server 2022 (build 20348); also accepts the Annual Channel release Windows Server,
    /// version 23H2 (build 25398), which runs Windows Server 2022 container images.
    #[serde(rename = "2022")]
    Ws2022,
    /// Windows Server 2025 (build 26100), the default.
    #[default]
    #[serde(rename = "2025")]
    Ws2025,
}

impl WindowsServerVersion {
    pub const ALL: [Self; 3] = [Self::Ws2019, Self::Ws2022, Self::Ws2025];
    /// The build number Windows reports for this release.
    pub fn build(self) -> u32 {
        match self {
            Self::Ws2019 => 17763,
            Self::Ws2022 => 20348,
            Self::Ws2025 => 26100,
        }
    }
    /// The image builds the bootstrap accepts for this release: the LTSC build, and for 2022 the
    /// Annual Channel build 25398 (Windows Server, version 23H2), which serves the same container
    /// images (`ltsc2022`). Any other build fails the `host` step naming the build.
    pub fn accepted_builds(self) -> &'static [u32] {
        match self {
            Self::Ws2019 => &[17763],
            Self::Ws2022 => &[20348, 25398],
            Self::Ws2025 => &[26100],
        }
    }
    /// `2019`, `2022` or `2025`.
    pub fn year(self) -> &'static str {
        match self {
            Self::Ws2019 => "2019",
            Self::Ws2022 => "2022",
            Self::Ws2025 => "2025",
        }
    }
}

/// Typed Windows node settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.kubeProxy) || !has(self.kubeProxy.mode) || self.kubeProxy.mode != 'none' || (has(self.cni) && has(self.cni.flavour) && self.cni.flavour != 'calico-vxlan')",
    "message": "calico-vxlan on Windows needs kube-proxy (mode daemonset)",
    "fieldPath": ".kubeProxy.mode"
}]))]
pub struct WindowsSettings {
    /// Windows Server release of the image (2025 by default; 2019 is best effort).
    #[serde(default)]
    pub version: WindowsServerVersion,
    #[serde(default)]
    pub containerd: Containerd,
    /// Replacement Kubernetes binaries, downloaded with retries and checked before use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(b, self.exists_one(c, c.name == b.name))",
        "message": "each binary may be replaced once"
    }]))]
    pub binaries: Vec<BinaryOverride>,
    #[serde(default)]
    pub cni: Cni,
    #[serde(default)]
    pub kube_proxy: KubeProxy,
    #[serde(default)]
    pub kubelet: Kubelet,
    #[serde(default)]
    pub node: NodeSettings,
    #[serde(default)]
    pub defender: Defender,
    /// Hyper-V isolated containers (opt-in; needs nested virtualisation and a hypervisor-capable image).
    #[serde(default)]
    pub hyper_v: HyperV,
    /// gMSA node prerequisites (opt-in).
    #[serde(default)]
    pub gmsa: Gmsa,
    /// Join the node to an Active Directory domain before it joins the cluster (opt-in). The
    /// join needs a reboot, which the bootstrap asks cloudbase-init for (exit code 1003) and then
    /// resumes; the join account's password never reaches logs, conditions or the serial console
    /// and is deleted from the node once the domain membership is confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_join: Option<DomainJoin>,
    #[serde(default)]
    pub diagnostics: Diagnostics,
}

/// containerd on the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.download) || self.source == 'Download'").message("download is only allowed with source Download"))]
#[x_kube(validation = Rule::new("self.source != 'Download' || has(self.download)").message("source Download needs download"))]
pub struct Containerd {
    /// `Image` uses the containerd the image ships; `Download` replaces it.
    #[serde(default)]
    pub source: ContainerdSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<ContainerdDownload>,
    /// TOML drop-ins written to `C:\Program Files\containerd\conf.d\<name>.toml` (the image's
    /// config imports that folder): registry mirrors, sandbox image, runtime handlers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(d, self.exists_one(e, e.name.lowerAscii() == d.name.lowerAscii()))",
        "message": "drop-in names must be unique (file names ignore case)"
    }]))]
    pub config_drop_ins: Vec<ContainerdDropIn>,
    /// HTTP(S) proxy for the containerd service only (not machine-wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
}

/// Where containerd comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ContainerdSource {
    #[default]
    Image,
    Download,
}

/// A containerd release to install over the image's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerdDownload {
    /// containerd version, e.g. `2.1.4` (for logs and the post-install check).
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$"))]
    pub version: String,
    /// HTTPS URL of the Windows amd64 release tarball.
    #[schemars(length(min = 1, max = 2048), regex(pattern = patterns::HTTPS_URL))]
    pub url: String,
    /// SHA-256 of the tarball, lower-case hex.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
}

/// A containerd config drop-in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.name != 'capwin-hyperv'",
    "message": "capwin-hyperv is reserved for the Hyper-V handler",
    "fieldPath": ".name"
}]))]
pub struct ContainerdDropIn {
    /// File name without `.toml`.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))]
    pub name: String,
    /// TOML content.
    #[schemars(length(min = 1, max = 65536))]
    pub content: String,
}

/// Proxy settings scoped to one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.httpProxy) || has(self.httpsProxy)",
    "message": "needs httpProxy or httpsProxy"
}]))]
pub struct Proxy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = patterns::PROXY_URL))]
    pub http_proxy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = patterns::PROXY_URL))]
    pub https_proxy: Option<String>,
    /// Hosts, domains and CIDRs that bypass the proxy. capwin always adds the API server host,
    /// the cluster's pod and service CIDRs, `localhost`, `127.0.0.1` and `169.254.169.254`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = patterns::NO_PROXY_ENTRY)))]
    pub no_proxy: Vec<String>,
}

/// A Kubernetes binary replacement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BinaryOverride {
    pub name: KubeBinary,
    /// HTTPS URL of the `.exe`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = patterns::HTTPS_URL))]
    pub url: String,
    /// SHA-256 of the file, lower-case hex.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
}

/// Kubernetes binaries in `C:\k` that can be replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KubeBinary {
    #[default]
    Kubelet,
    Kubeadm,
    Kubectl,
}

/// CNI flavour. The VXLAN network identifier and UDP port are not node settings: the VNI comes
/// from the cluster's CNI configuration (flannel's `net-conf.json`, Calico's Felix settings; the
/// cluster templates pin 4096, the lowest Windows accepts), and Windows HNS only carries VXLAN on
/// UDP 4789, which is what the node opens in its firewall for the VXLAN flavours.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cni {
    #[serde(default)]
    pub flavour: CniFlavour,
}

/// The CNI the cluster runs on Windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CniFlavour {
    /// Calico with the HNS dataplane and VXLAN (as CAPZ's default).
    #[default]
    #[serde(rename = "calico-vxlan")]
    CalicoVxlan,
    /// flannel VXLAN overlay (network `flannel.<vni>`).
    #[serde(rename = "flannel-vxlan")]
    FlannelVxlan,
    /// flannel host-gw (L2Bridge network `cbr0`), for L2-adjacent nodes.
    #[serde(rename = "flannel-host-gw")]
    FlannelHostGw,
    /// No CNI preparation on the node.
    #[serde(rename = "none")]
    None,
}

impl CniFlavour {
    pub const ALL: [Self; 4] = [Self::CalicoVxlan, Self::FlannelVxlan, Self::FlannelHostGw, Self::None];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CalicoVxlan => "calico-vxlan",
            Self::FlannelVxlan => "flannel-vxlan",
            Self::FlannelHostGw => "flannel-host-gw",
            Self::None => "none",
        }
    }
}

/// kube-proxy on Windows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxy {
    /// `daemonset`: kube-proxy runs as a HostProcess DaemonSet from the cluster's addons (the
    /// node only gets its prerequisites); `none`: no kube-proxy (e.g. a CNI that replaces it).
    #[serde(default)]
    pub mode: KubeProxyMode,
}

/// How kube-proxy runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KubeProxyMode {
    #[default]
    Daemonset,
    None,
}

/// kubelet settings with Windows-aware defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Kubelet {
    /// `External` (default): `--cloud-provider=external` and the cloud taint, for the cloud
    /// controller manager and node manager of the cluster. `None`: no cloud provider.
    #[serde(default)]
    pub cloud_provider: CloudProviderMode,
    /// Set `--provider-id` from the instance metadata service so CAPI can match the Node before
    /// any cloud controller runs (default true on both clouds: without it, Machine-to-Node
    /// matching waits for the cloud node manager). On Azure the value is
    /// `azure:///subscriptions/<sub>/resourceGroups/<rg, lower-case>/providers/Microsoft.Compute/virtualMachines/<vm>`,
    /// as cloud-provider-azure writes it; on AWS `aws:///<zone>/<instance-id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_provider_id: Option<bool>,
}

/// kubelet cloud provider mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CloudProviderMode {
    #[default]
    External,
    None,
}

/// Node labels and taints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSettings {
    /// Labels the kubelet registers the Node with (at most 64). Only labels the kubelet may set
    /// itself (NodeRestriction) are accepted; `node-role.kubernetes.io/*` is rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": patterns::LABEL_VALUE},
        "maxProperties" = 64,
        "x-kubernetes-validations" = [
            {
                "rule": "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))",
                "message": "label keys must be qualified names (optional DNS prefix, '/', and 1-63 of [A-Za-z0-9_.-], starting and ending alphanumeric)"
            },
            {
                "rule": "self.all(k, !k.matches('^([^/]*\\\\.)?(kubernetes\\\\.io|k8s\\\\.io)/') || k in ['kubernetes.io/hostname', 'kubernetes.io/arch', 'kubernetes.io/os', 'beta.kubernetes.io/instance-type', 'node.kubernetes.io/instance-type', 'failure-domain.beta.kubernetes.io/region', 'failure-domain.beta.kubernetes.io/zone', 'topology.kubernetes.io/region', 'topology.kubernetes.io/zone'] || k.matches('^([^/]*\\\\.)?(kubelet|node)\\\\.kubernetes\\\\.io/.'))",
                "message": "the kubelet may not set this kubernetes.io/k8s.io label on its own Node (NodeRestriction; allowed: the well-known topology, os, arch, instance-type and hostname labels, *.kubelet.kubernetes.io/*, *.node.kubernetes.io/*); apply it from outside after the join"
            },
            {
                "rule": "!('capwin.cluster.x-k8s.io/hyperv-isolation' in self)",
                "message": "capwin.cluster.x-k8s.io/hyperv-isolation is set by capwin from windows.hyperV.enabled"
            }
        ]
    ))]
    pub labels: BTreeMap<String, String>,
    /// Add the `os=windows:NoSchedule` taint so Linux-only workloads stay off Windows nodes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub os_taint: bool,
}

/// Microsoft Defender settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Defender {
    /// Add capwin's default exclusions (containerd, kubelet, kube-proxy, CNI binaries and data
    /// folders). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_exclusions: Option<bool>,
    /// Extra excluded processes (full paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 259), regex(pattern = patterns::WINDOWS_PATH)))]
    #[schemars(extend("x-kubernetes-validations" = patterns::path_list_rules()))]
    pub exclude_processes: Vec<String>,
    /// Extra excluded paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 259), regex(pattern = patterns::WINDOWS_PATH)))]
    #[schemars(extend("x-kubernetes-validations" = patterns::path_list_rules()))]
    pub exclude_paths: Vec<String>,
}

/// Hyper-V isolation runtime handler.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sandboxImage) || self.enabled").message("sandboxImage needs enabled: true"))]
pub struct HyperV {
    /// Register the `runhcs-wcow-hypervisor` runtime handler in containerd (RuntimeClass
    /// handler of the same name) and label the Node `capwin.cluster.x-k8s.io/hyperv-isolation=true`,
    /// the label the Hyper-V RuntimeClass selects. Needs nested virtualisation, an image with the
    /// hypervisor enabled, and containerd >= 1.7.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
    /// Pause image the handler boots its utility VM from (`SandboxImage`, platform
    /// `windows/amd64`). It must carry a variant for the node's Windows build, or Hyper-V pods fail
    /// with `HCS_E_IMAGE_MISMATCH`. Default `registry.k8s.io/pause:3.10.2`, the first pause release
    /// with a Windows Server 2025 variant (it keeps the 2019 and 2022 ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[a-z0-9][A-Za-z0-9._:/@-]*$"))]
    pub sandbox_image: Option<String>,
}

/// gMSA prerequisites on the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.ccgPlugin) || self.enabled").message("ccgPlugin needs enabled: true"))]
pub struct Gmsa {
    /// Prepare the node for pods that run as a group managed service account. On a domain-joined
    /// node (`windows.domainJoin`) the node's own domain membership serves the pods; otherwise a
    /// Container Credential Guard (CCG) plugin fetches the gMSA credentials: `ccgPlugin` installs
    /// one, and without it the image must already have one registered (image-builder's Azure
    /// images carry the Key Vault plugin) or the bootstrap fails. The cluster side (the
    /// `GMSACredentialSpec` CRD and its webhook) comes from the cluster templates' gMSA addon.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
    /// A CCG plugin DLL to install and register as Microsoft documents it for non-domain-joined
    /// hosts: the COM class activated out of process (`DllSurrogate`), and its CLSID under
    /// `HKLM\SYSTEM\CurrentControlSet\Control\CCG\COMClasses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ccg_plugin: Option<CcgPlugin>,
}

/// A Container Credential Guard plugin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CcgPlugin {
    /// HTTPS URL of the plugin DLL.
    #[schemars(length(min = 1, max = 2048), regex(pattern = patterns::HTTPS_URL))]
    pub url: String,
    /// SHA-256 of the DLL, lower-case hex.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
    /// COM class id the plugin implements, e.g. `{CCC2A336-D7F3-4818-A213-272B7924213E}`.
    #[schemars(regex(pattern = r"^\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}$"))]
    pub clsid: String,
    /// COM AppID under which the class runs in the DLL surrogate. Default: a GUID derived from
    /// the CLSID, so every node registers the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}$"))]
    pub app_id: Option<String>,
}

/// Active Directory domain join of the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainJoin {
    /// DNS name of the domain, e.g. `corp.example.com`. The node's DNS servers (VNet or VPC
    /// settings) must resolve it.
    #[schemars(length(min = 1, max = 253), regex(pattern = patterns::DOMAIN))]
    pub domain: String,
    /// Distinguished name of the OU to create the computer account in, e.g.
    /// `OU=Kubernetes,DC=corp,DC=example,DC=com`. Default: the domain's Computers container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = patterns::NO_CONTROL))]
    pub organizational_unit: Option<String>,
    /// The Secret (in the config's namespace) holding the join account. The controller reads it
    /// when it renders the payload; the values travel only in the bootstrap data Secret and the
    /// node's private copy, which the bootstrap deletes after the join.
    pub credentials_secret: DomainJoinSecretRef,
}

/// Where the domain join account is kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainJoinSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the account, `DOMAIN\user` or `user@domain` (default `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: Option<String>,
    /// Key holding the password (default `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: Option<String>,
}

impl DomainJoinSecretRef {
    /// The key of the account name.
    pub fn username_key(&self) -> &str {
        self.username_key.as_deref().unwrap_or("username")
    }
    /// The key of the password.
    pub fn password_key(&self) -> &str {
        self.password_key.as_deref().unwrap_or("password")
    }
}

/// Where the bootstrap reports progress before the Node exists.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostics {
    /// Serial port the bootstrap writes `CAPWIN-BOOTSTRAP` progress lines to, read through EC2
    /// `GetConsoleOutput` or Azure boot diagnostics. Default: the port that cloud's console shows,
    /// `COM1` on AWS and `COM2` on Azure (CAPI's Azure images expose only COM2, where image-builder
    /// also mirrors cloudbase-init's log). `none` disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(COM[1-4]|none)$"))]
    pub serial_port: Option<String>,
}

/// Observed state of a `WindowsKubeadmConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowsKubeadmConfigStatus {
    /// Name of the Secret holding the payload (key `value`), published per the CAPI contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub data_secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<BootstrapInitialization>,
    /// `Ready` (mirrored by CAPI to the Machine's `BootstrapConfigReady`), `DataSecretAvailable`,
    /// `Paused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub conditions: Vec<Condition>,
    /// Last `metadata.generation` the controller acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `status.initialization` of a bootstrap config (CAPI v1beta2 contract).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapInitialization {
    /// True once `status.dataSecretName` names a complete Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_secret_created: Option<bool>,
}

/// A template MachineDeployments and MachineSets clone into one `WindowsKubeadmConfig` per Machine.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "bootstrap.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "WindowsKubeadmConfigTemplate",
    plural = "windowskubeadmconfigtemplates",
    namespaced,
    category = "cluster-api",
    shortname = "wkct",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    // `clusterctl move` discovers the kinds of CRDs with this label (clusterctl init adds it;
    // kustomize, Tilt or Helm installs get it from here).
    label("clusterctl.cluster.x-k8s.io", ""),
    printcolumn = r#"{"name":"CNI","type":"string","jsonPath":".spec.template.spec.windows.cni.flavour"}"#,
    printcolumn = r#"{"name":"Windows","type":"string","jsonPath":".spec.template.spec.windows.version"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WindowsKubeadmConfigTemplateSpec {
    pub template: WindowsKubeadmConfigTemplateResource,
}

/// The object a template stamps out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowsKubeadmConfigTemplateResource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateObjectMeta>,
    #[serde(default)]
    pub spec: WindowsKubeadmConfigSpec,
}
