//! `metav1.Condition` bookkeeping: a transition time that only moves when the status does.

use capwin_api::common::{Condition, ConditionStatus};

/// Sets (or replaces) a condition of `type_`, keeping `lastTransitionTime` when the status is
/// unchanged.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) {
    let status = if status { ConditionStatus::True } else { ConditionStatus::False };
    let previous = conditions.iter().find(|c| c.r#type == type_).cloned();
    let last_transition_time = match &previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now.to_string(),
    };
    conditions.retain(|c| c.r#type != type_);
    conditions.push(Condition {
        r#type: type_.into(),
        status,
        last_transition_time,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
    });
    conditions.sort_by(|a, b| a.r#type.cmp(&b.r#type));
}

/// The `Ready` condition's reason, if any.
pub fn reason<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions.iter().find(|c| c.r#type == type_).map(|c| c.reason.as_str())
}
