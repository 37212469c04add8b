//! capwin's test kit.
//!
//! - [`apiserver`]: an in-memory Kubernetes API server on loopback, good enough for kube-rs
//!   clients, kube-runtime controllers and `kubectl --server=…`. Its known gaps are listed in
//!   `controllers/testkit/APISERVER-GAPS.md`.

pub mod apiserver;
