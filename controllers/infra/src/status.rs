//! Writing a machine's status: `Ready` with an event whenever its reason changes, `Paused`, and
//! events; the one place a machine controller patches its status.

use std::fmt::Debug;
use std::time::Duration;

use capwin_api::common::{InfraMachineStatus, condition_reason, now_rfc3339, set_condition};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Error;

/// Condition type of a paused object (CAPI v1beta2 contract).
pub const PAUSED: &str = "Paused";

/// Blocking reasons that are a cloud's passing trouble (throttling, outages), not a problem with
/// the machine.
pub const TRANSIENT_REASONS: &[&str] = &["Throttled", "ARMUnavailable", "EC2Error"];

/// Whether a blocked reconcile leaves `Ready` as it is: the machine is provisioned and the reason
/// is transient.
pub fn keeps_ready(status: Option<&InfraMachineStatus>, reason: &str) -> bool {
    let provisioned = status.and_then(|s| s.initialization.as_ref()).and_then(|i| i.provisioned) == Some(true);
    provisioned && TRANSIENT_REASONS.contains(&reason)
}

/// An infrastructure machine kind of capwin.
pub trait InfraMachine:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned
{
    fn infra_status(&self) -> Option<&InfraMachineStatus>;
}

impl InfraMachine for capwin_api::aws::AWSWindowsMachine {
    fn infra_status(&self) -> Option<&InfraMachineStatus> {
        self.status.as_ref()
    }
}

impl InfraMachine for capwin_api::azure::AzureWindowsMachine {
    fn infra_status(&self) -> Option<&InfraMachineStatus> {
        self.status.as_ref()
    }
}

/// What a controller writes with.
pub struct Writer<'a> {
    pub client: &'a Client,
    pub recorder: &'a Recorder,
    /// Reasons that are progress, not trouble: no event (the condition says it), as CAPA
    /// publishes events for trouble and for what it creates, not for each state it observes.
    pub normal_reasons: &'a [&'a str],
    /// The status last written per machine.
    pub written: &'a capwin_runtime::WriteMemo,
}

impl Writer<'_> {
    /// Sets `Ready` (on `update`, or the object's current status), patches the status when it
    /// changed, and publishes an event when the reason changed.
    pub async fn record<K: InfraMachine>(
        &self,
        m: &K,
        ready: bool,
        reason: &str,
        message: &str,
        update: Option<InfraMachineStatus>,
    ) -> Result<(), Error> {
        let mut status = update.unwrap_or_else(|| m.infra_status().cloned().unwrap_or_default());
        let before = condition_reason(&status.conditions, "Ready").map(String::from);
        set_condition(&mut status.conditions, "Ready", ready, reason, message, m.meta().generation, &now_rfc3339());
        // Recording means reconciling, which means not paused.
        set_condition(&mut status.conditions, PAUSED, false, "NotPaused", "", m.meta().generation, &now_rfc3339());
        self.commit(m, &status).await?;
        // Waiting for an input (bootstrap data, the cluster's infrastructure) is the normal
        // course of a create, not trouble: the condition says it, no event.
        let waiting = reason.starts_with("WaitingFor");
        if before.as_deref() != Some(reason) && !ready && !waiting && !self.normal_reasons.contains(&reason) {
            self.event(m, EventType::Warning, reason, message, "Reconcile").await;
        }
        Ok(())
    }

    /// Patches the status when it differs from the object's and from the last one written (the
    /// cache may lag this controller's own write): the one status write of a reconcile.
    pub async fn commit<K: InfraMachine>(&self, m: &K, status: &InfraMachineStatus) -> Result<(), Error> {
        let uid = m.uid().unwrap_or_default();
        if m.infra_status() != Some(status) && !self.written.already_written(&uid, status) {
            let api: Api<K> = Api::namespaced(self.client.clone(), &m.namespace().unwrap_or_default());
            api.patch_status(&m.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
            self.written.written(&uid, status);
        }
        Ok(())
    }

    /// Publishes an event on the object (best effort: events never fail a reconcile).
    pub async fn event<K: InfraMachine>(&self, m: &K, type_: EventType, reason: &str, note: &str, action: &str) {
        let ev =
            Event { type_, reason: reason.into(), note: Some(note.into()), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &m.object_ref(&())).await {
            tracing::debug!(error = %e, "event not published");
        }
    }

    /// The object is paused (its Cluster's `spec.paused` or its `cluster.x-k8s.io/paused`
    /// annotation): `Paused` says so, `Ready` keeps what it said, and nothing else happens (not
    /// even deletion). Unpausing the Cluster wakes the machine (the Cluster watch); removing the
    /// annotation is a change of the object itself. The requeue is only a safety net.
    pub async fn paused<K: InfraMachine>(&self, m: &K) -> Result<Action, Error> {
        let mut status = m.infra_status().cloned().unwrap_or_default();
        let message = "the Cluster or this object is paused";
        set_condition(&mut status.conditions, PAUSED, true, "Paused", message, m.meta().generation, &now_rfc3339());
        if m.infra_status() != Some(&status) {
            let api: Api<K> = Api::namespaced(self.client.clone(), &m.namespace().unwrap_or_default());
            api.patch_status(&m.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
            self.event(m, EventType::Normal, "Paused", message, "Reconcile").await;
        }
        Ok(Action::requeue(Duration::from_secs(300)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capwin_api::common::InfraMachineInitialization;

    #[test]
    fn only_transient_trouble_on_a_provisioned_machine_keeps_ready() {
        let provisioned = InfraMachineStatus {
            initialization: Some(InfraMachineInitialization { provisioned: Some(true) }),
            ..Default::default()
        };
        assert!(keeps_ready(Some(&provisioned), "Throttled"));
        assert!(keeps_ready(Some(&provisioned), "ARMUnavailable"));
        assert!(!keeps_ready(Some(&provisioned), "IdentityNotAllowed"), "a real problem is shown");
        assert!(!keeps_ready(Some(&InfraMachineStatus::default()), "Throttled"), "not provisioned yet");
        assert!(!keeps_ready(None, "Throttled"));
    }
}
