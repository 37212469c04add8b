//! The EC2 side of the `AWSWindowsMachine` shim. This is the only crate that links
//! `aws-sdk-ec2` (about four minutes of one core to compile), so edits elsewhere neither
//! rebuild nor relink it.
//!
//! - [`model`]: pure pieces (tags, client token, user data, AMI choice, provider ID, states);
//! - [`ec2`]: the one seam to EC2 (a trait, its SDK implementation and a call counter);
//! - [`launch`]: AMI and subnet resolution, the launch request, idempotent creation;
//! - [`identity`]: per-cluster credentials from CAPA's identities (`AWSCluster.spec.identityRef`);
//! - [`metrics`]: Prometheus counters (EC2 calls by operation, reconciles by result).
//!
//! - [`reconcile`]: the `AWSWindowsMachine` reconciler (`capwin manager --controllers aws`);
//! - [`sandbox`]: seeds a local EC2 endpoint with what CAPA would have made (`capwin sandbox`).

pub mod batch;
pub mod ec2;
pub mod identity;
pub mod launch;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod sandbox;
