//! `metav1.Condition` bookkeeping (shared with the infrastructure controllers through capwin-api).

pub use capwin_api::common::{condition_reason as reason, set_condition as set};
