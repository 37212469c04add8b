//! `AzureWindowsMachine` and `AzureWindowsMachineTemplate` (`infrastructure.cluster.x-k8s.io/v1alpha1`).
//!
//! The cluster network, resource group and location come from the cluster's CAPZ `AzureCluster`;
//! this spec holds only what differs per Windows machine. There is deliberately no
//! `spec.failureDomain`: CAPI would treat it as the deprecated placement field and overwrite
//! `Machine.spec.failureDomain` with it. The zone comes from `Machine.spec.failureDomain`.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{InfraMachineStatus, InfraMachineTemplateStatus, TemplateObjectMeta};

/// Desired state of one Azure Windows VM.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "AzureWindowsMachine",
    plural = "azurewindowsmachines",
    namespaced,
    status = "InfraMachineStatus",
    category = "cluster-api",
    shortname = "awinm",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    // `clusterctl move` discovers the kinds of CRDs with this label (clusterctl init adds it;
    // kustomize, Tilt or Helm installs get it from here).
    label("clusterctl.cluster.x-k8s.io", ""),
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.instanceState"}"#,
    printcolumn = r#"{"name":"Size","type":"string","priority":1,"jsonPath":".spec.vmSize"}"#,
    printcolumn = r#"{"name":"ProviderID","type":"string","priority":1,"jsonPath":".spec.providerID"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AzureWindowsMachineSpec {
    /// Set by the controller: `azure:///subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<name>`.
    #[serde(default, rename = "providerID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub provider_id: Option<String>,
    /// VM size, e.g. `Standard_D4s_v5`.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub vm_size: String,
    /// Image. Default: the CAPI reference image for Windows Server 2025 (or the version the
    /// bootstrap config names) and the Machine's Kubernetes version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<AzureImage>,
    #[serde(default)]
    pub os_disk: AzureOsDisk,
    #[serde(default)]
    pub network: AzureNetwork,
    /// User-assigned managed identities attached to the VM (ARM resource IDs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub user_assigned_identities: Vec<String>,
    /// Credentials for ARM. Default: the `AzureCluster`'s `identityRef`, else the manager's own
    /// (service principal secret, workload identity or managed identity from its environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ref: Option<AzureIdentityRef>,
    /// Extra tags on the VM, NIC and disk (capwin's ownership tags are always added).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub additional_tags: BTreeMap<String, String>,
}

/// One image source. Exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.marketplace), has(self.computeGallery), has(self.communityGallery), has(self.id)].filter(x, x).size() == 1").message("exactly one of marketplace, computeGallery, communityGallery and id must be set"))]
pub struct AzureImage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketplace: Option<MarketplaceImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_gallery: Option<ComputeGalleryImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub community_gallery: Option<CommunityGalleryImage>,
    /// Full ARM ID of a managed image or gallery image version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/subscriptions/"))]
    pub id: Option<String>,
}

/// A marketplace image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MarketplaceImage {
    #[schemars(length(min = 1, max = 128))]
    pub publisher: String,
    #[schemars(length(min = 1, max = 128))]
    pub offer: String,
    #[schemars(length(min = 1, max = 128))]
    pub sku: String,
    /// Version, or `latest`.
    #[schemars(length(min = 1, max = 64))]
    pub version: String,
    /// Needed for images with a purchase plan (third-party publishers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub third_party_image: bool,
}

/// An image in an Azure Compute Gallery.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeGalleryImage {
    #[schemars(length(min = 1, max = 80))]
    pub gallery: String,
    #[schemars(length(min = 1, max = 80))]
    pub name: String,
    #[schemars(length(min = 1, max = 64))]
    pub version: String,
    /// Default: the cluster's subscription.
    #[serde(default, rename = "subscriptionID", skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// Default: the cluster's resource group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
}

/// An image in a community gallery.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommunityGalleryImage {
    /// The gallery's public name.
    #[schemars(length(min = 1, max = 128))]
    pub gallery: String,
    #[schemars(length(min = 1, max = 80))]
    pub name: String,
    #[schemars(length(min = 1, max = 64))]
    pub version: String,
}

/// The managed OS disk (always deleted with the VM).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureOsDisk {
    /// Size in GiB (default 128; Windows images need at least 64).
    #[serde(default, rename = "diskSizeGB", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 4095))]
    pub disk_size_gb: Option<u32>,
    /// Storage account type (default: `Premium_LRS` on sizes with premium storage, an `s` in the
    /// size's feature letters such as `D4s_v5`; `StandardSSD_LRS` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_account_type: Option<AzureDiskType>,
}

/// Managed disk SKUs usable for an OS disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AzureDiskType {
    #[serde(rename = "Standard_LRS")]
    StandardLrs,
    #[serde(rename = "StandardSSD_LRS")]
    StandardSsdLrs,
    #[serde(rename = "StandardSSD_ZRS")]
    StandardSsdZrs,
    #[serde(rename = "Premium_LRS")]
    PremiumLrs,
    #[serde(rename = "Premium_ZRS")]
    PremiumZrs,
}

/// Network placement of the VM's NIC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureNetwork {
    /// Subnet name in the cluster's virtual network. Default: the `AzureCluster`'s node subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 80))]
    pub subnet_name: Option<String>,
    /// Accelerated networking on the NIC (default: off; not every size supports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerated_networking: Option<bool>,
}

/// A reference to a CAPZ `AzureClusterIdentity` (cluster-scoped or namespaced as CAPZ defines
/// it); its `allowedNamespaces` is enforced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureIdentityRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A template MachineDeployments clone into one `AzureWindowsMachine` per Machine.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "AzureWindowsMachineTemplate",
    plural = "azurewindowsmachinetemplates",
    namespaced,
    status = "InfraMachineTemplateStatus",
    category = "cluster-api",
    shortname = "awinmt",
    label("cluster.x-k8s.io/v1beta2", "v1alpha1"),
    // `clusterctl move` discovers the kinds of CRDs with this label (clusterctl init adds it;
    // kustomize, Tilt or Helm installs get it from here).
    label("clusterctl.cluster.x-k8s.io", ""),
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".spec.template.spec.vmSize"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AzureWindowsMachineTemplateSpec {
    pub template: AzureWindowsMachineTemplateResource,
}

/// The object an Azure template stamps out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureWindowsMachineTemplateResource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateObjectMeta>,
    pub spec: AzureWindowsMachineSpec,
}
