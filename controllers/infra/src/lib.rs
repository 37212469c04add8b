//! What capwin's two machine shims share, so each crate holds only its cloud:
//!
//! - [`Error`] and [`blocked`]: the one error type, where a blocking condition names its reason;
//! - [`machine`]: the one machine reconciler (observe → plan → act) and the [`machine::MachineCloud`]
//!   trait each cloud implements;
//! - [`views`]: typed partial views of the CAPI Machine and Cluster;
//! - [`cache`]: the Machines and Clusters the controllers watch, read instead of fetched;
//! - [`contract`]: the CAPI v1beta2 infrastructure-machine contract edges (bootstrap data, the
//!   Windows version the bootstrap config names, cached reads of other kinds);
//! - [`status`]: writing `Ready` with an event on every reason change;
//! - [`diagnostics`]: reading the payload's serial-console lines into `NodeBootstrap`,
//!   rate-limited per machine;
//! - [`metrics`]: cloud calls, reconciles and diagnostics reads per controller.

pub use capwin_runtime::cache;
pub mod contract;
pub mod diagnostics;
pub mod machine;
pub mod metrics;
pub mod status;
pub mod views;
pub mod watch;

use std::time::Duration;

/// The one error type of a machine controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A named reason the machine cannot go on (a condition and an event), and when to look
    /// again: the blocked type every controller shares.
    #[error("{0}")]
    Blocked(Blocked),
}

impl From<Blocked> for Error {
    fn from(b: Blocked) -> Self {
        Error::Blocked(b)
    }
}

pub fn blocked(reason: &'static str, message: impl Into<String>, retry: Option<Duration>) -> Error {
    Error::Blocked(Blocked::new(reason, message, retry))
}
pub use capwin_runtime::gate::EndpointGate;
pub use capwin_runtime::{Backoff, Blocked, QueueMetrics, WriteMemo};
