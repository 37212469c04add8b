//! What every capwin controller shares so that none of them ever pauses as a whole because one
//! object's reconcile or look-up failed:
//!
//! - [`watch`] and [`reflect`]: watch streams that back off on their *own* errors (client-go's
//!   default backoff, kube's `default_backoff`) and log them instead of handing them on. A watch
//!   error that reached a `Controller` would pause every trigger through the controller's trigger
//!   backoff; a backoff on the controller's *output* (the mistake fixed by issue 16) paused every
//!   reconcile whenever one object failed or was not found.
//! - [`drain`]: consumes a controller's output. Per-object outcomes are only logged (their retry is
//!   the error policy's business); `ObjectNotFound` for an object that is gone is nothing to do.
//! - [`QueueDelay`]: the time from a trigger (a watch event of the object or of something mapped to
//!   it, or a periodic resync) to the start of the reconcile it caused, as the histogram
//!   `capwin_reconcile_queue_delay_seconds{controller}`, so an operator can see a stall.

pub mod cache;
pub mod gate;

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{Stream, StreamExt, future};
use kube::api::Api;
use kube::runtime::controller::{Action, Error as ControllerError};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;

/// Passes a watch's objects on and keeps its errors: each is logged, and the stream backs off
/// before the watcher tries again. Nothing downstream ever sees an error.
fn without_errors<K>(
    what: &'static str,
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
{
    stream.filter_map(move |r| {
        future::ready(match r {
            Ok(o) => Some(Ok(o)),
            Err(e) => {
                tracing::warn!(watch = what, error = %e, "watch failed; retrying it with backoff");
                None
            }
        })
    })
}

/// Objects that changed or were deleted (for triggers mapped onto other objects), from a watch
/// that backs off on its own errors.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    without_errors(what, watcher(api, config).default_backoff().touched_objects())
}

/// The objects of a watch, kept in `writer`'s store, as triggers for the store's own kind: the
/// watch backs off on its own errors.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    what: &'static str,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let objects = watcher(api, config).modify(strip_managed_fields).default_backoff();
    without_errors(what, reflector(writer, objects).applied_objects())
}

/// Like [`watch`], and every object also kept in `writer`'s store: a cache the reconcilers read
/// instead of GETting what the controller already watches (as controller-runtime's informers
/// serve `client.Get`). The cache keeps no managed fields ([`strip_managed_fields`]).
pub fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    what: &'static str,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    watch_into_with(api, config, writer, what, strip_managed_fields, |_| {})
}

/// Like [`watch_into`], with what the cache keeps of each object (`slim`: applied before it is
/// stored or handed on, as controller-runtime's cache `DefaultTransform`), and `on_delete` told
/// of every object the watch saw deleted (a delete event, not an object missing from a relist).
pub fn watch_into_with<K, S, F>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    what: &'static str,
    slim: S,
    on_delete: F,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
    S: FnMut(&mut K) + Send + 'static,
    F: Fn(&K) + Send + 'static,
{
    let events = reflector(writer, watcher(api, config).modify(slim).default_backoff()).inspect(move |e| {
        if let Ok(watcher::Event::Delete(o)) = e {
            on_delete(o);
        }
    });
    without_errors(what, events.touched_objects())
}

/// Managed fields are bookkeeping of server-side apply that no reconciler reads; on a real API
/// server they are often the largest part of an object (controller-runtime's
/// `TransformStripManagedFields`).
pub fn strip_managed_fields<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// CAPI Machines into the controller's cache, slimmed ([`slim_machine`]): the Machine watch of
/// every controller.
pub fn watch_machines_into(
    api: Api<kube::api::DynamicObject>,
    config: watcher::Config,
    writer: Writer<kube::api::DynamicObject>,
) -> impl Stream<Item = Result<kube::api::DynamicObject, watcher::Error>> + Send + 'static {
    watch_into_with(api, config, writer, "Machine", slim_machine, |_| {})
}

/// What the controllers keep of a CAPI `Machine`: metadata (no managed fields), spec, and of its
/// status only `nodeRef` and `initialization` (CAPI rewrites the rest, conditions and
/// addresses, all the time; a thousand Machines' conditions would be most of the cache).
pub fn slim_machine(m: &mut kube::api::DynamicObject) {
    strip_managed_fields(m);
    if let Some(status) = m.data.get_mut("status").and_then(|s| s.as_object_mut()) {
        status.retain(|k, _| k == "nodeRef" || k == "initialization");
    }
}

/// What of an object's own changes warrants a reconcile: a new object (UID), a spec change
/// (`metadata.generation`), the deletion, the finalizers (kube's finalizer helper continues on
/// the event of its own finalizer write), the labels and the annotations (the pause annotation,
/// an operator's `kubectl annotate` to nudge it). A controller's own status writes are none of
/// these, so they do not wake it again (controller-runtime's `GenerationChangedPredicate`, or'd
/// with its annotation and label predicates).
pub fn own_fingerprint<K: Resource>(o: &K) -> u64 {
    let m = o.meta();
    hash_of(&(
        &m.uid,
        m.generation,
        m.deletion_timestamp.is_some(),
        &m.finalizers,
        format!("{:?}{:?}", m.labels, m.annotations),
    ))
}

/// A hash of a value, for fingerprints.
pub fn hash_of(v: &impl Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// The last fingerprint seen per object (by namespace/name): what of an object a consumer reads,
/// so that changes to anything else pass by.
pub struct Changes<K> {
    seen: Arc<Mutex<HashMap<String, u64>>>,
    fingerprint: fn(&K) -> u64,
}

impl<K> Clone for Changes<K> {
    fn clone(&self) -> Self {
        Self { seen: self.seen.clone(), fingerprint: self.fingerprint }
    }
}

impl<K: Resource> Changes<K> {
    pub fn new(fingerprint: fn(&K) -> u64) -> Self {
        Self { seen: Arc::default(), fingerprint }
    }

    /// Whether `o` differs, in its fingerprint, from the last time it was seen.
    pub fn changed(&self, o: &K) -> bool {
        let print = (self.fingerprint)(o);
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(obj_key(o), print) != Some(print)
    }
}

/// Passes on only the objects whose [`own_fingerprint`] changed since the stream last passed
/// them. The store behind the stream is updated either way (filter after the reflector).
pub fn own_changes<K>(
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
{
    let seen = Changes::new(own_fingerprint::<K>);
    stream.filter(move |r| future::ready(r.as_ref().map_or(true, |o| seen.changed(o))))
}

/// The last status each object was given by this controller (a hash, by UID, for a minute), so a
/// reconcile that reads its object from a cache still behind its own last write (by one watch
/// event) does not write the same status again. The minute bounds what a stale memo could hide
/// (a status someone else rewrote).
#[derive(Default)]
pub struct WriteMemo(Mutex<HashMap<String, (u64, Instant)>>);

impl WriteMemo {
    const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(60);

    fn hash(v: &impl serde::Serialize) -> u64 {
        hash_of(&serde_json::to_string(v).unwrap_or_default())
    }

    /// Whether `status` is what this controller wrote for the object `uid` within the minute.
    pub fn already_written(&self, uid: &str, status: &impl serde::Serialize) -> bool {
        let mut memo = self.0.lock().unwrap_or_else(|p| p.into_inner());
        memo.retain(|_, (_, at)| at.elapsed() < Self::FRESH_FOR);
        memo.get(uid).is_some_and(|(h, _)| *h == Self::hash(status))
    }

    /// Remembers a status written for `uid`.
    pub fn written(&self, uid: &str, status: &impl serde::Serialize) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.to_string(), (Self::hash(status), Instant::now()));
    }
}

/// Why an object cannot go on, for every controller: a condition reason, a message naming the
/// field or the input (never a token, password or key), and when to look again (`None`: when a
/// watch event says the input changed). It becomes `Ready=False` with the reason, a Warning
/// event when it is trouble, and a requeue by [`Backoff::after_block`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub reason: &'static str,
    pub message: String,
    pub retry: Option<std::time::Duration>,
}

impl Blocked {
    pub fn new(reason: &'static str, message: impl Into<String>, retry: Option<std::time::Duration>) -> Self {
        Self { reason, message: message.into(), retry }
    }
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// The one requeue rule for an object that is blocked or failing, for every controller: its
/// consecutive blocks stretch the requeue the blocking reason asked for (or the error base) up
/// to four times, and a reconcile that goes through resets it. Capped low on purpose: what a
/// machine waits for is woken by a watch, and a cloud's trouble is paced by the endpoint's
/// gate (`gate`), so a long per-object backoff would only leave the object behind when the
/// trouble ends (issue 14: "not per machine towards 5 minutes").
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// The delay a Kubernetes API failure asks for (then stretched like any block).
    pub const API_ERROR: std::time::Duration = std::time::Duration::from_secs(5);
    /// Longest stretch of the asked-for delay.
    pub const MAX_FACTOR: u32 = 4;

    /// The delay for one more consecutive block of `key`.
    pub fn next(&self, key: &str, asked: std::time::Duration) -> std::time::Duration {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.to_string()).or_insert(0);
        *n = (*n + 1).min(16);
        asked.saturating_mul((1u32 << (*n - 1).min(2)).min(Self::MAX_FACTOR))
    }

    /// The delay for one more block of `key` by `reason`. Waiting for an input (`WaitingFor…`)
    /// is not stretched: the input's watch wakes the object and the asked-for delay is already
    /// the safety net's cap that fits the input.
    pub fn after_block(&self, key: &str, reason: &str, asked: std::time::Duration) -> std::time::Duration {
        if reason.starts_with("WaitingFor") { asked } else { self.next(key, asked) }
    }

    /// `key` went through: its next block starts from the asked-for delay again.
    pub fn reset(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn blocks_stretch_the_asked_delay_at_most_four_times_and_success_resets() {
        let b = Backoff::default();
        let s = Duration::from_secs;
        let got: Vec<_> = (0..5).map(|_| b.next("a", s(5))).collect();
        assert_eq!(got, [s(5), s(10), s(20), s(20), s(20)]);
        assert_eq!(b.next("other", s(5)), s(5), "per key");
        b.reset("a");
        assert_eq!(b.next("a", s(30)), s(30));
        for _ in 0..3 {
            assert_eq!(b.after_block("w", "WaitingForBootstrapData", s(30)), s(30), "inputs are not stretched");
        }
        assert_eq!(b.after_block("w", "Throttled", s(20)), s(20));
        assert_eq!(b.after_block("w", "Throttled", s(20)), s(40));
    }
}

#[cfg(test)]
mod memo_tests {
    use super::WriteMemo;

    #[test]
    fn a_status_is_written_once_per_content() {
        let memo = WriteMemo::default();
        assert!(!memo.already_written("u1", &serde_json::json!({"ready": true})));
        memo.written("u1", &serde_json::json!({"ready": true}));
        assert!(memo.already_written("u1", &serde_json::json!({"ready": true})));
        assert!(!memo.already_written("u1", &serde_json::json!({"ready": false})), "other content");
        assert!(!memo.already_written("u2", &serde_json::json!({"ready": true})), "other object");
    }
}

/// The key of an object in [`QueueDelay`]: `namespace/name`.
pub fn key(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or_default())
}

/// The key of an object reference.
pub fn ref_key<K: Resource>(r: &ObjectRef<K>) -> String {
    key(r.namespace.as_deref(), &r.name)
}

/// The key of an object.
pub fn obj_key<K: Resource>(o: &K) -> String {
    key(o.meta().namespace.as_deref(), &o.name_any())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

/// The queue-delay histogram of every controller of a process.
#[derive(Clone)]
pub struct QueueMetrics(Family<ControllerLabel, Histogram>);

impl QueueMetrics {
    /// Registers `capwin_reconcile_queue_delay_seconds`. A controller's series exists once it has
    /// reconciled something, so a manager exports only the series of the controllers it runs.
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            // 1 ms to about 9 minutes.
            Histogram::new(exponential_buckets(0.001, 2.0, 20))
        });
        registry.sub_registry_with_prefix("capwin").register(
            "reconcile_queue_delay_seconds",
            "Time from a trigger (a watch event of the object or of an object mapped to it, or a resync) to the start of the reconcile it caused; a growing delay is a stalled or saturated controller",
            family.clone(),
        );
        Self(family)
    }
}

/// Measures the time from a trigger to the start of the reconcile it caused. Several triggers
/// before one start count from the earliest; a trigger that arrives while the object is being
/// reconciled counts from its own arrival to the next start.
pub struct QueueDelay {
    controller: &'static str,
    pending: Mutex<HashMap<String, Instant>>,
    metrics: QueueMetrics,
}

/// Triggers remembered at most; past that the oldest knowledge is dropped (triggers for objects
/// that are never reconciled, e.g. deleted before their turn, must not grow memory).
const MAX_PENDING: usize = 200_000;

impl QueueDelay {
    pub fn new(controller: &'static str, metrics: QueueMetrics) -> Arc<Self> {
        Arc::new(Self { controller, pending: Mutex::default(), metrics })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A trigger for the object `key` arrived now.
    pub fn triggered(&self, key: String) {
        self.triggered_at(key, Instant::now());
    }

    fn triggered_at(&self, key: String, at: Instant) {
        let mut p = self.pending();
        if p.len() >= MAX_PENDING && !p.contains_key(&key) {
            p.clear();
        }
        p.entry(key).or_insert(at);
    }

    /// The reconcile of `key` starts now: its delay, when a trigger was seen (a requeue that the
    /// controller scheduled itself is not a trigger and is not measured).
    pub fn started(&self, key: &str) -> Option<std::time::Duration> {
        let at = self.pending().remove(key)?;
        let delay = at.elapsed();
        self.metrics
            .0
            .get_or_create(&ControllerLabel { controller: self.controller.into() })
            .observe(delay.as_secs_f64());
        Some(delay)
    }

    /// The object is gone: a trigger for it will never start a reconcile.
    pub fn forget(&self, key: &str) {
        self.pending().remove(key);
    }

    /// Wraps a mapper of `Controller::watches_stream`: every object it maps to was triggered now.
    pub fn mapped<O, K, I>(
        self: &Arc<Self>,
        mapper: impl Fn(O) -> I + Send + Sync + 'static,
    ) -> impl Fn(O) -> Vec<ObjectRef<K>> + Send + Sync + 'static
    where
        K: Resource + 'static,
        I: IntoIterator<Item = ObjectRef<K>>,
    {
        let delay = self.clone();
        move |o| {
            let refs: Vec<ObjectRef<K>> = mapper(o).into_iter().collect();
            for r in &refs {
                delay.triggered(ref_key(r));
            }
            refs
        }
    }

    /// Wraps the stream of the controller's own objects: each is a trigger.
    pub fn observed<K>(
        self: &Arc<Self>,
        stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    ) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
    where
        K: Resource + Send + 'static,
    {
        let delay = self.clone();
        stream.inspect(move |r| {
            if let Ok(o) = r {
                delay.triggered(obj_key(o));
            }
        })
    }

    /// A periodic resync of everything in `store`: each object is triggered when it fires.
    pub fn resync<K>(
        self: &Arc<Self>,
        every: std::time::Duration,
        store: Store<K>,
    ) -> impl Stream<Item = ()> + Send + 'static
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone,
    {
        let delay = self.clone();
        futures_util::stream::unfold((), move |()| async move {
            tokio::time::sleep(every).await;
            Some(((), ()))
        })
        .inspect(move |()| {
            for o in store.state() {
                delay.triggered(obj_key(o.as_ref()));
            }
        })
    }
}

/// Consumes a controller's output: nothing here ever waits, so one object's failure never
/// holds up another's reconcile.
pub async fn drain<K, E1, E2>(
    controller: &'static str,
    delay: Arc<QueueDelay>,
    output: impl Stream<Item = Result<(ObjectRef<K>, Action), ControllerError<E1, E2>>>,
) where
    K: Resource,
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    output
        .for_each(|r| {
            match r {
                Ok(_) => {}
                Err(ControllerError::ObjectNotFound(r)) => {
                    // A trigger for an object that is gone (a deleted config's Machine) or not yet
                    // cached (a Machine created before it): nothing to do now; its own event
                    // brings it when it exists.
                    delay.forget(&ref_key(r.as_ref()));
                    tracing::debug!(controller, object = %r, "triggered object not found; nothing to do");
                }
                Err(ControllerError::ReconcilerFailed(e, r)) => {
                    tracing::debug!(controller, object = %r, error = %e, "reconcile failed; the error policy retries it");
                }
                Err(e) => tracing::warn!(controller, error = %e, "controller trouble"),
            }
            future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn delay() -> (Arc<QueueDelay>, Registry) {
        let mut registry = Registry::default();
        let m = QueueMetrics::register(&mut registry);
        (QueueDelay::new("test", m), registry)
    }

    fn exposed(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn the_earliest_trigger_counts_and_each_start_consumes_it() {
        let (d, registry) = delay();
        let t0 = Instant::now() - Duration::from_secs(5);
        d.triggered_at("ns/a".into(), t0);
        d.triggered_at("ns/a".into(), Instant::now());
        let measured = d.started("ns/a").expect("a trigger was pending");
        assert!(measured >= Duration::from_secs(5), "counted from the earliest trigger: {measured:?}");
        assert_eq!(d.started("ns/a"), None, "a scheduled requeue is not a trigger");
        let out = exposed(&registry);
        assert!(out.contains("capwin_reconcile_queue_delay_seconds_count{controller=\"test\"} 1"), "{out}");
    }

    #[test]
    fn forgotten_objects_leave_nothing_behind() {
        let (d, registry) = delay();
        d.triggered("ns/gone".into());
        d.forget("ns/gone");
        assert_eq!(d.started("ns/gone"), None);
        assert!(!exposed(&registry).contains("controller=\"test\""), "no series before a reconcile");
    }

    #[test]
    fn mapped_triggers_are_recorded_per_target() {
        let (d, _) = delay();
        let map = d.mapped(|n: u32| {
            (0..n).map(|i| ObjectRef::<k8s_openapi::api::core::v1::Secret>::new(&format!("s{i}")).within("ns"))
        });
        assert_eq!(map(2).len(), 2);
        assert!(d.started("ns/s0").is_some() && d.started("ns/s1").is_some() && d.started("ns/s2").is_none());
    }
}
