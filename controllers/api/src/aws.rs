//! `AWSWindowsMachine` and `AWSWindowsMachineTemplate` (`infrastructure.cluster.x-k8s.io/v1alpha1`).
//!
//! Subnets and security groups default to the cluster's CAPA `AWSCluster`. There is deliberately
//! no `spec.failureDomain` (CAPI would overwrite `Machine.spec.failureDomain` with it): the
//! availability zone comes from `Machine.spec.failureDomain`.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{InfraMachineStatus, InfraMachineTemplateStatus, TemplateObjectMeta};

/// Desired state of one EC2 Windows instance. Its AWS credentials are, as for CAPA's
/// `AWSMachine`, those of the identity its cluster's `AWSCluster` names in `spec.identityRef`
/// (`AWSClusterControllerIdentity`, `AWSClusterRoleIdentity` or `AWSClusterStaticIdentity`);
/// a machine cannot name its own.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "AWSWindowsMachine",
    plural = "awswindowsmachines",
    namespaced,
    status = "InfraMachineStatus",
    category = "cluster-api",
    shortname = "awswm",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    // `clusterctl move` discovers the kinds of CRDs with this label (clusterctl init adds it;
    // kustomize, Tilt or Helm installs get it from here).
    label("clusterctl.cluster.x-k8s.io", ""),
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.instanceState"}"#,
    printcolumn = r#"{"name":"Instance","type":"string","jsonPath":".spec.instanceID"}"#,
    printcolumn = r#"{"name":"Type","type":"string","priority":1,"jsonPath":".spec.instanceType"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AWSWindowsMachineSpec {
    /// Set by the controller: `aws:///<availability-zone>/<instance-id>`.
    #[serde(default, rename = "providerID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub provider_id: Option<String>,
    /// Set by the controller once the instance exists, so `clusterctl move` keeps it.
    #[serde(default, rename = "instanceID", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^i-[0-9a-f]{8,17}$"))]
    pub instance_id: Option<String>,
    /// EC2 instance type, e.g. `m6i.xlarge`.
    #[schemars(length(min = 2, max = 64), regex(pattern = r"^[a-z0-9-]+\.[a-z0-9-]+$"))]
    pub instance_type: String,
    /// The AMI: an explicit ID or a look-up.
    #[serde(default)]
    pub ami: AwsAmi,
    /// Subnet. Default: the `AWSCluster`'s private subnet in the Machine's failure domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<AwsResourceRef>,
    /// Security groups. Default: the `AWSCluster`'s node security group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub security_groups: Vec<AwsResourceRef>,
    /// IAM instance profile name (e.g. `nodes.cluster-api-provider-aws.sigs.k8s.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub iam_instance_profile: Option<String>,
    #[serde(default)]
    pub root_volume: AwsRootVolume,
    /// EC2 key pair name (for `GetPasswordData` / RDP); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub ssh_key_name: Option<String>,
    #[serde(default)]
    pub instance_metadata_options: InstanceMetadataOptions,
    /// Extra tags on the instance and its volumes (capwin's ownership tags are always added).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub additional_tags: BTreeMap<String, String>,
}

/// An AMI by ID or by look-up; at most one is set. Without either, capwin looks up the newest
/// Windows AMI of its own account (owner `self`) named
/// `capa-ami-windows-<version>-?<kubernetes without v>-*`: what image-builder's
/// `make build-ami-windows-2019` makes in your account. No public Windows AMIs exist.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.id) && has(self.lookup))").message("set either id or lookup, not both"))]
pub struct AwsAmi {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^ami-[0-9a-f]{8,17}$"))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<AmiLookup>,
}

/// Find the newest AMI whose name matches a pattern.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AmiLookup {
    /// AWS account owning the images.
    #[schemars(length(min = 1, max = 64))]
    pub owner: String,
    /// Name pattern with `*`/`?` wildcards; `{{.WindowsVersion}}` (2019, 2022, 2025) and
    /// `{{.K8sVersion}}` (e.g. `1.34.1`) are substituted.
    #[schemars(length(min = 1, max = 256))]
    pub name_pattern: String,
}

/// A resource by ID or by filters. Exactly one is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.filters)").message("exactly one of id and filters must be set"))]
pub struct AwsResourceRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub filters: Option<Vec<AwsFilter>>,
}

/// An EC2 `Describe*` filter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsFilter {
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    #[schemars(length(min = 1, max = 32))]
    pub values: Vec<String>,
}

/// The root EBS volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsRootVolume {
    /// Size in GiB (default 128; Windows AMIs need at least 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 16384))]
    pub size: Option<u32>,
    /// Volume type (default `gp3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<AwsVolumeType>,
    /// Encrypt the volume (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// KMS key for encryption (default: the account's EBS key).
    #[serde(default, rename = "kmsKeyID", skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// EBS volume types suitable for a root volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AwsVolumeType {
    Gp2,
    Gp3,
    Io1,
    Io2,
}

/// Instance metadata service options.
///
/// At launch the default is `httpTokens: optional`: cloudbase-init's EC2 metadata service (1.1.x)
/// cannot fetch IMDSv2 tokens, so with `required` it never sees the user data and the node never
/// joins. IMDSv1 answers unauthenticated GETs, and the hop limit does not protect it (the limit
/// only applies to IMDSv2's token PUT), so a pod could read the instance role's credentials.
/// Therefore, once the Machine's Node has joined, capwin switches the instance to
/// `httpTokens: required` (`ModifyInstanceMetadataOptions`), reports it in the
/// `InstanceMetadataLockedDown` condition, and does it again whenever it finds it reverted. The
/// window with IMDSv1 is the first boot. Later boots are safe: cloudbase-init then finds no
/// metadata service, logs it and runs no plugin, and the kubelet does not use IMDS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMetadataOptions {
    /// At launch. `required` only with an image whose first-boot agent speaks IMDSv2.
    #[serde(default)]
    pub http_tokens: HttpTokens,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub http_put_response_hop_limit: Option<u8>,
    /// Switch to `httpTokens: required` once the Node has joined. Default true; set false only
    /// for images whose agents need IMDSv1 after the first boot (then pods on the node can read
    /// the instance role's credentials unless a network policy blocks them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_down_after_join: Option<bool>,
}

/// IMDS token mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    #[default]
    Optional,
    Required,
}

/// A template MachineDeployments clone into one `AWSWindowsMachine` per Machine.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "AWSWindowsMachineTemplate",
    plural = "awswindowsmachinetemplates",
    namespaced,
    status = "InfraMachineTemplateStatus",
    category = "cluster-api",
    shortname = "awswmt",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    // `clusterctl move` discovers the kinds of CRDs with this label (clusterctl init adds it;
    // kustomize, Tilt or Helm installs get it from here).
    label("clusterctl.cluster.x-k8s.io", ""),
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.template.spec.instanceType"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AWSWindowsMachineTemplateSpec {
    pub template: AWSWindowsMachineTemplateResource,
}

/// The object an AWS template stamps out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AWSWindowsMachineTemplateResource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateObjectMeta>,
    pub spec: AWSWindowsMachineSpec,
}
