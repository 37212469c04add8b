//! Typed, partial views of the CAPI v1beta2 objects a machine controller reads: only the fields
//! it uses, taken once from the cached object, so no decision reads `data["spec"]` by hand.
//! Fields follow `cluster.x-k8s.io/v1beta2` `Machine` and `Cluster` (CAPI v1.11+).

use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::Value;

/// A reference by kind and name within the object's namespace (`infrastructureRef`,
/// `bootstrap.configRef`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalRef {
    pub kind: String,
    pub name: String,
}

impl LocalRef {
    fn of(v: &Value) -> Option<Self> {
        let kind = v["kind"].as_str().filter(|k| !k.is_empty())?;
        Some(Self { kind: kind.into(), name: v["name"].as_str().unwrap_or_default().into() })
    }
}

/// What the machine controllers read from a `Machine`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineView {
    pub name: String,
    pub namespace: String,
    /// `spec.clusterName`.
    pub cluster_name: String,
    /// `spec.version` (the Kubernetes version), empty when unset.
    pub version: String,
    /// `spec.failureDomain`.
    pub failure_domain: Option<String>,
    /// `spec.bootstrap.dataSecretName`: set by CAPI once the bootstrap provider has written it.
    pub data_secret_name: Option<String>,
    /// `spec.bootstrap.configRef`.
    pub config_ref: Option<LocalRef>,
    /// `spec.infrastructureRef`.
    pub infrastructure_ref: Option<LocalRef>,
    /// `status.nodeRef.name`: the Node exists.
    pub node_name: Option<String>,
    /// `cluster.x-k8s.io/paused` annotation.
    pub paused_annotation: bool,
}

impl MachineView {
    pub fn of(m: &DynamicObject) -> Self {
        let spec = &m.data["spec"];
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
        Self {
            name: m.name_any(),
            namespace: m.namespace().unwrap_or_default(),
            cluster_name: text(&spec["clusterName"]).unwrap_or_default(),
            version: text(&spec["version"]).unwrap_or_default(),
            failure_domain: text(&spec["failureDomain"]),
            data_secret_name: text(&spec["bootstrap"]["dataSecretName"]),
            config_ref: LocalRef::of(&spec["bootstrap"]["configRef"]),
            infrastructure_ref: LocalRef::of(&spec["infrastructureRef"]),
            node_name: text(&m.data["status"]["nodeRef"]["name"]),
            paused_annotation: m.annotations().contains_key("cluster.x-k8s.io/paused"),
        }
    }

    /// Whether the Machine's Node exists (CAPI has set `status.nodeRef`).
    pub fn joined(&self) -> bool {
        self.node_name.is_some()
    }
}

/// What the machine controllers read from a `Cluster`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub name: String,
    /// `spec.paused`.
    pub paused: bool,
    /// `status.initialization.infrastructureProvisioned` (v1beta2): the network a machine goes
    /// into exists only then.
    pub infrastructure_provisioned: bool,
    /// `spec.infrastructureRef` (CAPZ's `AzureCluster`, CAPA's `AWSCluster`, ...).
    pub infrastructure_ref: Option<LocalRef>,
}

impl ClusterView {
    pub fn of(c: &DynamicObject) -> Self {
        Self {
            name: c.name_any(),
            paused: c.data["spec"]["paused"] == true,
            infrastructure_provisioned: c.data["status"]["initialization"]["infrastructureProvisioned"] == true,
            infrastructure_ref: LocalRef::of(&c.data["spec"]["infrastructureRef"]),
        }
    }

    /// The name of the infrastructure cluster object when it is of `kind`.
    pub fn infrastructure_named(&self, kind: &str) -> Option<&str> {
        self.infrastructure_ref.as_ref().filter(|r| r.kind == kind).map(|r| r.name.as_str())
    }
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
            "metadata": {"name": "w-0", "namespace": "ns", "annotations": {"cluster.x-k8s.io/paused": ""}},
            "spec": {"clusterName": "c", "version": "v1.34.1", "failureDomain": "1",
                "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "WindowsKubeadmConfig", "name": "w-0"},
                    "dataSecretName": "w-0"},
                "infrastructureRef": {"kind": "AWSWindowsMachine", "name": "w-0"}},
            "status": {"nodeRef": {"name": "ip-10-0-0-7"}}}));
        let v = MachineView::of(&m);
        assert_eq!((v.cluster_name.as_str(), v.version.as_str()), ("c", "v1.34.1"));
        assert_eq!(v.failure_domain.as_deref(), Some("1"));
        assert_eq!(v.data_secret_name.as_deref(), Some("w-0"));
        assert_eq!(v.config_ref.as_ref().unwrap().kind, "WindowsKubeadmConfig");
        assert_eq!(v.infrastructure_ref.as_ref().unwrap().name, "w-0");
        assert!(v.joined() && v.paused_annotation);

        let bare = MachineView::of(&obj(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "w-1", "namespace": "ns"},
            "spec": {"clusterName": "c", "bootstrap": {"dataSecretName": ""}, "failureDomain": ""},
            "status": {"nodeRef": {}}})));
        assert_eq!(bare.data_secret_name, None, "an empty name is no name");
        assert_eq!(bare.failure_domain, None);
        assert!(!bare.joined() && !bare.paused_annotation && bare.config_ref.is_none());
    }

    #[test]
    fn a_cluster_is_read_field_by_field() {
        let c = ClusterView::of(&obj(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": {"paused": true, "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "AWSCluster", "name": "c-x"}},
            "status": {"initialization": {"infrastructureProvisioned": true}}})));
        assert!(c.paused && c.infrastructure_provisioned);
        assert_eq!(c.infrastructure_named("AWSCluster"), Some("c-x"));
        assert_eq!(c.infrastructure_named("AzureCluster"), None);
        let v1beta1_style = ClusterView::of(&obj(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
            "metadata": {"name": "c", "namespace": "ns"}, "spec": {"paused": "true"},
            "status": {"infrastructureReady": true}})));
        assert!(!v1beta1_style.paused && !v1beta1_style.infrastructure_provisioned, "only v1beta2 booleans count");
    }
}
