//! `bootstrap.json`: every value the script needs, as data.

use capwin_api::bootstrap::{ContainerdSource, KubeBinary};
use serde::Serialize;

use crate::validate::Checked;
use crate::{RenderInput, json, kubeadm, node};

/// The parameters file. Every key is always present: the script runs under
/// `Set-StrictMode`, where reading a missing property is an error. Every decision the script
/// acts on is made here (see [`crate::node`]); the script only performs.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Params<'a> {
    capwin_version: &'static str,
    cloud: &'static str,
    kubernetes_version: &'a str,
    windows: Windows,
    node_name: node::NodeNamePlan,
    /// Which instance metadata the provider ID comes from (`azure`, `aws`), or null: not set.
    provider_id: Option<&'static str>,
    /// The COM port for progress records, or null: off.
    serial_port: Option<&'a str>,
    verbosity: u8,
    join_attempts: u32,
    api_server: ApiServer<'a>,
    cni: Cni,
    firewall_rules: Vec<node::FirewallRule>,
    external_network: Option<&'a node::ExternalNetwork>,
    metadata_routes: Option<node::MetadataRoutes>,
    dynamic_port_range: node::DynamicPortRange,
    containerd: Containerd<'a>,
    service_recovery: node::ServiceRecovery,
    domain_join: Option<node::DomainJoinPlan>,
    gmsa: node::GmsaPlan,
    binaries: Vec<Binary<'a>>,
    kubelet_flags: Vec<String>,
    private_files: Vec<&'a str>,
    admin_authorized_keys: &'a [String],
    defender: Defender<'a>,
    pre_kubeadm_commands: &'a [String],
    post_kubeadm_commands: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Windows {
    version: &'static str,
    /// `CurrentBuildNumber` values the `host` step accepts.
    accepted_builds: Vec<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiServer<'a> {
    endpoint: &'a str,
    host: String,
    port: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cni {
    flavour: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Containerd<'a> {
    download: Option<Download<'a>>,
    drop_ins: Vec<&'a str>,
    proxy_environment: &'a [String],
    hyper_v: Option<node::HyperVRuntime>,
}

#[derive(Serialize)]
struct Download<'a> {
    version: &'a str,
    url: &'a str,
    sha256: &'a str,
}

#[derive(Serialize)]
struct Binary<'a> {
    name: &'static str,
    url: &'a str,
    sha256: &'a str,
}

#[derive(Serialize)]
struct Defender<'a> {
    processes: &'a [String],
    paths: &'a [String],
}

/// kubeadm join attempts on the node; with the back-off between them they fit well inside the
/// controller's token TTL, which it keeps extending until the Node exists.
pub const JOIN_ATTEMPTS: u32 = 5;

/// `host:port` (IPv6 in brackets) split for the reachability check; the endpoint is validated.
fn split_endpoint(endpoint: &str) -> (String, u16) {
    let (host, port) = endpoint.rsplit_once(':').unwrap_or((endpoint, "6443"));
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (host.to_string(), port.parse().unwrap_or(6443))
}

/// The parameters file content (ASCII JSON).
pub fn parameters(input: &RenderInput<'_>, c: &Checked) -> String {
    let w = &input.spec.windows;
    let (host, port) = split_endpoint(&c.api_server_endpoint);
    let params = Params {
        capwin_version: env!("CARGO_PKG_VERSION"),
        cloud: input.cloud.as_str(),
        kubernetes_version: &input.cluster.kubernetes_version,
        windows: Windows { version: w.version.year(), accepted_builds: node::accepted_builds(w.version) },
        node_name: node::node_name(input.cloud, input.spec),
        provider_id: c.set_provider_id.then_some(input.cloud.as_str()),
        serial_port: c.serial_port.as_deref(),
        verbosity: c.verbosity,
        join_attempts: JOIN_ATTEMPTS,
        api_server: ApiServer { endpoint: &c.api_server_endpoint, host, port },
        cni: Cni { flavour: w.cni.flavour.as_str() },
        firewall_rules: node::firewall_rules(w.cni.flavour),
        external_network: c.external_network.as_ref(),
        metadata_routes: node::metadata_route_plan(input.cloud, w.cni.flavour),
        dynamic_port_range: node::DYNAMIC_PORT_RANGE,
        containerd: Containerd {
            download: match (&w.containerd.source, &w.containerd.download) {
                (ContainerdSource::Download, Some(d)) => {
                    Some(Download { version: &d.version, url: &d.url, sha256: &d.sha256 })
                }
                _ => None,
            },
            drop_ins: w.containerd.config_drop_ins.iter().map(|d| d.name.as_str()).collect(),
            proxy_environment: &c.proxy_environment,
            hyper_v: node::hyperv_runtime(input.spec),
        },
        service_recovery: node::SERVICE_RECOVERY,
        domain_join: node::domain_join(input.spec),
        gmsa: node::gmsa(input.spec),
        binaries: w
            .binaries
            .iter()
            .map(|b| Binary {
                name: match b.name {
                    KubeBinary::Kubelet => "kubelet",
                    KubeBinary::Kubeadm => "kubeadm",
                    KubeBinary::Kubectl => "kubectl",
                },
                url: &b.url,
                sha256: &b.sha256,
            })
            .collect(),
        kubelet_flags: kubeadm::kubelet_flags(c),
        private_files: c.files.iter().filter(|f| f.private).map(|f| f.path.as_str()).collect(),
        admin_authorized_keys: &c.admin_authorized_keys,
        defender: Defender { processes: &c.defender_processes, paths: &c.defender_paths },
        pre_kubeadm_commands: &input.spec.pre_kubeadm_commands,
        post_kubeadm_commands: &input.spec.post_kubeadm_commands,
    };
    json::to_ascii_json(&params)
}
