//! Read-only views of the CAPI core objects the reconciler reads (v1beta2), over `DynamicObject`.

use kube::api::DynamicObject;
use serde_json::Value;

pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";
pub const CONTROL_PLANE_LABEL: &str = "cluster.x-k8s.io/control-plane";
pub const WATCH_FILTER_LABEL: &str = "cluster.x-k8s.io/watch-filter";

pub use capwin_api::common::capi_resource;

/// A CAPI `Machine`.
pub struct Machine<'a>(pub &'a DynamicObject);

impl Machine<'_> {
    pub fn cluster_name(&self) -> Option<&str> {
        self.0.data["spec"]["clusterName"].as_str().filter(|s| !s.is_empty())
    }
    pub fn version(&self) -> Option<&str> {
        self.0.data["spec"]["version"].as_str().filter(|s| !s.is_empty())
    }
    pub fn is_control_plane(&self) -> bool {
        self.0.metadata.labels.as_ref().is_some_and(|l| l.contains_key(CONTROL_PLANE_LABEL))
    }
    pub fn infrastructure_kind(&self) -> Option<&str> {
        self.0.data["spec"]["infrastructureRef"]["kind"].as_str()
    }
    pub fn has_node(&self) -> bool {
        self.0.data["status"]["nodeRef"]["name"].as_str().is_some_and(|n| !n.is_empty())
    }
    /// The VM exists with the payload it was given: re-rendering no longer reaches it.
    pub fn infrastructure_provisioned(&self) -> bool {
        self.0.data["status"]["initialization"]["infrastructureProvisioned"] == true
            || self.0.data["spec"]["providerID"].as_str().is_some_and(|p| !p.is_empty())
    }
    pub fn data_secret_name(&self) -> Option<&str> {
        self.0.data["spec"]["bootstrap"]["dataSecretName"].as_str().filter(|s| !s.is_empty())
    }
}

/// A CAPI `Cluster`.
pub struct Cluster<'a>(pub &'a DynamicObject);

impl Cluster<'_> {
    pub fn paused(&self) -> bool {
        self.0.data["spec"]["paused"] == true
    }
    pub fn infrastructure_provisioned(&self) -> bool {
        self.0.data["status"]["initialization"]["infrastructureProvisioned"] == true
    }
    pub fn control_plane_initialized(&self) -> bool {
        self.0.data["status"]["initialization"]["controlPlaneInitialized"] == true
            || condition_true(&self.0.data["status"]["conditions"], "ControlPlaneInitialized")
    }
    /// `host:port` (IPv6 hosts bracketed).
    pub fn endpoint(&self) -> Option<String> {
        let ep = &self.0.data["spec"]["controlPlaneEndpoint"];
        let host = ep["host"].as_str().filter(|h| !h.is_empty())?;
        let port = ep["port"].as_u64().filter(|p| *p > 0)?;
        Some(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
    }
    pub fn pod_cidrs(&self) -> Vec<String> {
        strings(&self.0.data["spec"]["clusterNetwork"]["pods"]["cidrBlocks"])
    }
    pub fn service_cidrs(&self) -> Vec<String> {
        strings(&self.0.data["spec"]["clusterNetwork"]["services"]["cidrBlocks"])
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn condition_true(conditions: &Value, type_: &str) -> bool {
    conditions.as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == "True"))
}
