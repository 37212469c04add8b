//! The `WindowsKubeadmConfig` controller: its settings, shared context, error type, the
//! reconcile entry ([`reconcile`]: [`observe`] → [`plan::plan`] → [`act`]) and its wiring
//! ([`run`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use capwin_api::bootstrap::WindowsKubeadmConfig;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::metrics::{Metrics, ReasonLabels, ResultLabels};
use crate::plan::{self, Blocked, Plan};
use crate::views;
use crate::{act, observe};

/// The finalizer earlier versions put on configs (to delete the join token when a config went);
/// removed wherever it is still found.
pub const FINALIZER: &str = "bootstrap.cluster.x-k8s.io/capwin-token-cleanup";
/// Annotation on the data Secret naming the token it carries (the id is not secret).
pub const TOKEN_ID_ANNOTATION: &str = "capwin.cluster.x-k8s.io/bootstrap-token-id";
/// Annotation on the data Secret: a digest of everything its payload was rendered from (spec,
/// cluster inputs, token id, cloud), so an unchanged config is not rendered, and its Secrets not
/// read, again.
pub const INPUTS_ANNOTATION: &str = "capwin.cluster.x-k8s.io/bootstrap-inputs";
/// Annotation on the data Secret with the Windows Server version the config names, read by the
/// machine controllers to choose the image (they do not read the config).
pub const WINDOWS_VERSION_ANNOTATION: &str = "capwin.cluster.x-k8s.io/windows-version";

/// Data Secret key holding the token (so a booted VM's token can be recreated as it was).
pub const TOKEN_KEY: &str = "bootstrap-token";

/// Controller settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Bootstrap token lifetime; refreshed until the Node joins.
    pub token_ttl: Duration,
    /// Watch only this namespace.
    pub namespace: Option<String>,
    /// Only objects labelled `cluster.x-k8s.io/watch-filter=<value>`.
    pub watch_filter: Option<String>,
    /// Re-reconcile everything this often even without events.
    pub sync_period: Duration,
    /// Reconciles running at once.
    pub concurrency: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(15 * 60),
            namespace: None,
            watch_filter: None,
            sync_period: Duration::from_secs(600),
            concurrency: 10,
        }
    }
}

/// Workload-cluster clients, one per cluster, rebuilt when its kubeconfig Secret changes.
#[derive(Default)]
pub struct WorkloadClients(pub(crate) Mutex<HashMap<(String, String), (String, Client)>>);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub workload: WorkloadClients,
    /// Time from a trigger to the reconcile it caused (`capwin_reconcile_queue_delay_seconds`).
    pub queue_delay: Arc<capwin_runtime::QueueDelay>,
    /// The Machines and Clusters the controller watches, read instead of fetched.
    pub cache: capwin_runtime::cache::CapiCache,
    /// Secrets labelled `cluster.x-k8s.io/cluster-name` (CAPI's `<cluster>-ca` and
    /// `<cluster>-kubeconfig`, and the data Secrets), from the controller's Secret watch.
    pub(crate) secrets: Store<Secret>,
    pub(crate) secret_writer: Mutex<Option<Writer<Secret>>>,
    /// The status last written per config.
    pub(crate) written: capwin_runtime::WriteMemo,
    /// The expiry this controller gave each join token (by token id), so keeping a token alive
    /// does not read it back from the workload cluster on every pass.
    pub(crate) token_expiry: Mutex<HashMap<String, SystemTime>>,
    /// Consecutive blocks per config (the one requeue rule, `capwin_runtime::Backoff`).
    pub(crate) failures: capwin_runtime::Backoff,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        queue: capwin_runtime::QueueMetrics,
        settings: Settings,
    ) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter { controller: "capwin-bootstrap".into(), instance: std::env::var("POD_NAME").ok() },
        );
        let secret_writer = Writer::default();
        Arc::new(Self {
            client,
            recorder,
            metrics,
            settings,
            workload: WorkloadClients::default(),
            queue_delay: capwin_runtime::QueueDelay::new("bootstrap", queue),
            cache: Default::default(),
            secrets: secret_writer.as_reader(),
            secret_writer: Mutex::new(Some(secret_writer)),
            written: Default::default(),
            token_expiry: Mutex::default(),
            failures: Default::default(),
        })
    }
}

/// The one error type. `Display` never shows a token, password or key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{}: {}", .0.reason, .0.message)]
    Blocked(Blocked),
    #[error("random token generation failed: {0}")]
    Random(String),
}

pub(crate) fn blocked(reason: &'static str, message: impl Into<String>, retry: Option<Duration>) -> Error {
    Error::Blocked(Blocked::new(reason, message, retry))
}

/// The workload cluster refused or did not answer a token request.
pub(crate) fn unreachable_workload(cluster: &str, e: kube::Error) -> Blocked {
    let detail = match &e {
        kube::Error::Api(s) => format!("{} ({})", s.reason, s.code),
        _ => "connection failed".into(),
    };
    Blocked::new(
        "WorkloadClusterUnreachable",
        format!("the workload cluster of {cluster} did not accept the token request: {detail}"),
        Some(Duration::from_secs(15)),
    )
}

impl Context {
    pub(crate) fn expiry_of(&self, token_id: &str) -> Option<SystemTime> {
        self.token_expiry.lock().unwrap_or_else(|p| p.into_inner()).get(token_id).copied()
    }

    pub(crate) fn set_expiry(&self, token_id: &str, expiry: Option<SystemTime>) {
        let mut m = self.token_expiry.lock().unwrap_or_else(|p| p.into_inner());
        match expiry {
            Some(e) => m.insert(token_id.to_string(), e),
            None => m.remove(token_id),
        };
    }
}

/// Reconciles one config: [`observe`] (the caches), [`plan::plan`] (pure; it may ask for more to
/// be read first, [`observe::read`]), [`act`] (every write, one status commit). No finalizer (as
/// CABPK has none): a join token of a config deleted before its Node joined is deleted when its
/// data Secret goes (the Secret watch's `on_delete`), or expires on its own within
/// `--bootstrap-token-ttl`. Configs written by earlier versions still carry [`FINALIZER`]; it is
/// removed once (with the token cleanup it stood for, when the config is being deleted).
pub async fn reconcile(cfg: Arc<WindowsKubeadmConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    ctx.queue_delay.started(&capwin_runtime::obj_key(cfg.as_ref()));
    let result = match act::retire_legacy_finalizer(&cfg, &ctx).await {
        Ok(true) => Ok(Action::await_change()),
        Ok(false) if cfg.metadata.deletion_timestamp.is_some() => Ok(Action::await_change()),
        Ok(false) => apply(&cfg, &ctx).await,
        Err(e) => Err(e),
    };
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    let key = capwin_runtime::obj_key(cfg.as_ref());
    let outcome = match result {
        Ok(action) => {
            ctx.failures.reset(&key);
            Ok(action)
        }
        // A blocking condition was recorded on the object: come back when asked, with backoff.
        Err(Error::Blocked(b)) => {
            ctx.metrics
                .errors
                .get_or_create(&ReasonLabels { controller: "bootstrap".into(), reason: b.reason.into() })
                .inc();
            ctx.metrics
                .reconciles
                .get_or_create(&ResultLabels { controller: "bootstrap".into(), result: "blocked".into() })
                .inc();
            return Ok(match b.retry {
                Some(d) => Action::requeue(ctx.failures.after_block(&key, b.reason, d)),
                None => Action::await_change(),
            });
        }
        Err(e) => Err(e),
    };
    let label = if outcome.is_ok() { "success" } else { "error" };
    ctx.metrics.reconciles.get_or_create(&ResultLabels { controller: "bootstrap".into(), result: label.into() }).inc();
    outcome
}

/// Observe, plan (reading what the plan asks for, each at most once), act.
async fn apply(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<Action, Error> {
    let mut seen = observe::observe(cfg, ctx).await?;
    let now = SystemTime::now();
    loop {
        match plan::plan(&seen.facts, now, ctx.settings.token_ttl) {
            Plan::Read(need) => observe::read(need, cfg, ctx, &mut seen).await?,
            Plan::Act(decision) => return act::act(cfg, ctx, &seen, decision).await,
        }
    }
}

/// Requeue policy for errors that were not a recorded blocking condition: the same rule as a
/// block (`capwin_runtime::Backoff`: each reason's base stretched by consecutive failures, at
/// most four times; the watches wake the config as soon as the input appears, the requeue is
/// only the safety net).
pub fn error_policy(cfg: Arc<WindowsKubeadmConfig>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(config = %cfg.name_any(), namespace = cfg.namespace().unwrap_or_default(), error = %err, "reconcile failed");
    ctx.metrics.errors.get_or_create(&ReasonLabels { controller: "bootstrap".into(), reason: "Error".into() }).inc();
    let key = capwin_runtime::obj_key(cfg.as_ref());
    Action::requeue(ctx.failures.next(&key, capwin_runtime::Backoff::API_ERROR))
}

/// Wires the controller: configs, plus Machines and Clusters mapped to the configs they affect.
/// Every watch backs off on its own errors and no outcome of one object ever pauses another
/// (`capwin_runtime`): the output is drained, never backed off.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let s = &ctx.settings;
    let (configs, machines, clusters, owned): (
        Api<WindowsKubeadmConfig>,
        Api<DynamicObject>,
        Api<DynamicObject>,
        Api<Secret>,
    ) = match &s.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced_with(client.clone(), ns, &views::capi_resource("Machine")),
            Api::namespaced_with(client.clone(), ns, &views::capi_resource("Cluster")),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all_with(client.clone(), &views::capi_resource("Machine")),
            Api::all_with(client.clone(), &views::capi_resource("Cluster")),
            Api::all(client.clone()),
        ),
    };
    let mut wc = watcher::Config::default();
    if let Some(f) = &s.watch_filter {
        wc = wc.labels(&format!("{}={f}", views::WATCH_FILTER_LABEL));
    }
    let delay = ctx.queue_delay.clone();
    let (store, writer) = kube::runtime::reflector::store();
    let own = delay.observed(capwin_runtime::own_changes(capwin_runtime::reflect(
        configs,
        wc.clone(),
        writer,
        "WindowsKubeadmConfig",
    )));
    let controller = Controller::for_stream(own, store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(s.concurrency));
    let cluster_store = store.clone();
    let writers = ctx.cache.take_writers().expect("one controller per context");
    let secret_writer =
        ctx.secret_writer.lock().unwrap_or_else(|p| p.into_inner()).take().expect("one controller per context");
    let machine_to_config = |m: DynamicObject| {
        let r = &m.data["spec"]["bootstrap"]["configRef"];
        (r["kind"] == "WindowsKubeadmConfig")
            .then(|| ObjectRef::new(r["name"].as_str().unwrap_or_default()).within(&m.namespace().unwrap_or_default()))
    };
    let cluster_to_configs = move |c: DynamicObject| {
        let (name, ns) = (c.name_any(), c.namespace().unwrap_or_default());
        cluster_store
            .state()
            .into_iter()
            .filter(|cfg| {
                cfg.namespace().as_deref() == Some(ns.as_str())
                    && cfg.labels().get(views::CLUSTER_NAME_LABEL) == Some(&name)
            })
            .map(|cfg| ObjectRef::from_obj(cfg.as_ref()))
            .collect::<Vec<_>>()
    };
    let forget = ctx.clone();
    let owned = capwin_runtime::watch_into_with(
        owned,
        watcher::Config::default().labels(views::CLUSTER_NAME_LABEL),
        secret_writer,
        "Secret",
        observe::slim_secret,
        move |s: &Secret| {
            if s.annotations().contains_key(TOKEN_ID_ANNOTATION) {
                let (ctx, s) = (forget.clone(), s.clone());
                tokio::spawn(async move { act::forget_token(&ctx, &s).await });
            }
        },
    );
    let output = controller
        .owns_stream(owned)
        .watches_stream_with(
            capwin_runtime::watch_machines_into(machines, wc.clone(), writers.machines),
            delay.mapped(machine_to_config),
            views::capi_resource("Machine"),
        )
        .watches_stream_with(
            capwin_runtime::watch_into(clusters, wc, writers.clusters, "Cluster"),
            delay.mapped(cluster_to_configs),
            views::capi_resource("Cluster"),
        )
        .reconcile_all_on(delay.resync(s.sync_period, store))
        .run(reconcile, error_policy, ctx.clone());
    capwin_runtime::drain("bootstrap", delay, output).await;
}
