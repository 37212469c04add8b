//! capwin's test kit.
//!
//! - [`apiserver`]: an in-memory Kubernetes API server on loopback, good enough for kube-rs
//!   clients, kube-runtime controllers and `kubectl --server=…`. Its known gaps are listed in
//!   `controllers/testkit/APISERVER-GAPS.md`.

//! - [`capi`]: a CAPI-core simulator playing Cluster, MachineDeployment and Machine controllers
//!   against those servers.
//! - [`hostile`]: the table of hostile `WindowsKubeadmConfig`s both lines of defence are tested with.

pub mod apiserver;
pub mod capi;
pub mod hostile;
