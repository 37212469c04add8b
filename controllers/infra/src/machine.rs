//! The one machine reconciler both shims run, in three parts (after kube-rs's `controller-rs`
//! and CAPA's `AWSMachine` controller):
//!
//! - [`observe`]: the object and the caches (its Machine and Cluster, as typed views), no I/O
//!   beyond waiting for the caches' first list;
//! - [`plan`]: a pure function from the observation to one [`Step`] (unit-tested below): the
//!   CAPI contract's order of pause, deletion, owners, the cloud resource already recorded,
//!   the Cluster's infrastructure and the bootstrap data;
//! - [`act`]: the only place with I/O. It adds the finalizer (one patch, before anything is
//!   made in a cloud), asks the cloud ([`MachineCloud`]) to create, report or delete, and
//!   commits the status once through [`Writer::record`] (no write when nothing changed).
//!
//! One error type ([`Error`]), one rule for trouble: a named [`Error::Blocked`] becomes
//! `Ready=False` with its reason and a requeue at its `retry`, stretched by consecutive blocks
//! at most four times (`capwin_runtime::Backoff`, the bootstrap controller's rule too; never a
//! controller-wide backoff); a Kubernetes API failure is retried by [`error_policy`], same rule. One pause rule: the
//! object's `cluster.x-k8s.io/paused` annotation or its Cluster's `spec.paused`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use capwin_api::common::{InfraMachineStatus, condition_reason};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::cache::CapiCache;
use crate::contract::{self, BootstrapData};
use crate::diagnostics::{self, NODE_BOOTSTRAP};
use crate::metrics::Metrics;
use crate::status::{InfraMachine, Writer, keeps_ready};
use crate::views::{ClusterView, MachineView};
use crate::{Blocked, Error, blocked};

/// The CAPI objects a machine hangs off, as the controllers read them.
#[derive(Clone, Debug, PartialEq)]
pub struct Owners {
    pub machine: MachineView,
    pub cluster: ClusterView,
}

/// How looking up a machine's owners went.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnerLookup {
    /// No owner reference to a CAPI Machine yet (CAPI sets it).
    NoOwnerRef,
    MachineMissing(String),
    ClusterMissing(String),
    Found(Box<Owners>),
}

/// What one reconcile sees.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub deleting: bool,
    pub has_finalizer: bool,
    /// The object's `cluster.x-k8s.io/paused` annotation or its Cluster's `spec.paused`.
    pub paused: bool,
    /// The cloud resource is recorded on the object ([`MachineCloud::recorded`]).
    pub recorded: bool,
    pub owners: OwnerLookup,
}

/// What one reconcile does.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Only `Paused=True`; nothing else happens, not even deletion.
    Paused,
    /// Deleted, and nothing of this controller's holds the object.
    Nothing,
    /// Delete what the cloud holds, then release the finalizer.
    Delete,
    /// An input is missing: `Ready=False` with this reason; the input's watch wakes the
    /// machine, `retry` is the safety net.
    Wait { reason: &'static str, message: String, retry: Option<Duration> },
    /// Read the recorded resource into status (never replace it: Machines are immutable).
    Report,
    /// Every input is there: read the bootstrap data and create.
    Create,
}

/// The plan of one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub step: Step,
    /// Add the finalizer first (it must be there before anything exists in a cloud).
    pub add_finalizer: bool,
}

/// The CAPI v1beta2 infrastructure-machine contract's order of decisions.
pub fn plan(o: &Observation, kind: &str) -> Plan {
    let live = |step: Step| Plan { add_finalizer: !o.has_finalizer, step };
    if o.paused {
        return Plan { step: Step::Paused, add_finalizer: false };
    }
    if o.deleting {
        let step = if o.has_finalizer { Step::Delete } else { Step::Nothing };
        return Plan { step, add_finalizer: false };
    }
    let owners = match &o.owners {
        OwnerLookup::Found(owners) => owners,
        // No finalizer before a Machine owns the object (as CAPA): nothing can be made yet.
        OwnerLookup::NoOwnerRef => {
            let message = format!("no CAPI Machine owns this {kind} yet");
            return Plan {
                step: Step::Wait { reason: "WaitingForMachineOwner", message, retry: None },
                add_finalizer: false,
            };
        }
        OwnerLookup::MachineMissing(name) => {
            let message = format!("Machine {name} does not exist");
            let retry = Some(Duration::from_secs(30));
            return Plan {
                step: Step::Wait { reason: "WaitingForMachineOwner", message, retry },
                add_finalizer: false,
            };
        }
        OwnerLookup::ClusterMissing(name) => {
            let message = format!("Cluster {name} does not exist");
            let retry = Some(Duration::from_secs(30));
            return Plan { step: Step::Wait { reason: "WaitingForCluster", message, retry }, add_finalizer: false };
        }
    };
    if o.recorded {
        return live(Step::Report);
    }
    if !owners.cluster.infrastructure_provisioned {
        return live(Step::Wait {
            reason: "WaitingForClusterInfrastructure",
            message: "the Cluster's infrastructure is not provisioned yet".into(),
            // The Cluster watch wakes the machine when it is; this is a safety net.
            retry: Some(Duration::from_secs(60)),
        });
    }
    if owners.machine.data_secret_name.is_none() {
        return live(Step::Wait {
            reason: "WaitingForBootstrapData",
            message: "Machine.spec.bootstrap.dataSecretName is not set yet".into(),
            // The Machine watch wakes the machine when CAPI sets it, seconds after the
            // bootstrap provider wrote the Secret; this is a safety net.
            retry: Some(Duration::from_secs(30)),
        });
    }
    live(Step::Create)
}

/// An event to publish after the status is written.
#[derive(Clone, Debug)]
pub struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
    pub action: &'static str,
}

impl Note {
    pub fn normal(reason: &'static str, note: String, action: &'static str) -> Self {
        Self { type_: EventType::Normal, reason, note, action }
    }
    pub fn warning(reason: &'static str, note: String, action: &'static str) -> Self {
        Self { type_: EventType::Warning, reason, note, action }
    }
}

/// What a cloud made of a create.
#[derive(Debug)]
pub struct Created {
    /// When to look at the new resource.
    pub requeue: Duration,
    pub notes: Vec<Note>,
}

/// What a cloud read of the recorded resource; the status draft it was given holds the rest.
#[derive(Debug)]
pub enum Report {
    /// The resource was read: `Ready` says this, and the draft is committed.
    Read { ready: bool, reason: &'static str, message: String, requeue: Duration, notes: Vec<Note> },
    /// Not read this time (a steady machine read at a bounded cadence): nothing is written.
    NotRead { requeue: Duration },
}

/// What a cloud's deletion found.
#[derive(Debug, PartialEq)]
pub enum Deletion {
    /// Everything is gone (verified): the finalizer is released.
    Gone,
    /// Deleting; look again after `retry`.
    Waiting { message: String, retry: Duration },
}

/// One cloud's part of the reconciler: the resource, not the contract.
pub trait MachineCloud: Send + Sync + 'static {
    type Machine: InfraMachine + Send + Sync + 'static;
    /// The kind, for messages (`AWSWindowsMachine`).
    const KIND: &'static str;
    /// The finalizer that holds the object until its cloud resources are gone.
    const FINALIZER: &'static str;

    fn cache(&self) -> &CapiCache;
    fn metrics(&self) -> &Metrics;
    fn writer(&self) -> Writer<'_>;
    /// Consecutive blocks and failures per machine (the one requeue rule).
    fn backoff(&self) -> &capwin_runtime::Backoff;
    /// Whether the machine's cloud resource is recorded on the object (spec or metadata, which
    /// `clusterctl move` keeps), or by this process a moment ago (the cache may lag its write).
    fn recorded(&self, m: &Self::Machine) -> bool;
    /// Makes the resource, idempotently; records it on the object as early as crash safety
    /// needs (the one write besides the status commit).
    fn create(
        &self,
        m: &Self::Machine,
        owners: &Owners,
        data: BootstrapData,
    ) -> impl Future<Output = Result<Created, Error>> + Send;
    /// Reads the recorded resource into `draft` (addresses, state, conditions).
    fn report(
        &self,
        m: &Self::Machine,
        owners: &Owners,
        draft: &mut InfraMachineStatus,
    ) -> impl Future<Output = Result<Report, Error>> + Send;
    /// Deletes everything of the machine's; `owners` when the Machine and Cluster still exist.
    fn delete(
        &self,
        m: &Self::Machine,
        owners: Option<&Owners>,
    ) -> impl Future<Output = Result<Deletion, Error>> + Send;
}

/// Reads what a reconcile needs from the object and the caches.
pub async fn observe<K: InfraMachine>(cache: &CapiCache, m: &K, finalizer: &str, recorded: bool) -> Observation {
    let ns = m.namespace().unwrap_or_default();
    let owners = match m.meta().owner_references.iter().flatten().find(|o| o.kind == "Machine") {
        None => OwnerLookup::NoOwnerRef,
        Some(owner) => match cache.machine(&ns, &owner.name).await {
            None => OwnerLookup::MachineMissing(owner.name.clone()),
            Some(machine) => {
                let machine = MachineView::of(&machine);
                match cache.cluster(&ns, &machine.cluster_name).await {
                    None => OwnerLookup::ClusterMissing(machine.cluster_name),
                    Some(cluster) => {
                        OwnerLookup::Found(Box::new(Owners { machine, cluster: ClusterView::of(&cluster) }))
                    }
                }
            }
        },
    };
    let annotated = m.annotations().contains_key("cluster.x-k8s.io/paused");
    let cluster_paused = matches!(&owners, OwnerLookup::Found(o) if o.cluster.paused);
    Observation {
        deleting: m.meta().deletion_timestamp.is_some(),
        has_finalizer: m.finalizers().iter().any(|f| f == finalizer),
        paused: annotated || cluster_paused,
        recorded,
        owners,
    }
}

/// One reconcile of any machine kind.
pub async fn reconcile<C: MachineCloud>(obj: Arc<C::Machine>, cloud: Arc<C>) -> Result<Action, Error> {
    let m = obj.as_ref();
    tracing::debug!(kind = C::KIND, name = %m.name_any(), "reconciling");
    let observed = observe(cloud.cache(), m, C::FINALIZER, cloud.recorded(m)).await;
    let plan = plan(&observed, C::KIND);
    let owners = match observed.owners {
        OwnerLookup::Found(o) => Some(*o),
        _ => None,
    };
    let result = act(cloud.as_ref(), m, plan, owners).await;
    settle(cloud.as_ref(), m, result).await
}

/// Performs the plan.
async fn act<C: MachineCloud>(cloud: &C, m: &C::Machine, plan: Plan, owners: Option<Owners>) -> Result<Action, Error> {
    // The object changed since it was read: its new version is reconciled at once.
    let again = Action::requeue(Duration::from_millis(500));
    if plan.add_finalizer && !add_finalizer(cloud, m).await? {
        return Ok(again);
    }
    let writer = cloud.writer();
    match (plan.step, owners) {
        (Step::Paused, _) => writer.paused(m).await,
        (Step::Nothing, _) => Ok(Action::await_change()),
        (Step::Delete, owners) => match cloud.delete(m, owners.as_ref()).await {
            Ok(Deletion::Gone) if remove_finalizer(cloud, m).await? => Ok(Action::await_change()),
            Ok(Deletion::Gone) => Ok(again),
            Ok(Deletion::Waiting { message, retry }) => Err(blocked("Deleting", message, Some(retry))),
            Err(e) => Err(e),
        },
        (Step::Wait { reason, message, retry }, _) => Err(blocked(reason, message, retry)),
        (Step::Report, Some(owners)) => {
            let mut draft = m.infra_status().cloned().unwrap_or_default();
            match cloud.report(m, &owners, &mut draft).await? {
                Report::NotRead { requeue } => {
                    // Not read this time, but the Node joined since the last read: say so now
                    // (no cloud call needed), not at the next steady read minutes later.
                    if let Some(node) = owners.machine.node_name.as_deref()
                        && condition_reason(&draft.conditions, NODE_BOOTSTRAP) != Some("NodeJoined")
                    {
                        diagnostics::node_joined(&mut draft, node, m.meta().generation);
                        writer.commit(m, &draft).await?;
                    }
                    Ok(Action::requeue(requeue))
                }
                Report::Read { ready, reason, message, requeue, notes } => {
                    writer.record(m, ready, reason, &message, Some(draft)).await?;
                    publish(&writer, m, notes).await;
                    Ok(Action::requeue(requeue))
                }
            }
        }
        (Step::Create, Some(owners)) => {
            let data = contract::bootstrap_data(writer.client, &owners.machine).await?;
            tracing::info!(kind = C::KIND, name = %m.name_any(), "bootstrap data present; creating");
            let created = cloud.create(m, &owners, data).await?;
            publish(&writer, m, created.notes).await;
            Ok(Action::requeue(created.requeue))
        }
        // `plan` reports and creates only with owners.
        (Step::Report | Step::Create, None) => Ok(Action::await_change()),
    }
}

async fn publish<K: InfraMachine>(writer: &Writer<'_>, m: &K, notes: Vec<Note>) {
    for n in notes {
        writer.event(m, n.type_, n.reason, &n.note, n.action).await;
    }
}

/// Turns the outcome into the reconcile's: a blocked step becomes `Ready=False` with its reason
/// (an event when the reason is trouble) and a requeue at its `retry`, never a hot loop and
/// never a controller-wide backoff.
async fn settle<C: MachineCloud>(cloud: &C, m: &C::Machine, result: Result<Action, Error>) -> Result<Action, Error> {
    let metrics = cloud.metrics();
    let key = capwin_runtime::obj_key(m);
    match result {
        Ok(a) => {
            metrics.reconciled("ok");
            cloud.backoff().reset(&key);
            Ok(a)
        }
        Err(Error::Blocked(Blocked { reason, message, retry })) => {
            metrics.reconciled("blocked");
            metrics.blocked(reason);
            if keeps_ready(m.infra_status(), reason) && m.meta().deletion_timestamp.is_none() {
                // A passing cloud hiccup on a running machine: say so in the log and look
                // again, but do not flip the Machine's InfrastructureReady.
                tracing::info!(name = %m.name_any(), reason, message, "transient; Ready unchanged");
            } else {
                cloud.writer().record(m, false, reason, &message, None).await?;
            }
            let deleting = m.meta().deletion_timestamp.is_some();
            Ok(match retry {
                Some(r) => Action::requeue(cloud.backoff().after_block(&key, reason, r)),
                // A deletion always looks again.
                None if deleting => Action::requeue(Duration::from_secs(10)),
                None => Action::await_change(),
            })
        }
        Err(e) => {
            metrics.reconciled("error");
            Err(e)
        }
    }
}

/// The error policy of both machine controllers: a Kubernetes API failure is logged and retried
/// by the same rule as a block (blocking conditions never get here: they are requeues).
pub fn error_policy<C: MachineCloud>(obj: Arc<C::Machine>, err: &Error, cloud: Arc<C>) -> Action {
    tracing::warn!(kind = C::KIND, name = %obj.name_any(), error = %err, "reconcile failed");
    let key = capwin_runtime::obj_key(obj.as_ref());
    Action::requeue(cloud.backoff().next(&key, capwin_runtime::Backoff::API_ERROR))
}

/// Adds the finalizer with kube-runtime's guarded JSON patch (the list must be what the decision
/// was made on); `false` when the object changed meanwhile (its new version is reconciled next).
async fn add_finalizer<C: MachineCloud>(cloud: &C, m: &C::Machine) -> Result<bool, Error> {
    let ops = if m.finalizers().is_empty() {
        json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
               {"op": "add", "path": "/metadata/finalizers", "value": [C::FINALIZER]}])
    } else {
        json!([{"op": "test", "path": "/metadata/finalizers", "value": m.finalizers()},
               {"op": "add", "path": "/metadata/finalizers/-", "value": C::FINALIZER}])
    };
    json_patch(cloud, m, ops).await
}

/// Removes the finalizer (guarded the same way).
async fn remove_finalizer<C: MachineCloud>(cloud: &C, m: &C::Machine) -> Result<bool, Error> {
    let Some(i) = m.finalizers().iter().position(|f| f == C::FINALIZER) else { return Ok(true) };
    let path = format!("/metadata/finalizers/{i}");
    let ops = json!([{"op": "test", "path": path, "value": C::FINALIZER}, {"op": "remove", "path": path}]);
    json_patch(cloud, m, ops).await
}

async fn json_patch<K: InfraMachine>(cloud: &impl MachineCloud, m: &K, ops: serde_json::Value) -> Result<bool, Error> {
    let api: Api<K> = Api::namespaced(cloud.writer().client.clone(), &m.namespace().unwrap_or_default());
    let ops = serde_json::from_value(ops).map_err(|e| blocked("InternalError", e.to_string(), None))?;
    match api.patch(&m.name_any(), &PatchParams::default(), &Patch::Json::<()>(ops)).await {
        Ok(_) => Ok(true),
        // A failed test (the object changed since the cache read), or the object is gone.
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(provisioned: bool, data: bool) -> OwnerLookup {
        OwnerLookup::Found(Box::new(Owners {
            machine: MachineView {
                name: "w-0".into(),
                cluster_name: "c".into(),
                data_secret_name: data.then(|| "w-0".into()),
                ..Default::default()
            },
            cluster: ClusterView { name: "c".into(), infrastructure_provisioned: provisioned, ..Default::default() },
        }))
    }

    fn seen(owners: OwnerLookup) -> Observation {
        Observation { deleting: false, has_finalizer: true, paused: false, recorded: false, owners }
    }

    fn reason(p: &Plan) -> &'static str {
        match &p.step {
            Step::Wait { reason, .. } => reason,
            other => panic!("not waiting: {other:?}"),
        }
    }

    #[test]
    fn a_machine_is_created_only_when_every_input_is_there() {
        assert_eq!(plan(&seen(owners(true, true)), "K").step, Step::Create);
        assert_eq!(reason(&plan(&seen(owners(true, false)), "K")), "WaitingForBootstrapData");
        assert_eq!(reason(&plan(&seen(owners(false, true)), "K")), "WaitingForClusterInfrastructure");
        assert_eq!(reason(&plan(&seen(OwnerLookup::NoOwnerRef), "K")), "WaitingForMachineOwner");
        assert_eq!(reason(&plan(&seen(OwnerLookup::MachineMissing("w-0".into())), "K")), "WaitingForMachineOwner");
        assert_eq!(reason(&plan(&seen(OwnerLookup::ClusterMissing("c".into())), "K")), "WaitingForCluster");
    }

    #[test]
    fn a_recorded_resource_is_reported_never_replaced() {
        // Even when the inputs of a create have gone (data Secret name, provisioned flag).
        let o = Observation { recorded: true, ..seen(owners(false, false)) };
        assert_eq!(plan(&o, "K").step, Step::Report);
    }

    #[test]
    fn the_finalizer_comes_first_but_not_before_an_owner() {
        let fresh = Observation { has_finalizer: false, ..seen(owners(true, true)) };
        assert_eq!(plan(&fresh, "K"), Plan { step: Step::Create, add_finalizer: true });
        let waiting = Observation { has_finalizer: false, ..seen(owners(true, false)) };
        assert!(plan(&waiting, "K").add_finalizer, "waiting for data still holds the object");
        let orphan = Observation { has_finalizer: false, ..seen(OwnerLookup::NoOwnerRef) };
        assert!(!plan(&orphan, "K").add_finalizer, "nothing can exist before a Machine owns it");
    }

    #[test]
    fn pause_comes_before_everything_even_deletion() {
        let o = Observation { paused: true, deleting: true, ..seen(owners(true, true)) };
        assert_eq!(plan(&o, "K"), Plan { step: Step::Paused, add_finalizer: false });
    }

    #[test]
    fn deletion_needs_no_owners_and_ends_without_the_finalizer() {
        let o = Observation { deleting: true, ..seen(OwnerLookup::MachineMissing("w-0".into())) };
        assert_eq!(plan(&o, "K").step, Step::Delete);
        let released = Observation { deleting: true, has_finalizer: false, ..seen(owners(true, true)) };
        assert_eq!(plan(&released, "K"), Plan { step: Step::Nothing, add_finalizer: false });
    }
}
