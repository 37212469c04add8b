//! The kubeadm `JoinConfiguration` (`kubeadm.k8s.io/v1beta4`, Kubernetes 1.31+).

use serde::Serialize;

use crate::RenderInput;
use crate::validate::{Checked, NODE_NAME, taint_flag};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    discovery: Discovery,
    node_registration: NodeRegistration<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery {
    bootstrap_token: BootstrapToken,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapToken {
    api_server_endpoint: String,
    token: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ca_cert_hashes: Vec<String>,
    #[serde(rename = "unsafeSkipCAVerification", skip_serializing_if = "std::ops::Not::not")]
    unsafe_skip_ca_verification: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration<'a> {
    name: &'a str,
    cri_socket: &'static str,
    kubelet_extra_args: Vec<Arg<'a>>,
    taints: Vec<Taint<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ignore_preflight_errors: &'a [String],
}

#[derive(Serialize)]
struct Arg<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct Taint<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    effect: &'static str,
}

/// The containerd named pipe kubeadm and kubelet talk to.
pub const CRI_SOCKET: &str = "npipe:////./pipe/containerd-containerd";

/// The join configuration, with the node-side placeholders left in.
///
/// Written as JSON (which every YAML parser reads): kubeadm decodes with a YAML 1.1 parser that
/// turns an unquoted `yes`, `on` or `1:20` into a boolean or a number, and YAML 1.2 emitters
/// leave those unquoted. JSON quotes every string.
pub fn join_configuration(input: &RenderInput<'_>, c: &Checked) -> String {
    let doc = JoinConfiguration {
        api_version: "kubeadm.k8s.io/v1beta4",
        kind: "JoinConfiguration",
        discovery: Discovery {
            bootstrap_token: BootstrapToken {
                api_server_endpoint: c.api_server_endpoint.clone(),
                token: input.token.expose(),
                ca_cert_hashes: c.ca_cert_hashes.clone(),
                unsafe_skip_ca_verification: c.unsafe_skip_ca_verification,
            },
        },
        node_registration: NodeRegistration {
            name: c.node_name.as_deref().unwrap_or(NODE_NAME),
            cri_socket: CRI_SOCKET,
            kubelet_extra_args: c.kubelet_args.iter().map(|(n, v)| Arg { name: n, value: v }).collect(),
            taints: c
                .taints
                .iter()
                .map(|t| Taint { key: &t.key, value: t.value.as_deref(), effect: effect(t) })
                .collect(),
            ignore_preflight_errors: &input.spec.join_configuration.node_registration.ignore_preflight_errors,
        },
    };
    serde_json::to_string_pretty(&doc).expect("the join configuration always serialises") + "\n"
}

fn effect(t: &capwin_api::bootstrap::Taint) -> &'static str {
    match t.effect {
        capwin_api::bootstrap::TaintEffect::NoSchedule => "NoSchedule",
        capwin_api::bootstrap::TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        capwin_api::bootstrap::TaintEffect::NoExecute => "NoExecute",
    }
}

/// The flags kubeadm writes to `kubeadm-flags.env` for this join, in its `--name=value` form.
/// On images whose kubelet is a native Windows service (it never reads that file) the bootstrap
/// puts them on the service command line before the join.
pub fn kubelet_flags(c: &Checked) -> Vec<String> {
    let mut flags: Vec<String> = c.kubelet_args.iter().map(|(n, v)| format!("--{n}={v}")).collect();
    flags.push(format!("--hostname-override={}", c.node_name.as_deref().unwrap_or(NODE_NAME)));
    if !c.taints.is_empty() {
        flags.push(format!("--register-with-taints={}", c.taints.iter().map(taint_flag).collect::<Vec<_>>().join(",")));
    }
    flags
}
