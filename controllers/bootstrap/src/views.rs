//! Typed, partial views of the CAPI core objects the reconciler reads (v1beta2): only the fields
//! it decides on, taken once from the cached `DynamicObject`, so no decision reads
//! `data["spec"]` by hand and [`crate::plan`] can be tested without objects.

use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde_json::Value;

pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";
pub const CONTROL_PLANE_LABEL: &str = "cluster.x-k8s.io/control-plane";
pub const WATCH_FILTER_LABEL: &str = "cluster.x-k8s.io/watch-filter";

pub use capwin_api::common::capi_resource;

/// What the reconciler reads from the owning `Machine`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineView {
    pub name: String,
    /// `spec.clusterName`.
    pub cluster_name: Option<String>,
    /// `spec.version` (the Kubernetes version).
    pub version: Option<String>,
    /// Labelled `cluster.x-k8s.io/control-plane`.
    pub control_plane: bool,
    /// `spec.infrastructureRef.kind`.
    pub infrastructure_kind: Option<String>,
    /// `status.nodeRef.name` is set: the Node has joined.
    pub joined: bool,
    /// The VM exists with the payload it was given: re-rendering no longer reaches it
    /// (`status.initialization.infrastructureProvisioned` or `spec.providerID`).
    pub provisioned: bool,
}

impl MachineView {
    pub fn of(m: &DynamicObject) -> Self {
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
        Self {
            name: m.name_any(),
            cluster_name: text(&m.data["spec"]["clusterName"]),
            version: text(&m.data["spec"]["version"]),
            control_plane: m.meta().labels.as_ref().is_some_and(|l| l.contains_key(CONTROL_PLANE_LABEL)),
            infrastructure_kind: m.data["spec"]["infrastructureRef"]["kind"].as_str().map(String::from),
            joined: text(&m.data["status"]["nodeRef"]["name"]).is_some(),
            provisioned: m.data["status"]["initialization"]["infrastructureProvisioned"] == true
                || text(&m.data["spec"]["providerID"]).is_some(),
        }
    }
}

/// What the reconciler reads from the `Cluster`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub name: String,
    /// `spec.paused`.
    pub paused: bool,
    /// `status.initialization.infrastructureProvisioned`.
    pub infrastructure_provisioned: bool,
    /// `status.initialization.controlPlaneInitialized` or the `ControlPlaneInitialized`
    /// condition.
    pub control_plane_initialized: bool,
    /// `spec.controlPlaneEndpoint` as `host:port` (IPv6 hosts bracketed).
    pub endpoint: Option<String>,
    /// `spec.clusterNetwork.pods.cidrBlocks`.
    pub pod_cidrs: Vec<String>,
    /// `spec.clusterNetwork.services.cidrBlocks`.
    pub service_cidrs: Vec<String>,
}

impl ClusterView {
    pub fn of(c: &DynamicObject) -> Self {
        let (spec, status) = (&c.data["spec"], &c.data["status"]);
        Self {
            name: c.name_any(),
            paused: spec["paused"] == true,
            infrastructure_provisioned: status["initialization"]["infrastructureProvisioned"] == true,
            control_plane_initialized: status["initialization"]["controlPlaneInitialized"] == true
                || condition_true(&status["conditions"], "ControlPlaneInitialized"),
            endpoint: endpoint(&spec["controlPlaneEndpoint"]),
            pod_cidrs: strings(&spec["clusterNetwork"]["pods"]["cidrBlocks"]),
            service_cidrs: strings(&spec["clusterNetwork"]["services"]["cidrBlocks"]),
        }
    }
}

fn endpoint(ep: &Value) -> Option<String> {
    let host = ep["host"].as_str().filter(|h| !h.is_empty())?;
    let port = ep["port"].as_u64().filter(|p| *p > 0)?;
    Some(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn condition_true(conditions: &Value, type_: &str) -> bool {
    conditions.as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_machine_is_read_field_by_field() {
        let m = obj(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "w-0", "labels": {"cluster.x-k8s.io/control-plane": ""}},
            "spec": {"clusterName": "c", "version": "v1.34.1", "providerID": "",
                "infrastructureRef": {"kind": "AWSWindowsMachine", "name": "w-0"}},
            "status": {"nodeRef": {"name": "ip-10-0-0-7"}, "initialization": {"infrastructureProvisioned": true}}}));
        let v = MachineView::of(&m);
        assert_eq!((v.cluster_name.as_deref(), v.version.as_deref()), (Some("c"), Some("v1.34.1")));
        assert_eq!(v.infrastructure_kind.as_deref(), Some("AWSWindowsMachine"));
        assert!(v.control_plane && v.joined && v.provisioned);
        let bare = MachineView::of(&obj(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "w-1"}, "spec": {"clusterName": "", "providerID": "aws:///i-1"}})));
        assert_eq!(bare.cluster_name, None, "an empty clusterName is none");
        assert!(bare.provisioned && !bare.joined, "a providerID alone means the VM has its payload");
    }

    #[test]
    fn a_cluster_is_read_field_by_field() {
        let c = obj(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": "c"},
            "spec": {"paused": true, "controlPlaneEndpoint": {"host": "fd00::1", "port": 6443},
                "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}}},
            "status": {"conditions": [{"type": "ControlPlaneInitialized", "status": "True"}]}}));
        let v = ClusterView::of(&c);
        assert!(v.paused && v.control_plane_initialized && !v.infrastructure_provisioned);
        assert_eq!(v.endpoint.as_deref(), Some("[fd00::1]:6443"));
        assert_eq!((v.pod_cidrs.len(), v.service_cidrs.len()), (1, 0));
        let no_port =
            obj(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": "c"},
            "spec": {"controlPlaneEndpoint": {"host": "10.0.0.4", "port": 0}}}));
        assert_eq!(ClusterView::of(&no_port).endpoint, None);
    }
}
