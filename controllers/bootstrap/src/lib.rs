//! The `WindowsKubeadmConfig` reconciler: turns configs owned by CAPI Machines into bootstrap
//! data Secrets (CAPI v1beta2 bootstrap contract), minting kubeadm join tokens in the workload
//! cluster, keeping them fresh until the Node joins, and deleting them as soon as it has.
//!
//! Shape (after kube-rs's controller-rs, like `capwin_infra::machine`): one
//! [`reconcile::reconcile`] function in three parts — [`observe`] reads the caches (and, on the
//! plan's demand, the few Secrets and the workload token it needs), [`plan`] decides purely and
//! is unit-tested, [`act`] performs every write and commits the status once — with a
//! [`reconcile::Context`], one [`reconcile::Error`] type and one backoff rule.

pub mod act;
pub mod ca;
pub mod conditions;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod token;
pub mod views;
