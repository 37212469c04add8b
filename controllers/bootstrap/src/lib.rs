//! The `WindowsKubeadmConfig` reconciler: turns configs owned by CAPI Machines into bootstrap
//! data Secrets (CAPI v1beta2 bootstrap contract), minting kubeadm join tokens in the workload
//! cluster, keeping them fresh until the Node joins, and deleting them as soon as it has.
//!
//! Shape (after kube-rs's controller-rs): one [`reconcile::reconcile`] function, a
//! [`reconcile::Context`], one [`reconcile::Error`] type and an error policy with backoff.
//! Decisions that need no server live in [`plan`] and are unit-tested there.

pub mod ca;
pub mod conditions;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod token;
pub mod views;
