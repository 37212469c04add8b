//! `bootstrap.json`: every value the script needs, as data.

use capwin_api::bootstrap::{ContainerdSource, KubeBinary};
use serde::Serialize;

use crate::validate::Checked;
use crate::{RenderInput, json, kubeadm};

/// The parameters file. Every key is always present: the script runs under
/// `Set-StrictMode`, where reading a missing property is an error.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Params<'a> {
    capwin_version: &'static str,
    cloud: &'static str,
    kubernetes_version: &'a str,
    windows_version: &'static str,
    windows_build: u32,
    node_name: Option<&'a str>,
    #[serde(rename = "setProviderID")]
    set_provider_id: bool,
    serial_port: &'a str,
    verbosity: u8,
    join_attempts: u32,
    api_server_endpoint: &'a str,
    cni: Cni,
    containerd: Containerd<'a>,
    hyper_v: bool,
    gmsa: Gmsa<'a>,
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
struct Cni {
    flavour: &'static str,
    vxlan_port: u16,
    vni: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Containerd<'a> {
    download: Option<Download<'a>>,
    drop_ins: Vec<&'a str>,
    proxy_environment: &'a [String],
}

#[derive(Serialize)]
struct Download<'a> {
    version: &'a str,
    url: &'a str,
    sha256: &'a str,
}

#[derive(Serialize)]
struct Gmsa<'a> {
    enabled: bool,
    plugin: Option<Plugin<'a>>,
}

#[derive(Serialize)]
struct Plugin<'a> {
    url: &'a str,
    sha256: &'a str,
    clsid: &'a str,
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

/// The parameters file content (ASCII JSON).
pub fn parameters(input: &RenderInput<'_>, c: &Checked) -> String {
    let w = &input.spec.windows;
    let vxlan = w.cni.vxlan.clone().unwrap_or_default();
    let params = Params {
        capwin_version: env!("CARGO_PKG_VERSION"),
        cloud: input.cloud.as_str(),
        kubernetes_version: &input.cluster.kubernetes_version,
        windows_version: w.version.year(),
        windows_build: w.version.build(),
        node_name: c.node_name.as_deref(),
        set_provider_id: c.set_provider_id,
        serial_port: &c.serial_port,
        verbosity: c.verbosity,
        join_attempts: JOIN_ATTEMPTS,
        api_server_endpoint: &c.api_server_endpoint,
        cni: Cni { flavour: w.cni.flavour.as_str(), vxlan_port: vxlan.port, vni: vxlan.vni },
        containerd: Containerd {
            download: match (&w.containerd.source, &w.containerd.download) {
                (ContainerdSource::Download, Some(d)) => {
                    Some(Download { version: &d.version, url: &d.url, sha256: &d.sha256 })
                }
                _ => None,
            },
            drop_ins: w.containerd.config_drop_ins.iter().map(|d| d.name.as_str()).collect(),
            proxy_environment: &c.proxy_environment,
        },
        hyper_v: w.hyper_v.enabled,
        gmsa: Gmsa {
            enabled: w.gmsa.enabled,
            plugin: w.gmsa.ccg_plugin.as_ref().map(|p| Plugin { url: &p.url, sha256: &p.sha256, clsid: &p.clsid }),
        },
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
