//! Types shared by several kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Kubernetes `metav1.Condition`, the shape CAPI v1beta2 reads from `status.conditions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of condition in CamelCase, e.g. `Ready`, `Paused`, `DataSecretAvailable`.
    #[schemars(length(min = 1, max = 316))]
    pub r#type: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Last time the condition moved from one status to another (RFC 3339).
    pub last_transition_time: String,
    /// CamelCase reason for the last transition; it names the problem when status is False.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// Human-readable detail. Never contains tokens, passwords or keys.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 32768))]
    pub message: String,
    /// `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Status of a [`Condition`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

/// A reference to a key of a Secret in the same namespace as the referring object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the referring object's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's `data`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A machine address, as CAPI copies it to `Machine.status.addresses`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineAddress {
    pub r#type: MachineAddressType,
    #[schemars(length(min = 1, max = 256))]
    pub address: String,
}

/// Address types CAPI accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MachineAddressType {
    Hostname,
    ExternalIP,
    InternalIP,
    ExternalDNS,
    InternalDNS,
}

/// `status.initialization` of an infrastructure machine (CAPI v1beta2 contract).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InfraMachineInitialization {
    /// True once the VM exists and `spec.providerID` is set. Never flips back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<bool>,
}

/// Status of an infrastructure machine kind (Azure or AWS).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InfraMachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<InfraMachineInitialization>,
    /// Addresses of the VM, copied by CAPI to the Machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub addresses: Vec<MachineAddress>,
    /// The failure domain (zone) the VM actually runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub failure_domain: Option<String>,
    /// Cloud-side state of the VM as last observed (e.g. `running`, `Succeeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_state: Option<String>,
    /// `Ready` (mirrored by CAPI to the Machine's `InfrastructureReady`), `Paused`, and
    /// `BootstrapFailed` when the node's serial log reports a failed join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub conditions: Vec<Condition>,
}

/// Node information on an infrastructure machine template, for autoscaling from zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Always `windows` for capwin templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_system: Option<String>,
    /// `amd64` or `arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// Status of an infrastructure machine template: what the cluster autoscaler reads to scale a
/// MachineDeployment of Windows workers from zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InfraMachineTemplateStatus {
    /// Resources of one machine made from this template (`cpu`, `memory`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub capacity: std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_info: Option<NodeInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub conditions: Vec<Condition>,
}

/// `spec.template.metadata` of a template kind: labels and annotations copied to each clone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateObjectMeta {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Sets (or replaces) a condition of `type_`, keeping `lastTransitionTime` when the status is
/// unchanged; conditions stay sorted by type.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) {
    let status = if status { ConditionStatus::True } else { ConditionStatus::False };
    let previous = conditions.iter().find(|c| c.r#type == type_).cloned();
    let last_transition_time = match &previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now.to_string(),
    };
    conditions.retain(|c| c.r#type != type_);
    conditions.push(Condition {
        r#type: type_.into(),
        status,
        last_transition_time,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
    });
    conditions.sort_by(|a, b| a.r#type.cmp(&b.r#type));
}

/// The reason of the condition of `type_`, if any.
pub fn condition_reason<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions.iter().find(|c| c.r#type == type_).map(|c| c.reason.as_str())
}

/// The `ApiResource` of a CAPI core kind at the version capwin reads (`cluster.x-k8s.io/v1beta2`).
pub fn capi_resource(kind: &str) -> kube::core::ApiResource {
    kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", kind),
        &format!("{}s", kind.to_lowercase()),
    )
}

/// Now as RFC 3339 UTC with whole seconds (condition timestamps).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    i64::try_from(secs)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}
