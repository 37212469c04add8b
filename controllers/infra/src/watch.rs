//! Which Machine and Cluster changes wake a machine controller. CAPI rewrites Machine status all the time
//! (conditions, addresses, timestamps), and each reconcile of a running machine costs a cloud
//! read, so only what the controllers read triggers one (measured on AWS: one DescribeInstances
//! a second per machine without this).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use std::fmt::Debug;
use std::time::Duration;

use capwin_api::common::capi_resource as capi;
use futures_util::TryFuture;
use k8s_openapi::NamespaceResourceScope;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use serde::de::DeserializeOwned;

use crate::Error;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

fn hash(v: &serde_json::Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// What the machine controllers read from a Machine.
pub fn machine_fingerprint(m: &DynamicObject) -> u64 {
    let spec = &m.data["spec"];
    let relevant = json!([
        m.metadata.uid,
        m.metadata.deletion_timestamp.is_some(),
        m.annotations().get("cluster.x-k8s.io/paused"),
        spec["clusterName"],
        spec["version"],
        spec["failureDomain"],
        spec["bootstrap"],
        spec["infrastructureRef"],
        m.data["status"]["nodeRef"],
    ]);
    hash(&relevant)
}

/// What the machine controllers read from a Cluster: whether it is paused and whether its
/// infrastructure is provisioned.
pub fn cluster_fingerprint(c: &DynamicObject) -> u64 {
    let relevant = json!([
        c.metadata.uid,
        c.data["spec"]["paused"],
        c.data["status"]["initialization"]["infrastructureProvisioned"],
    ]);
    hash(&relevant)
}

pub use capwin_runtime::Changes;

/// The mapper for `Controller::watches_with`: a Machine whose `infrastructureRef` is of `kind`
/// wakes that object, when it changed in what the controllers read.
pub fn machines_to<K: Resource<DynamicType = ()>>(
    kind: &'static str,
) -> impl Fn(DynamicObject) -> Option<ObjectRef<K>> + Send + Sync + Clone + 'static {
    let seen = Changes::new(machine_fingerprint);
    move |m: DynamicObject| {
        let r = &m.data["spec"]["infrastructureRef"];
        if r["kind"] != kind || !seen.changed(&m) {
            return None;
        }
        Some(ObjectRef::new(r["name"].as_str().unwrap_or_default()).within(&m.namespace().unwrap_or_default()))
    }
}

/// The mapper for a Cluster watch: a Cluster that was paused or unpaused, or whose
/// infrastructure became provisioned, wakes every machine of it (by the
/// `cluster.x-k8s.io/cluster-name` label, from the controller's own cache).
pub fn clusters_to<K>(store: Store<K>) -> impl Fn(DynamicObject) -> Vec<ObjectRef<K>> + Send + Sync + Clone + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let seen = Changes::new(cluster_fingerprint);
    move |c: DynamicObject| {
        if !seen.changed(&c) {
            return Vec::new();
        }
        let (ns, name) = (c.namespace(), c.name_any());
        store
            .state()
            .iter()
            .filter(|m| m.namespace() == ns && m.labels().get("cluster.x-k8s.io/cluster-name") == Some(&name))
            .map(|m| ObjectRef::from_obj(m.as_ref()))
            .collect()
    }
}

/// How a machine controller watches and runs: the manager's flags, with CAPI's meanings.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Watch only this namespace (`--namespace`).
    pub namespace: Option<String>,
    /// Only objects labelled `cluster.x-k8s.io/watch-filter=<value>` (`--watch-filter`): the
    /// machines, their templates, Machines and Clusters.
    pub watch_filter: Option<String>,
    /// Reconciles running at once (`--concurrency`).
    pub concurrency: u16,
    /// Every object is reconciled at least this often (`--sync-period`).
    pub sync_period: Duration,
}

impl RunSettings {
    /// The manager's defaults, in one namespace or all.
    pub fn new(namespace: Option<String>) -> Self {
        Self { namespace, watch_filter: None, concurrency: 10, sync_period: Duration::from_secs(600) }
    }

    fn watcher(&self) -> watcher::Config {
        match &self.watch_filter {
            Some(f) => watcher::Config::default().labels(&format!("cluster.x-k8s.io/watch-filter={f}")),
            None => watcher::Config::default(),
        }
    }
}

/// Runs a machine controller and its template controller until the process stops. The Machine
/// and Cluster watches fill `cache`. Machines are woken by their own changes (spec, deletion,
/// pause: `capwin_runtime::own_changes`), their Machine's (`machines_to`) and their Cluster's
/// (`clusters_to`); templates by their own. Every watch backs off on its own errors and the
/// outputs are drained, never backed off (`capwin_runtime`): one object's trouble never pauses
/// another's reconcile.
#[allow(clippy::too_many_arguments)]
pub async fn run_controllers<K, T, C, R, RF, E, TR, TF>(
    client: Client,
    cache: &crate::cache::CapiCache,
    settings: &RunSettings,
    kind: &'static str,
    queue: capwin_runtime::QueueMetrics,
    ctx: Arc<C>,
    mut reconcile: R,
    error_policy: E,
    reconcile_template: TR,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    C: Send + Sync + 'static,
    R: FnMut(Arc<K>, Arc<C>) -> RF,
    RF: TryFuture<Ok = Action, Error = Error> + Send + 'static,
    E: Fn(Arc<K>, &Error, Arc<C>) -> Action,
    TR: FnMut(Arc<T>, Arc<C>) -> TF + Send + 'static,
    TF: TryFuture<Ok = Action, Error = Error> + Send + 'static,
{
    let namespace = settings.namespace.as_deref();
    let wc = settings.watcher();
    let scoped = |ar: &ApiResource| match namespace {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar),
        None => Api::<DynamicObject>::all_with(client.clone(), ar),
    };
    let (machines, clusters) = (scoped(&capi("Machine")), scoped(&capi("Cluster")));
    let (objects, templates): (Api<K>, Api<T>) = match namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let template_kind: &'static str = Box::leak(format!("{kind}Template").into_boxed_str());
    let template_delay = capwin_runtime::QueueDelay::new(template_kind, queue.clone());
    let template_ctx = ctx.clone();
    let template_wc = wc.clone();
    tokio::spawn(async move {
        let (store, writer) = kube::runtime::reflector::store();
        let own = template_delay.observed(capwin_runtime::reflect(templates, template_wc, writer, template_kind));
        let mut reconcile_template = reconcile_template;
        let started = template_delay.clone();
        let output = Controller::for_stream(own, store).run(
            move |t: Arc<T>, c: Arc<C>| {
                started.started(&capwin_runtime::obj_key(t.as_ref()));
                reconcile_template(t, c)
            },
            |_, _, _| Action::requeue(Duration::from_secs(30)),
            template_ctx,
        );
        capwin_runtime::drain(template_kind, template_delay, output).await;
    });
    let delay = capwin_runtime::QueueDelay::new(kind, queue);
    let (store, writer) = kube::runtime::reflector::store();
    let own = delay.observed(capwin_runtime::own_changes(capwin_runtime::reflect(objects, wc.clone(), writer, kind)));
    let writers = cache.take_writers().expect("one controller per cache");
    let started = delay.clone();
    let output = Controller::for_stream(own, store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .watches_stream_with(
            capwin_runtime::watch_machines_into(machines, wc.clone(), writers.machines),
            delay.mapped(machines_to(kind)),
            capi("Machine"),
        )
        .watches_stream_with(
            capwin_runtime::watch_into(clusters, wc, writers.clusters, "Cluster"),
            delay.mapped(clusters_to(store.clone())),
            capi("Cluster"),
        )
        .reconcile_all_on(delay.resync(settings.sync_period, store))
        .run(
            move |o: Arc<K>, c: Arc<C>| {
                started.started(&capwin_runtime::obj_key(o.as_ref()));
                reconcile(o, c)
            },
            error_policy,
            ctx,
        );
    capwin_runtime::drain(kind, delay, output).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn machine(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_relevant_machine_changes_trigger_a_reconcile() {
        let base = json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "w-0", "namespace": "ns", "uid": "u1", "resourceVersion": "1"},
            "spec": {"clusterName": "c", "version": "v1.34.13", "bootstrap": {"configRef": {"name": "w-0"}},
                "infrastructureRef": {"kind": "AWSWindowsMachine", "name": "w-0"}},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let seen = Changes::new(machine_fingerprint);
        assert!(seen.changed(&machine(base.clone())), "first sight");
        assert!(!seen.changed(&machine(base.clone())), "same object");

        // CAPI's status churn and a new resourceVersion: no reconcile.
        let mut churn = base.clone();
        churn["metadata"]["resourceVersion"] = json!("2");
        churn["status"]["conditions"] = json!([{"type": "Ready", "status": "True", "lastTransitionTime": "now"}]);
        churn["status"]["addresses"] = json!([{"type": "InternalIP", "address": "10.0.0.7"}]);
        churn["status"]["lastUpdated"] = json!("2026-11-21T00:00:00Z");
        assert!(!seen.changed(&machine(churn.clone())));

        // Bootstrap data appears: reconcile; then the Node: reconcile; then deletion.
        let mut data = churn.clone();
        data["spec"]["bootstrap"]["dataSecretName"] = json!("w-0");
        assert!(seen.changed(&machine(data.clone())));
        assert!(!seen.changed(&machine(data.clone())));
        let mut node = data.clone();
        node["status"]["nodeRef"] = json!({"name": "ip-10-0-0-7.ec2.internal"});
        assert!(seen.changed(&machine(node.clone())));
        let mut deleting = node.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-21T00:00:00Z");
        assert!(seen.changed(&machine(deleting)));

        // Other machines are tracked apart; a recreated Machine (new UID) is new.
        let mut other = base.clone();
        other["metadata"]["name"] = json!("w-1");
        assert!(seen.changed(&machine(other)));
        let mut recreated = node.clone();
        recreated["metadata"]["uid"] = json!("u2");
        assert!(seen.changed(&machine(recreated)));
        for field in ["version", "failureDomain", "clusterName"] {
            let mut changed = node.clone();
            changed["spec"][field] = json!("other");
            assert_ne!(machine_fingerprint(&machine(changed)), machine_fingerprint(&machine(node.clone())), "{field}");
        }
    }

    #[test]
    fn a_cluster_wakes_its_machines_only_when_pause_or_infrastructure_changes() {
        use kube::runtime::reflector::store;
        use kube::runtime::watcher::Event;
        let (reader, mut writer) = store::<capwin_api::aws::AWSWindowsMachine>();
        for (name, cluster) in [("a-0", "a"), ("a-1", "a"), ("b-0", "b")] {
            let m: capwin_api::aws::AWSWindowsMachine = serde_json::from_value(json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "AWSWindowsMachine",
                "metadata": {"name": name, "namespace": "ns", "labels": {"cluster.x-k8s.io/cluster-name": cluster}},
                "spec": {"instanceType": "m6i.xlarge"}}))
            .unwrap();
            writer.apply_watcher_event(&Event::Apply(m));
        }
        let map = clusters_to(reader);
        let cluster = |paused: bool, provisioned: bool, rv: &str| {
            machine(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
                "metadata": {"name": "a", "namespace": "ns", "uid": "c", "resourceVersion": rv},
                "spec": {"paused": paused},
                "status": {"initialization": {"infrastructureProvisioned": provisioned}, "conditions": [{"type": "x", "lastTransitionTime": rv}]}}))
        };
        let mut woken: Vec<String> = map(cluster(false, false, "1")).into_iter().map(|r| r.name).collect();
        woken.sort();
        assert_eq!(woken, ["a-0", "a-1"], "first sight wakes the cluster's machines, not b's");
        assert!(map(cluster(false, false, "2")).is_empty(), "status churn wakes nobody");
        assert_eq!(map(cluster(false, true, "3")).len(), 2, "infrastructure provisioned");
        assert_eq!(map(cluster(true, true, "4")).len(), 2, "paused");
        assert_eq!(map(cluster(false, true, "5")).len(), 2, "unpaused");
    }

    #[test]
    fn the_mapper_maps_only_its_kind() {
        let map = machines_to::<capwin_api::aws::AWSWindowsMachine>("AWSWindowsMachine");
        let m = |kind: &str| {
            machine(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                "metadata": {"name": "w-0", "namespace": "ns", "uid": kind},
                "spec": {"infrastructureRef": {"kind": kind, "name": "infra-0"}}}))
        };
        let r = map(m("AWSWindowsMachine")).expect("its kind");
        assert_eq!((r.name.as_str(), r.namespace.as_deref()), ("infra-0", Some("ns")));
        assert!(map(m("AzureWindowsMachine")).is_none());
    }
}
