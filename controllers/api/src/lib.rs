//! capwin's Kubernetes API types (`v1alpha1`).
//!
//! - [`bootstrap`]: `WindowsKubeadmConfig` / `WindowsKubeadmConfigTemplate` in
//!   `bootstrap.cluster.x-k8s.io`, a KubeadmConfig-style spec plus typed Windows settings.
//! - [`reference`]: the configuration reference (`docs/reference.md`) generated from the CRDs.
//! - [`azure`] / [`aws`]: `AzureWindowsMachine(Template)` / `AWSWindowsMachine(Template)` in
//!   `infrastructure.cluster.x-k8s.io`, the CAPI infrastructure-machine shims.
//!
//! Every kind follows the CAPI v1beta2 contract (see `crds::all`): namespaced, the
//! `cluster.x-k8s.io/v1beta2` contract label, a status subresource on non-template kinds,
//! `metav1.Condition`-shaped conditions and `status.initialization`.

pub mod aws;
pub mod azure;
pub mod bootstrap;
pub mod common;
pub mod crds;
pub mod reference;

/// The API version of every capwin kind.
pub const API_VERSION: &str = "v1alpha1";
/// Label key CAPI reads on our CRDs to learn which of our versions implement the v1beta2 contract.
pub const CONTRACT_LABEL: &str = "cluster.x-k8s.io/v1beta2";
