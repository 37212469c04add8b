//! The CAPI objects a machine controller already watches (Machines, Clusters), kept in
//! reflector stores that the reconcilers read instead of GETting them, as controller-runtime
//! providers (CAPA, CAPZ) read from their informer caches. The controller's own Machine and
//! Cluster watches fill the stores ([`crate::watch_into`]); a reconcile waits only until the first
//! list has arrived.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt as _;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};

/// Read side of the caches, shared by every reconcile.
pub struct CapiCache {
    machines: Store<DynamicObject>,
    clusters: Store<DynamicObject>,
    /// Handed once to the watches that fill the stores.
    writers: Mutex<Option<CacheWriters>>,
    /// Other kinds the reconcilers read (a cloud's cluster and identity kinds, Namespaces), by
    /// plural, each filled by a watch of its own ([`CapiCache::reflect_kind`]).
    others: Mutex<HashMap<String, Store<DynamicObject>>>,
}

/// A look-up in a cache of another kind.
#[derive(Debug, PartialEq)]
pub enum Cached {
    Found(Box<DynamicObject>),
    Absent,
    /// The kind is not cached (not asked for, or its watch has not listed yet: a missing CRD
    /// never lists): read it from the API server instead.
    NotCached,
}

/// Write side: the controller's Machine and Cluster watches.
pub struct CacheWriters {
    pub machines: Writer<DynamicObject>,
    pub clusters: Writer<DynamicObject>,
}

impl Default for CapiCache {
    fn default() -> Self {
        let machines = Writer::new(capi("Machine"));
        let clusters = Writer::new(capi("Cluster"));
        Self {
            machines: machines.as_reader(),
            clusters: clusters.as_reader(),
            writers: Mutex::new(Some(CacheWriters { machines, clusters })),
            others: Mutex::default(),
        }
    }
}

impl CapiCache {
    /// The writers, for the watches; `None` once taken.
    pub fn take_writers(&self) -> Option<CacheWriters> {
        self.writers.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Keeps every object of `ar` (in `namespace`, or all) in a store of its own, watched
    /// until the process ends; its watch backs off on its own errors.
    pub fn reflect_kind(&self, client: Client, ar: &ApiResource, namespaced: bool, namespace: Option<&str>) {
        let api: Api<DynamicObject> = match namespace {
            Some(ns) if namespaced => Api::namespaced_with(client, ns, ar),
            _ => Api::all_with(client, ar),
        };
        let writer = Writer::new(ar.clone());
        self.others.lock().unwrap_or_else(|p| p.into_inner()).insert(ar.plural.clone(), writer.as_reader());
        let kind = ar.kind.clone();
        tokio::spawn(async move {
            reflector(writer, watcher(api, watcher::Config::default()).default_backoff())
                .for_each(|r| {
                    if let Err(e) = r {
                        tracing::warn!(watch = %kind, error = %e, "watch failed; retrying it with backoff");
                    }
                    std::future::ready(())
                })
                .await;
        });
    }

    /// An object of a kind given to [`CapiCache::reflect_kind`].
    pub fn cached(&self, ar: &ApiResource, ns: Option<&str>, name: &str) -> Cached {
        let Some(store) = self.others.lock().unwrap_or_else(|p| p.into_inner()).get(&ar.plural).cloned() else {
            return Cached::NotCached;
        };
        // Ready once its first list arrived; not waiting here: a kind whose CRD is missing
        // never lists, and its readers fall back to a GET.
        if !matches!(futures_util::FutureExt::now_or_never(store.wait_until_ready()), Some(Ok(()))) {
            return Cached::NotCached;
        }
        let mut r = ObjectRef::new_with(name, ar.clone());
        if let Some(ns) = ns {
            r = r.within(ns);
        }
        match store.get(&r) {
            Some(o) => Cached::Found(Box::new(o.as_ref().clone())),
            None => Cached::Absent,
        }
    }

    /// A Machine by namespace and name, once the Machine watch has listed.
    pub async fn machine(&self, ns: &str, name: &str) -> Option<DynamicObject> {
        get(&self.machines, "Machine", ns, name).await
    }

    /// A Cluster by namespace and name, once the Cluster watch has listed.
    pub async fn cluster(&self, ns: &str, name: &str) -> Option<DynamicObject> {
        get(&self.clusters, "Cluster", ns, name).await
    }
}

/// A CAPI core kind at the contract version capwin reads (v1beta2).
pub fn capi(kind: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", kind),
        &format!("{}s", kind.to_lowercase()),
    )
}

async fn get(store: &Store<DynamicObject>, kind: &str, ns: &str, name: &str) -> Option<DynamicObject> {
    // Ready after the first list; the writer lives as long as the controller does.
    store.wait_until_ready().await.ok()?;
    store.get(&ObjectRef::new_with(name, capi(kind)).within(ns)).map(|o| o.as_ref().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    #[tokio::test]
    async fn reads_come_from_what_the_watches_wrote() {
        let cache = CapiCache::default();
        let mut w = cache.take_writers().expect("writers");
        assert!(cache.take_writers().is_none(), "handed out once");
        let m: DynamicObject = serde_json::from_value(json!({"apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "Machine", "metadata": {"name": "w-0", "namespace": "ns"}, "spec": {"clusterName": "c"}}))
        .unwrap();
        w.machines.apply_watcher_event(&Event::Init);
        w.machines.apply_watcher_event(&Event::InitApply(m));
        w.machines.apply_watcher_event(&Event::InitDone);
        w.clusters.apply_watcher_event(&Event::Init);
        w.clusters.apply_watcher_event(&Event::InitDone);
        assert_eq!(cache.machine("ns", "w-0").await.map(|m| m.data["spec"]["clusterName"].clone()), Some(json!("c")));
        assert!(cache.machine("other", "w-0").await.is_none());
        assert!(cache.cluster("ns", "c").await.is_none());
    }
}
