//! The ARM side of the `AzureWindowsMachine` shim. There is no maintained Azure management
//! crate, so ARM REST is written by hand on `azure_core`'s pipeline (retry, bearer token,
//! request IDs) with an explicit api-version per resource type.
//!
//! - [`model`]: pure pieces (names, computer names, tags, NIC and VM bodies, images, states);
//! - [`arm`]: the one seam to ARM (a trait, its `azure_core` implementation, a call counter,
//!   the long-running-operation protocol);
//! - [`credentials`]: the manager's own credential and per-cluster `AzureClusterIdentity`s;
//! - [`reconcile`]: the `AzureWindowsMachine` reconciler (`capwin manager --controllers azure`).

pub mod arm;
pub mod credentials;
pub mod metrics;
pub mod model;
pub mod reconcile;
