//! Input checks that turn a spec into values the renderer can emit without surprises.
//!
//! The CRD schema catches most mistakes at admission; this module is the last line for anything
//! that slipped past it (an old CRD, `capwin render` on a local file) and for rules a schema
//! cannot express. Every error names the field path and the reason. A value is either accepted
//! exactly as given (it then reaches the node byte for byte) or rejected; nothing is silently
//! rewritten, except the documented path spelling (`/x` and `C:/x` mean `C:\x`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine;
use capwin_api::bootstrap::{
    CloudProviderMode, CniFlavour, ContainerdSource, FileEncoding, KubeProxyMode, Taint, TaintEffect,
    WindowsKubeadmConfigSpec,
};

use crate::node::{self, ExternalNetwork, HYPERV_LABEL};
use crate::{Redacted, RenderInput};

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.files[2].path`.
    pub path: String,
    /// Why it is invalid.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Kubernetes minor versions capwin renders for.
pub const MIN_MINOR: u32 = 32;
pub const MAX_MINOR: u32 = 37;

/// Placeholders the script fills on the node; user text must not contain them.
pub(crate) const PLACEHOLDER_MARK: &str = "@@CAPWIN_";
pub(crate) const NODE_NAME: &str = "@@CAPWIN_NODE_NAME@@";
pub(crate) const NODE_IP: &str = "@@CAPWIN_NODE_IP@@";
pub(crate) const PROVIDER_ID: &str = "@@CAPWIN_PROVIDER_ID@@";

/// kubelet flags that no longer exist, with the first minor version without them. Passing one
/// makes kubelet refuse to start ("unknown flag"), so they are rejected for that version on.
pub const REMOVED_KUBELET_FLAGS: &[(&str, u32)] = &[
    ("network-plugin", 24),
    ("network-plugin-dir", 24),
    ("cni-bin-dir", 24),
    ("cni-conf-dir", 24),
    ("cni-cache-dir", 24),
    ("image-pull-progress-deadline", 24),
    ("docker-endpoint", 24),
    ("experimental-dockershim-root-directory", 24),
    ("non-masquerade-cidr", 24),
    ("log-dir", 26),
    ("log-file", 26),
    ("logtostderr", 26),
    ("alsologtostderr", 26),
    ("log-file-max-size", 26),
    ("one-output", 26),
    ("skip-headers", 26),
    ("skip-log-headers", 26),
    ("stderrthreshold", 26),
    ("container-runtime", 27),
    ("master-service-namespace", 27),
    ("experimental-allocatable-ignore-eviction", 27),
    ("keep-terminated-pod-volumes", 31),
    ("pod-infra-container-image", 34),
];

/// Feature gates that no longer exist (kubelet refuses unknown gates).
pub const REMOVED_FEATURE_GATES: &[(&str, u32)] = &[("WindowsHostProcessContainers", 28)];
/// Feature gates that are GA and locked to `true` from a minor version on: `=true` is accepted
/// and changes nothing, `=false` stops the component. WinOverlay and WinDSR (kube-proxy's Windows
/// gates) are locked since 1.34 (kubernetes `pkg/features/kube_features.go`), not removed.
pub const LOCKED_FEATURE_GATES: &[(&str, u32)] = &[("WinOverlay", 34), ("WinDSR", 34)];

/// kubelet flags capwin owns; setting them in `kubeletExtraArgs` would fight the renderer.
const OWNED_KUBELET_FLAGS: &[(&str, &str)] = &[
    ("register-with-taints", "use joinConfiguration.nodeRegistration.taints or windows.node.osTaint"),
    ("hostname-override", "use joinConfiguration.nodeRegistration.name"),
    ("container-runtime-endpoint", "the containerd named pipe is fixed by the image"),
    ("windows-service", "the bootstrap decides how kubelet runs as a service"),
];

/// A user file, ready to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedFile {
    /// Absolute Windows path with backslashes.
    pub path: String,
    pub bytes: Vec<u8>,
    /// Four octal digits.
    pub permissions: String,
    pub append: bool,
    /// No group/other read bit: the bootstrap reduces the ACL to SYSTEM and Administrators.
    pub private: bool,
}

/// Validated and normalised values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub minor: u32,
    pub files: Vec<CheckedFile>,
    /// Final kubelet flags in JoinConfiguration order (user overrides applied).
    pub kubelet_args: Vec<(String, String)>,
    /// Final taints, user's first.
    pub taints: Vec<Taint>,
    pub node_name: Option<String>,
    pub set_provider_id: bool,
    pub api_server_endpoint: String,
    pub ca_cert_hashes: Vec<String>,
    pub unsafe_skip_ca_verification: bool,
    /// `None`: serial diagnostics off.
    pub serial_port: Option<String>,
    pub verbosity: u8,
    pub defender_processes: Vec<String>,
    pub defender_paths: Vec<String>,
    pub proxy_environment: Vec<String>,
    pub admin_authorized_keys: Vec<String>,
    /// flannel's throw-away External HNS network, clear of the cluster's CIDRs.
    pub external_network: Option<ExternalNetwork>,
    /// The domain join account file (`{"username":…,"password":…}`, ASCII JSON).
    pub domain_join_file: Option<Redacted<Vec<u8>>>,
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), reason: reason.into() });
    }
}

/// Checks the whole input; returns every problem found, not only the first.
pub fn validate(input: &RenderInput<'_>) -> Result<Checked, Vec<FieldError>> {
    let spec = input.spec;
    let mut e = Errors(Vec::new());

    let minor = kubernetes_minor(&input.cluster.kubernetes_version).unwrap_or_else(|reason| {
        e.push("kubernetesVersion", reason);
        0
    });
    check_endpoint(&mut e, input, spec);
    let (ca_cert_hashes, unsafe_skip) = ca_hashes(&mut e, input, spec);
    let files = files(&mut e, input, spec);
    let node_name = node_name(&mut e, spec);
    let set_provider_id = node::set_provider_id(spec.windows.kubelet.set_provider_id);
    let taints = taints(&mut e, spec);
    let kubelet_args = kubelet_args(&mut e, spec, minor, set_provider_id);
    windows_settings(&mut e, spec);
    let proxy_environment = proxy_environment(&mut e, input, spec);
    let admin_authorized_keys = users(&mut e, spec);
    ntp(&mut e, spec);
    let (defender_processes, defender_paths) = defender(&mut e, spec);
    for (i, p) in spec.join_configuration.node_registration.ignore_preflight_errors.iter().enumerate() {
        if p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            e.push(
                format!("spec.joinConfiguration.nodeRegistration.ignorePreflightErrors[{i}]"),
                "must be a kubeadm preflight check name such as SystemVerification, or all",
            );
        }
    }
    commands(&mut e, &spec.pre_kubeadm_commands, "spec.preKubeadmCommands");
    commands(&mut e, &spec.post_kubeadm_commands, "spec.postKubeadmCommands");
    let configured_port = spec.windows.diagnostics.serial_port.as_deref();
    if configured_port.is_some_and(|p| !matches!(p, "COM1" | "COM2" | "COM3" | "COM4" | "none")) {
        e.push("spec.windows.diagnostics.serialPort", "must be COM1 to COM4 or none");
    }
    let serial_port = node::serial_port(input.cloud, configured_port);
    let external_network =
        node::external_network(spec.windows.cni.flavour, &input.cluster.pod_cidrs, &input.cluster.service_cidrs)
            .unwrap_or_else(|reason| {
                e.push("cluster.spec.clusterNetwork", reason);
                None
            });
    let domain_join_file = domain_join(&mut e, input, spec);
    let verbosity = spec.verbosity.unwrap_or(5);
    if verbosity > 10 {
        e.push("spec.verbosity", "must be between 0 and 10");
    }

    if !e.0.is_empty() {
        return Err(e.0);
    }
    Ok(Checked {
        minor,
        files,
        kubelet_args,
        taints,
        node_name,
        set_provider_id,
        api_server_endpoint: endpoint(input, spec),
        ca_cert_hashes,
        unsafe_skip_ca_verification: unsafe_skip,
        serial_port,
        verbosity,
        defender_processes,
        defender_paths,
        proxy_environment,
        admin_authorized_keys,
        external_network,
        domain_join_file,
    })
}

/// `v1.34.2` (optionally with a pre-release or build suffix) → 34, within the supported range.
pub fn kubernetes_minor(version: &str) -> Result<u32, String> {
    let rest = version.strip_prefix('v').ok_or("must look like v1.34.2")?;
    let core = rest.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) || parts[0] != "1" {
        return Err("must look like v1.34.2".into());
    }
    if rest.len() > core.len()
        && !rest[core.len() + 1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err("has an invalid pre-release or build suffix".into());
    }
    let minor: u32 = parts[1].parse().map_err(|_| "must look like v1.34.2")?;
    if !(MIN_MINOR..=MAX_MINOR).contains(&minor) {
        return Err(format!(
            "Kubernetes 1.{minor} is not supported; capwin renders for 1.{MIN_MINOR} to 1.{MAX_MINOR}"
        ));
    }
    Ok(minor)
}

fn endpoint(input: &RenderInput<'_>, spec: &WindowsKubeadmConfigSpec) -> String {
    spec.join_configuration
        .discovery
        .as_ref()
        .and_then(|d| d.bootstrap_token.as_ref())
        .and_then(|b| b.api_server_endpoint.clone())
        .unwrap_or_else(|| input.cluster.api_server_endpoint.clone())
}

fn check_endpoint(e: &mut Errors, input: &RenderInput<'_>, spec: &WindowsKubeadmConfigSpec) {
    let value = endpoint(input, spec);
    let path = if value == input.cluster.api_server_endpoint {
        "cluster.spec.controlPlaneEndpoint"
    } else {
        "spec.joinConfiguration.discovery.bootstrapToken.apiServerEndpoint"
    };
    let Some((host, port)) = value.rsplit_once(':') else {
        return e.push(path, "must be host:port");
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let host_ok = host.parse::<std::net::IpAddr>().is_ok() || is_dns_name(host);
    if !host_ok {
        e.push(path, "the host must be a DNS name or an IP address");
    }
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        e.push(path, "the port must be 1 to 65535");
    }
}

fn ca_hashes(e: &mut Errors, input: &RenderInput<'_>, spec: &WindowsKubeadmConfigSpec) -> (Vec<String>, bool) {
    let discovery = spec.join_configuration.discovery.as_ref().and_then(|d| d.bootstrap_token.as_ref());
    let user: Vec<String> =
        discovery.map(|d| d.ca_cert_hashes.iter().map(|h| h.0.clone()).collect()).unwrap_or_default();
    // User-supplied hashes win, as in CABPK.
    let (hashes, path) = if user.is_empty() {
        (input.cluster.ca_cert_hashes.clone(), "cluster CA (<cluster>-ca)")
    } else {
        (user, "spec.joinConfiguration.discovery.bootstrapToken.caCertHashes")
    };
    for (i, h) in hashes.iter().enumerate() {
        let ok = h
            .strip_prefix("sha256:")
            .is_some_and(|x| x.len() == 64 && x.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        if !ok {
            e.push(format!("{path}[{i}]"), "must be sha256: followed by 64 lower-case hex digits");
        }
    }
    let unsafe_skip = discovery.is_some_and(|d| d.unsafe_skip_ca_verification);
    if hashes.is_empty() && !unsafe_skip {
        e.push(
            "spec.joinConfiguration.discovery.bootstrapToken.caCertHashes",
            "no CA hash is known; give one or set unsafeSkipCAVerification explicitly",
        );
    }
    // With a hash kubeadm pins the CA; the skip flag only matters when there is none.
    let skip = unsafe_skip && hashes.is_empty();
    (hashes, skip)
}

fn files(e: &mut Errors, input: &RenderInput<'_>, spec: &WindowsKubeadmConfigSpec) -> Vec<CheckedFile> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, f) in spec.files.iter().enumerate() {
        let base = format!("spec.files[{i}]");
        let path = match windows_path(&f.path) {
            Ok(p) => p,
            Err(reason) => {
                e.push(format!("{base}.path"), reason);
                continue;
            }
        };
        let lower = path.to_ascii_lowercase();
        if lower.starts_with(r"c:\run\capwin\")
            || lower == JOIN_CONFIG_LOWER
            || lower.starts_with(r"c:\run\cluster-api\")
        {
            e.push(format!("{base}.path"), "is reserved for capwin's own bootstrap files");
            continue;
        }
        if !seen.insert(lower) {
            e.push(format!("{base}.path"), "is written twice; merge the files or use append");
        }
        let permissions = f.permissions.clone().unwrap_or_else(|| "0644".into());
        let mode = if permissions.len() == 3 || (permissions.len() == 4 && permissions.starts_with('0')) {
            u32::from_str_radix(&permissions, 8).ok()
        } else {
            None
        };
        let Some(mode) = mode else {
            e.push(format!("{base}.permissions"), "must be an octal mode such as 0644");
            continue;
        };
        if mode & 0o200 == 0 && f.append {
            e.push(format!("{base}.permissions"), "a read-only file cannot be appended to");
        }
        let raw: Option<Vec<u8>> = match (&f.content, &f.content_from) {
            (Some(c), None) => Some(c.as_bytes().to_vec()),
            (None, Some(_)) => match input.secret_file_contents.get(&i) {
                Some(b) => Some(b.clone()),
                None => {
                    e.push(format!("{base}.contentFrom"), "the Secret content was not resolved");
                    None
                }
            },
            _ => {
                e.push(base.clone(), "exactly one of content and contentFrom must be set");
                None
            }
        };
        let Some(raw) = raw else { continue };
        let bytes = match decode(&raw, f.encoding) {
            Ok(b) => b,
            Err(reason) => {
                e.push(format!("{base}.encoding"), reason);
                continue;
            }
        };
        if contains_placeholder(&bytes) {
            e.push(format!("{base}.content"), format!("must not contain {PLACEHOLDER_MARK}"));
        }
        out.push(CheckedFile {
            path,
            bytes,
            permissions: format!("{mode:04o}"),
            append: f.append,
            private: mode & 0o044 == 0,
        });
    }
    out
}

const JOIN_CONFIG_LOWER: &str = r"c:\run\kubeadm\kubeadm-join-config.yaml";

fn decode(raw: &[u8], encoding: Option<FileEncoding>) -> Result<Vec<u8>, String> {
    let b64 = |r: &[u8]| {
        let compact: Vec<u8> = r.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|err| format!("content is not valid base64: {err}"))
    };
    let gunzip = |r: &[u8]| {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(r)
            .read_to_end(&mut out)
            .map(|_| out)
            .map_err(|err| format!("content is not valid gzip: {err}"))
    };
    match encoding {
        None => Ok(raw.to_vec()),
        Some(FileEncoding::Base64) => b64(raw),
        Some(FileEncoding::Gzip) => gunzip(raw),
        Some(FileEncoding::GzipBase64) => gunzip(&b64(raw)?),
    }
}

/// Normalises a file path to `C:\…` and rejects what Windows cannot create.
pub fn windows_path(p: &str) -> Result<String, String> {
    if p.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    let slashed = p.replace('/', "\\");
    let path = if slashed.starts_with('\\') && !slashed.starts_with("\\\\") { format!("C:{slashed}") } else { slashed };
    let bytes = path.as_bytes();
    if bytes.len() < 4 || !bytes[0].is_ascii_alphabetic() || bytes[1] != b':' || bytes[2] != b'\\' {
        return Err(r"must be an absolute path such as C:\k\file.txt or /k/file.txt".into());
    }
    if path.chars().count() > 259 {
        return Err("must be at most 259 characters (Windows MAX_PATH)".into());
    }
    for part in path[3..].split('\\') {
        if part.is_empty() {
            return Err("must not contain empty path components".into());
        }
        if part == "." || part == ".." {
            return Err("must not contain . or .. components".into());
        }
        if part.chars().any(|c| matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*')) {
            return Err(r#"must not contain any of < > : " | ? *"#.into());
        }
        if part.ends_with(' ') || part.ends_with('.') {
            return Err("path components must not end with a space or a dot".into());
        }
        let stem = part.split('.').next().unwrap_or_default().to_ascii_uppercase();
        let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
            || ((stem.starts_with("COM") || stem.starts_with("LPT"))
                && stem.len() == 4
                && stem.as_bytes()[3].is_ascii_digit());
        if reserved {
            return Err(format!("{part} is a reserved Windows device name"));
        }
    }
    Ok(format!("{}{}", path[..1].to_ascii_uppercase(), &path[1..]))
}

fn contains_placeholder(bytes: &[u8]) -> bool {
    bytes.windows(PLACEHOLDER_MARK.len()).any(|w| w == PLACEHOLDER_MARK.as_bytes())
}

fn node_name(e: &mut Errors, spec: &WindowsKubeadmConfigSpec) -> Option<String> {
    let name = spec.join_configuration.node_registration.name.clone()?;
    if !is_dns_name(&name) || name.len() > 63 {
        e.push(
            "spec.joinConfiguration.nodeRegistration.name",
            "must be a lower-case RFC 1123 name of at most 63 characters",
        );
    }
    Some(name)
}

/// Lower-case RFC 1123 subdomain.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A Kubernetes qualified name (`prefix/name`), as used for label and taint keys.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns_name)
}

/// A Kubernetes label value (may be empty).
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Labels under `kubernetes.io`/`k8s.io` that the NodeRestriction admission plugin lets a
/// kubelet set on itself; any other label in those namespaces makes kubelet fail to start.
fn kubelet_may_set_label(key: &str) -> bool {
    let Some((prefix, name)) = key.rsplit_once('/') else { return true };
    let restricted = |d: &str| prefix == d || prefix.ends_with(&format!(".{d}"));
    if !(restricted("kubernetes.io") || restricted("k8s.io")) {
        return true;
    }
    matches!(
        key,
        "kubernetes.io/hostname"
            | "kubernetes.io/arch"
            | "kubernetes.io/os"
            | "beta.kubernetes.io/instance-type"
            | "node.kubernetes.io/instance-type"
            | "failure-domain.beta.kubernetes.io/region"
            | "failure-domain.beta.kubernetes.io/zone"
            | "topology.kubernetes.io/region"
            | "topology.kubernetes.io/zone"
    ) || ((prefix == "kubelet.kubernetes.io"
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix == "node.kubernetes.io"
        || prefix.ends_with(".node.kubernetes.io"))
        && !name.is_empty())
}

fn taints(e: &mut Errors, spec: &WindowsKubeadmConfigSpec) -> Vec<Taint> {
    let mut out: Vec<Taint> = Vec::new();
    for (i, t) in spec.join_configuration.node_registration.taints.iter().enumerate() {
        let base = format!("spec.joinConfiguration.nodeRegistration.taints[{i}]");
        if !is_qualified_name(&t.key) {
            e.push(
                format!("{base}.key"),
                "must be a qualified name (optional DNS prefix, '/', and 1-63 of [A-Za-z0-9_.-])",
            );
        }
        if let Some(v) = &t.value
            && !is_label_value(v)
        {
            e.push(format!("{base}.value"), "must be at most 63 of [A-Za-z0-9_.-], starting and ending alphanumeric");
        }
        if out.iter().any(|o| o.key == t.key && o.effect == t.effect) {
            e.push(base, "duplicates an earlier taint with the same key and effect");
        }
        out.push(t.clone());
    }
    let mut add = |key: &str, value: Option<&str>| {
        if !out.iter().any(|o| o.key == key && o.effect == TaintEffect::NoSchedule) {
            out.push(Taint { key: key.into(), value: value.map(Into::into), effect: TaintEffect::NoSchedule });
        }
    };
    if spec.windows.node.os_taint {
        add("os", Some("windows"));
    }
    // CAPI removes this one once it has synced the Machine's labels to the Node.
    add("node.cluster.x-k8s.io/uninitialized", None);
    if spec.windows.kubelet.cloud_provider == CloudProviderMode::External {
        // Windows nodes did not get it from kubelet on sc.exe images (CAPZ #6293): be explicit.
        add("node.cloudprovider.kubernetes.io/uninitialized", Some("true"));
    }
    out
}

/// `key=value:Effect` as kubelet's `--register-with-taints` and kubeadm write it.
pub fn taint_flag(t: &Taint) -> String {
    let effect = match t.effect {
        TaintEffect::NoSchedule => "NoSchedule",
        TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        TaintEffect::NoExecute => "NoExecute",
    };
    match &t.value {
        Some(v) => format!("{}={}:{}", t.key, v, effect),
        None => format!("{}:{}", t.key, effect),
    }
}

fn kubelet_args(
    e: &mut Errors,
    spec: &WindowsKubeadmConfigSpec,
    minor: u32,
    set_provider_id: bool,
) -> Vec<(String, String)> {
    let mut user: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (i, a) in spec.join_configuration.node_registration.kubelet_extra_args.iter().enumerate() {
        let base = format!("spec.joinConfiguration.nodeRegistration.kubeletExtraArgs[{i}]");
        let name_ok = !a.name.is_empty()
            && a.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !a.name.starts_with('-');
        if !name_ok {
            e.push(format!("{base}.name"), "must be a flag name without leading dashes, e.g. node-ip");
            continue;
        }
        if let Some((_, hint)) = OWNED_KUBELET_FLAGS.iter().find(|(n, _)| *n == a.name) {
            e.push(format!("{base}.name"), format!("--{} is set by capwin; {hint}", a.name));
        }
        if let Some((_, removed)) = REMOVED_KUBELET_FLAGS.iter().find(|(n, _)| *n == a.name)
            && minor >= *removed
        {
            e.push(
                format!("{base}.name"),
                format!("--{} was removed from kubelet in 1.{removed}; kubelet would not start", a.name),
            );
        }
        if a.value.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'') {
            e.push(
                format!("{base}.value"),
                "must not contain whitespace, quotes or control characters: kubelet flags travel through kubeadm-flags.env, which cannot carry them",
            );
        }
        if a.value.contains(PLACEHOLDER_MARK) {
            e.push(format!("{base}.value"), format!("must not contain {PLACEHOLDER_MARK}"));
        }
        if a.name == "feature-gates" {
            for (gate, removed) in REMOVED_FEATURE_GATES {
                if minor >= *removed && a.value.split(',').any(|kv| kv.split('=').next() == Some(gate)) {
                    e.push(
                        format!("{base}.value"),
                        format!("feature gate {gate} was removed in 1.{removed}; kubelet would not start"),
                    );
                }
            }
            for (gate, since) in LOCKED_FEATURE_GATES {
                if minor >= *since && a.value.split(',').any(|kv| kv == format!("{gate}=false")) {
                    e.push(
                        format!("{base}.value"),
                        format!(
                            "feature gate {gate} is GA and locked to true since 1.{since}; false would stop kubelet"
                        ),
                    );
                }
            }
        }
        if user.insert(a.name.clone(), a.value.clone()).is_some() {
            e.push(format!("{base}.name"), "is given twice");
        } else {
            order.push(a.name.clone());
        }
    }

    // Typed node labels join any labels the user passed as a flag.
    let mut labels: Vec<String> = user
        .get("node-labels")
        .map(|v| v.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    for (i, l) in labels.iter().enumerate() {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        check_label(e, &format!("spec.joinConfiguration.nodeRegistration.kubeletExtraArgs[node-labels][{i}]"), k, v);
    }
    for (k, v) in &spec.windows.node.labels {
        check_label(e, &format!("spec.windows.node.labels[{k}]"), k, v);
        labels.push(format!("{k}={v}"));
    }
    // The Hyper-V RuntimeClass selects nodes by this label; only capwin sets it, and only on
    // nodes that have the handler.
    for (i, l) in labels.iter().enumerate() {
        if l.split_once('=').map_or(l.as_str(), |(k, _)| k) == HYPERV_LABEL.0 {
            e.push(
                format!("spec.windows.node.labels (node label {i})"),
                format!("{} is set by capwin from windows.hyperV.enabled", HYPERV_LABEL.0),
            );
        }
    }
    if spec.windows.hyper_v.enabled {
        labels.push(format!("{}={}", HYPERV_LABEL.0, HYPERV_LABEL.1));
    }

    let mut defaults: Vec<(String, String)> = Vec::new();
    if spec.windows.kubelet.cloud_provider == CloudProviderMode::External {
        defaults.push(("cloud-provider".into(), "external".into()));
    }
    defaults.push(("node-ip".into(), NODE_IP.into()));
    if set_provider_id {
        defaults.push(("provider-id".into(), PROVIDER_ID.into()));
    }
    defaults.push(("windows-priorityclass".into(), "ABOVE_NORMAL_PRIORITY_CLASS".into()));

    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in defaults {
        if !user.contains_key(&name) {
            out.push((name, value));
        }
    }
    for name in order {
        if name != "node-labels" {
            out.push((name.clone(), user[&name].clone()));
        }
    }
    if !labels.is_empty() {
        out.push(("node-labels".into(), labels.join(",")));
    }
    out
}

fn check_label(e: &mut Errors, path: &str, key: &str, value: &str) {
    if !is_qualified_name(key) {
        e.push(path, "the key must be a qualified name (optional DNS prefix, '/', and 1-63 of [A-Za-z0-9_.-])");
    } else if !kubelet_may_set_label(key) {
        e.push(
            path,
            format!(
                "the kubelet may not set {key} on its own Node (NodeRestriction); apply it from outside after the join"
            ),
        );
    }
    if !is_label_value(value) {
        e.push(path, "the value must be at most 63 of [A-Za-z0-9_.-], starting and ending alphanumeric");
    }
}

fn windows_settings(e: &mut Errors, spec: &WindowsKubeadmConfigSpec) {
    let w = &spec.windows;
    if w.cni.flavour == CniFlavour::CalicoVxlan && w.kube_proxy.mode == KubeProxyMode::None {
        // Calico for Windows needs kube-proxy; only an eBPF-less kube-proxy-free mode exists on Linux.
        e.push("spec.windows.kubeProxy.mode", "calico-vxlan on Windows needs kube-proxy (mode daemonset)");
    }
    match (&w.containerd.source, &w.containerd.download) {
        (ContainerdSource::Download, None) => {
            e.push("spec.windows.containerd.download", "is required when source is Download")
        }
        (ContainerdSource::Image, Some(_)) => {
            e.push("spec.windows.containerd.download", "is only allowed when source is Download")
        }
        (_, Some(d)) => {
            check_https(e, "spec.windows.containerd.download.url", &d.url);
            check_sha256(e, "spec.windows.containerd.download.sha256", &d.sha256);
            let ok = d.version.split(['-']).next().is_some_and(|c| {
                c.split('.').count() == 3
                    && c.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            });
            if !ok {
                e.push("spec.windows.containerd.download.version", "must look like 2.1.4");
            }
        }
        _ => {}
    }
    let mut names = BTreeSet::new();
    for (i, d) in w.containerd.config_drop_ins.iter().enumerate() {
        let ok = !d.name.is_empty()
            && d.name.len() <= 64
            && d.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && d.name.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            e.push(
                format!("spec.windows.containerd.configDropIns[{i}].name"),
                "must be 1-64 of [A-Za-z0-9_.-], starting alphanumeric",
            );
        }
        if d.name == "capwin-hyperv" {
            e.push(
                format!("spec.windows.containerd.configDropIns[{i}].name"),
                "capwin-hyperv is reserved for the Hyper-V handler",
            );
        }
        if !names.insert(d.name.to_ascii_lowercase()) {
            e.push(format!("spec.windows.containerd.configDropIns[{i}].name"), "is used twice");
        }
    }
    let mut bins = BTreeSet::new();
    for (i, b) in w.binaries.iter().enumerate() {
        check_https(e, &format!("spec.windows.binaries[{i}].url"), &b.url);
        check_sha256(e, &format!("spec.windows.binaries[{i}].sha256"), &b.sha256);
        if !bins.insert(format!("{:?}", b.name)) {
            e.push(format!("spec.windows.binaries[{i}].name"), "is replaced twice");
        }
    }
    if let Some(p) = &w.gmsa.ccg_plugin {
        if !w.gmsa.enabled {
            e.push("spec.windows.gmsa.ccgPlugin", "needs enabled: true");
        }
        check_https(e, "spec.windows.gmsa.ccgPlugin.url", &p.url);
        check_sha256(e, "spec.windows.gmsa.ccgPlugin.sha256", &p.sha256);
        if !is_braced_guid(&p.clsid) {
            e.push(
                "spec.windows.gmsa.ccgPlugin.clsid",
                "must be a GUID in braces, e.g. {CCC2A336-D7F3-4818-A213-272B7924213E}",
            );
        }
        if p.app_id.as_deref().is_some_and(|a| !is_braced_guid(a)) {
            e.push("spec.windows.gmsa.ccgPlugin.appId", "must be a GUID in braces");
        }
    }
    if let Some(image) = &w.hyper_v.sandbox_image {
        if !w.hyper_v.enabled {
            e.push("spec.windows.hyperV.sandboxImage", "needs enabled: true");
        }
        if !is_image_reference(image) {
            e.push(
                "spec.windows.hyperV.sandboxImage",
                "must be an image reference such as registry.k8s.io/pause:3.10.2 (lower-case registry and path, no quotes or spaces)",
            );
        }
    }
}

fn is_braced_guid(s: &str) -> bool {
    let c = s.as_bytes();
    c.len() == 38
        && c[0] == b'{'
        && c[37] == b'}'
        && c[1..37]
            .iter()
            .enumerate()
            .all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { *b == b'-' } else { b.is_ascii_hexdigit() })
}

/// An OCI image reference without anything TOML or PowerShell could misread: `name[:tag][@digest]`
/// with a lower-case repository.
fn is_image_reference(s: &str) -> bool {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    let digest_ok = digest.is_none_or(|d| {
        d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !t.starts_with(['.', '-'])
    });
    let name_ok = !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b':'))
                && part.as_bytes()[0].is_ascii_alphanumeric()
        });
    name_ok && tag_ok && digest_ok && s.len() <= 512
}

/// `spec.windows.domainJoin`: the domain, the OU, and the join account the controller resolved
/// from the Secret. Errors name the field and never echo the account or the password.
fn domain_join(e: &mut Errors, input: &RenderInput<'_>, spec: &WindowsKubeadmConfigSpec) -> Option<Redacted<Vec<u8>>> {
    let d = spec.windows.domain_join.as_ref()?;
    let domain = d.domain.to_ascii_lowercase();
    if !is_dns_name(&domain) || !domain.contains('.') {
        e.push("spec.windows.domainJoin.domain", "must be the domain's DNS name, e.g. corp.example.com");
    }
    if let Some(ou) = &d.organizational_unit
        && let Err(reason) = check_ou(ou, &domain)
    {
        e.push("spec.windows.domainJoin.organizationalUnit", reason);
    }
    let r = &d.credentials_secret;
    let base = "spec.windows.domainJoin.credentialsSecret";
    if r.name.is_empty() {
        e.push(format!("{base}.name"), "must name a Secret");
    }
    let Some(secret) = input.domain_join_secret else {
        e.push(base, "the Secret content was not resolved");
        return None;
    };
    let text = |e: &mut Errors, key: &str, bytes: &[u8]| -> Option<String> {
        let path = format!("{base} (key {key})");
        let Ok(s) = std::str::from_utf8(bytes) else {
            e.push(path, "is not UTF-8 text");
            return None;
        };
        if s.is_empty() || s.chars().count() > 256 {
            e.push(path, "must be 1 to 256 characters");
            return None;
        }
        if s.ends_with('\n') || s.ends_with('\r') {
            e.push(path, "ends with a line break (a Secret made with echo keeps it); remove it");
            return None;
        }
        if s.chars().any(char::is_control) {
            e.push(path, "must not contain control characters");
            return None;
        }
        Some(s.to_string())
    };
    let username = text(e, r.username_key(), &secret.username);
    let password = text(e, r.password_key(), &secret.password);
    if let Some(u) = &username {
        let qualified = match (u.split_once('\\'), u.split_once('@')) {
            (Some((dom, user)), None) => !dom.is_empty() && !user.is_empty() && !user.contains('\\'),
            (None, Some((user, dom))) => !dom.is_empty() && !user.is_empty() && !dom.contains('@'),
            _ => false,
        };
        if !qualified {
            e.push(
                format!("{base} (key {})", r.username_key()),
                r"must be a domain account, DOMAIN\user or user@domain",
            );
        }
    }
    let (username, password) = (username?, password?);
    let json = crate::json::to_ascii_json(&serde_json::json!({"username": username, "password": password}));
    Some(Redacted(json.into_bytes()))
}

/// An OU distinguished name inside the domain: `OU=`/`CN=` components followed by the domain's
/// `DC=` components (Add-Computer -OUPath takes the full DN).
fn check_ou(ou: &str, domain: &str) -> Result<(), String> {
    if ou.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    // Split at commas that are not escaped with a backslash.
    let mut parts = Vec::new();
    let (mut cur, mut escaped) = (String::new(), false);
    for c in ou.chars() {
        match c {
            ',' if !escaped => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
        escaped = c == '\\' && !escaped;
    }
    parts.push(cur);
    let mut dcs = Vec::new();
    for p in &parts {
        let Some((kind, value)) = p.trim().split_once('=') else {
            return Err("must be a distinguished name such as OU=Kubernetes,DC=corp,DC=example,DC=com".into());
        };
        let kind = kind.trim().to_ascii_uppercase();
        if value.trim().is_empty() || !matches!(kind.as_str(), "OU" | "CN" | "DC") {
            return Err("must be a distinguished name such as OU=Kubernetes,DC=corp,DC=example,DC=com".into());
        }
        if kind == "DC" {
            dcs.push(value.trim().to_ascii_lowercase());
        } else if !dcs.is_empty() {
            return Err("the DC= components must come last".into());
        }
    }
    if dcs.join(".") != domain {
        return Err(format!("must end with the domain's components (DC={})", domain.replace('.', ",DC=")));
    }
    if dcs.len() == parts.len() {
        return Err("names the domain itself; give an OU= (or CN=) container".into());
    }
    Ok(())
}

fn check_https(e: &mut Errors, path: &str, url: &str) {
    let ok = url.strip_prefix("https://").is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'' || c == '`');
    if !ok {
        e.push(path, "must be an https:// URL without whitespace or quotes");
    }
}

fn check_sha256(e: &mut Errors, path: &str, s: &str) {
    if !(s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))) {
        e.push(path, "must be 64 lower-case hex digits");
    }
}

fn proxy_environment(e: &mut Errors, input: &RenderInput<'_>, spec: &WindowsKubeadmConfigSpec) -> Vec<String> {
    let Some(p) = &spec.windows.containerd.proxy else { return Vec::new() };
    let check_url = |e: &mut Errors, path: &str, u: &str| {
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && u.len() > 8
            && !u.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'');
        if !ok {
            e.push(path, "must be an http:// or https:// URL without whitespace, quotes or control characters");
        }
    };
    let mut env = Vec::new();
    if let Some(u) = &p.http_proxy {
        check_url(e, "spec.windows.containerd.proxy.httpProxy", u);
        env.push(format!("HTTP_PROXY={u}"));
        env.push(format!("http_proxy={u}"));
    }
    if let Some(u) = &p.https_proxy {
        check_url(e, "spec.windows.containerd.proxy.httpsProxy", u);
        env.push(format!("HTTPS_PROXY={u}"));
        env.push(format!("https_proxy={u}"));
    }
    if env.is_empty() {
        e.push("spec.windows.containerd.proxy", "needs httpProxy or httpsProxy");
        return env;
    }
    let mut bypass: Vec<String> = Vec::new();
    for (i, n) in p.no_proxy.iter().enumerate() {
        if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '"' || c == '\'') {
            e.push(
                format!("spec.windows.containerd.proxy.noProxy[{i}]"),
                "must be a non-empty host, domain or CIDR without commas, quotes or whitespace",
            );
        }
        bypass.push(n.clone());
    }
    let endpoint = endpoint(input, spec);
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or(endpoint);
    let always = [
        host,
        "localhost".into(),
        "127.0.0.1".into(),
        "169.254.169.254".into(),
        ".svc".into(),
        ".cluster.local".into(),
    ];
    for a in always
        .into_iter()
        .chain(input.cluster.pod_cidrs.iter().cloned())
        .chain(input.cluster.service_cidrs.iter().cloned())
    {
        if !bypass.contains(&a) {
            bypass.push(a);
        }
    }
    env.push(format!("NO_PROXY={}", bypass.join(",")));
    env.push(format!("no_proxy={}", bypass.join(",")));
    env
}

fn users(e: &mut Errors, spec: &WindowsKubeadmConfigSpec) -> Vec<String> {
    let mut admin_keys = Vec::new();
    let mut names = BTreeSet::new();
    for (i, u) in spec.users.iter().enumerate() {
        let base = format!("spec.users[{i}]");
        let bad = |c: char| c.is_control() || r#""/\[]:;|=,+*?<>@"#.contains(c);
        if u.name.is_empty()
            || u.name.chars().count() > 20
            || u.name.chars().any(bad)
            || u.name.trim() != u.name
            || u.name.ends_with('.')
        {
            e.push(
                format!("{base}.name"),
                r#"must be 1-20 characters without "/\[]:;|=,+*?<>@, control characters, or surrounding spaces"#,
            );
        }
        if !names.insert(u.name.to_lowercase()) {
            e.push(format!("{base}.name"), "is given twice (Windows user names ignore case)");
        }
        if let Some(g) = &u.gecos
            && g.chars().any(char::is_control)
        {
            e.push(format!("{base}.gecos"), "must not contain control characters");
        }
        for (j, g) in u.groups.iter().enumerate() {
            if g.is_empty() || g.chars().count() > 256 || g.chars().any(bad) || g.trim() != g {
                e.push(
                    format!("{base}.groups[{j}]"),
                    r#"must be a local group name without "/\[]:;|=,+*?<>@ or control characters"#,
                );
            }
        }
        for (j, k) in u.ssh_authorized_keys.iter().enumerate() {
            let known = [
                "ssh-ed25519 ",
                "ssh-rsa ",
                "ecdsa-sha2-nistp256 ",
                "ecdsa-sha2-nistp384 ",
                "ecdsa-sha2-nistp521 ",
                "sk-ssh-ed25519@openssh.com ",
                "sk-ecdsa-sha2-nistp256@openssh.com ",
            ];
            if k.chars().any(char::is_control) || !known.iter().any(|p| k.starts_with(p)) {
                e.push(
                    format!("{base}.sshAuthorizedKeys[{j}]"),
                    "must be one OpenSSH public key line (ssh-ed25519, ssh-rsa, ecdsa-sha2-…) without line breaks",
                );
            }
        }
        if u.groups.iter().any(|g| g.eq_ignore_ascii_case("Administrators")) {
            admin_keys.extend(u.ssh_authorized_keys.iter().cloned());
        }
    }
    admin_keys
}

fn ntp(e: &mut Errors, spec: &WindowsKubeadmConfigSpec) {
    if let Some(n) = &spec.ntp {
        for (i, s) in n.servers.iter().enumerate() {
            let lower = s.to_ascii_lowercase();
            if s.parse::<std::net::IpAddr>().is_err() && !is_dns_name(&lower) {
                e.push(format!("spec.ntp.servers[{i}]"), "must be a host name or an IP address");
            }
        }
    }
}

fn defender(e: &mut Errors, spec: &WindowsKubeadmConfigSpec) -> (Vec<String>, Vec<String>) {
    let d = &spec.windows.defender;
    let mut processes: Vec<String> = Vec::new();
    let mut paths: Vec<String> = Vec::new();
    if d.default_exclusions.unwrap_or(true) {
        processes.extend(
            [
                r"C:\Program Files\containerd\containerd.exe",
                r"C:\Program Files\containerd\containerd-shim-runhcs-v1.exe",
                r"C:\Program Files\containerd\ctr.exe",
                r"C:\k\kubelet.exe",
                r"C:\k\kube-proxy.exe",
            ]
            .map(String::from),
        );
        let cni: &[&str] = match spec.windows.cni.flavour {
            CniFlavour::CalicoVxlan => &[r"C:\opt\cni\bin\calico.exe", r"C:\opt\cni\bin\calico-ipam.exe"],
            CniFlavour::FlannelVxlan => &[
                r"C:\opt\cni\bin\flannel.exe",
                r"C:\opt\cni\bin\sdnoverlay.exe",
                r"C:\opt\cni\bin\host-local.exe",
                r"C:\k\flannel\flanneld.exe",
            ],
            CniFlavour::FlannelHostGw => &[
                r"C:\opt\cni\bin\flannel.exe",
                r"C:\opt\cni\bin\sdnbridge.exe",
                r"C:\opt\cni\bin\host-local.exe",
                r"C:\k\flannel\flanneld.exe",
            ],
            CniFlavour::None => &[],
        };
        processes.extend(cni.iter().map(|s| s.to_string()));
        paths.extend(
            [r"C:\ProgramData\containerd", r"C:\var\lib\kubelet", r"C:\opt\cni", r"C:\etc\cni"].map(String::from),
        );
    }
    for (i, p) in d.exclude_processes.iter().enumerate() {
        match windows_path(p) {
            Ok(p) => processes.push(p),
            Err(reason) => e.push(format!("spec.windows.defender.excludeProcesses[{i}]"), reason),
        }
    }
    for (i, p) in d.exclude_paths.iter().enumerate() {
        match windows_path(p) {
            Ok(p) => paths.push(p),
            Err(reason) => e.push(format!("spec.windows.defender.excludePaths[{i}]"), reason),
        }
    }
    (processes, paths)
}

fn commands(e: &mut Errors, commands: &[String], base: &str) {
    for (i, c) in commands.iter().enumerate() {
        if c.trim().is_empty() {
            e.push(format!("{base}[{i}]"), "must not be empty");
        }
        if c.contains('\0') {
            e.push(format!("{base}[{i}]"), "must not contain NUL characters");
        }
    }
}
