//! The reconcile loop for `WindowsKubeadmConfig`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use capwin_api::bootstrap::{BootstrapInitialization, WindowsKubeadmConfig, WindowsKubeadmConfigStatus};
use capwin_payload::{BootstrapToken, ClusterInputs, RenderError, RenderInput};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::metrics::{Metrics, ReasonLabels, ResultLabels};
use crate::plan::{self, Blocked, Observed, TokenAction, TokenState};
use crate::views::{self, Cluster, Machine};
use crate::{ca, conditions, token};

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

fn windows_version(cfg: &WindowsKubeadmConfig) -> String {
    serde_json::to_value(cfg.spec.windows.version).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

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
pub struct WorkloadClients(Mutex<HashMap<(String, String), (String, Client)>>);

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
    secrets: Store<Secret>,
    secret_writer: Mutex<Option<Writer<Secret>>>,
    /// The status last written per config.
    written: capwin_runtime::WriteMemo,
    /// The expiry this controller gave each join token (by token id), so keeping a token alive
    /// does not read it back from the workload cluster on every pass.
    token_expiry: Mutex<HashMap<String, SystemTime>>,
    /// Consecutive blocks per config (the one requeue rule, `capwin_runtime::Backoff`).
    failures: capwin_runtime::Backoff,
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

fn blocked(reason: &'static str, message: impl Into<String>, retry: Option<Duration>) -> Error {
    Error::Blocked(Blocked::new(reason, message, retry))
}

use capwin_api::common::now_rfc3339;

/// Reconciles one config. No finalizer (as CABPK has none): a join token of a config deleted
/// before its Node joined expires on its own within `--bootstrap-token-ttl`. Configs written by
/// earlier versions still carry [`FINALIZER`]; it is removed once (with the token cleanup it
/// stood for, when the config is being deleted).
pub async fn reconcile(cfg: Arc<WindowsKubeadmConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    ctx.queue_delay.started(&capwin_runtime::obj_key(cfg.as_ref()));
    let result = match retire_legacy_finalizer(&cfg, &ctx).await {
        Ok(true) => Ok(Action::await_change()),
        Ok(false) if cfg.metadata.deletion_timestamp.is_some() => Ok(Action::await_change()),
        Ok(false) => apply(&cfg, &ctx).await,
        Err(e) => Err(e),
    };
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    let key = ObjectRef::from_obj(cfg.as_ref());
    let outcome = match result {
        Ok(action) => {
            ctx.failures.reset(&capwin_runtime::ref_key(&key));
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
                Some(d) => Action::requeue(backoff(&ctx, &key, d)),
                None => Action::await_change(),
            });
        }
        Err(e) => Err(e),
    };
    let label = if outcome.is_ok() { "success" } else { "error" };
    ctx.metrics.reconciles.get_or_create(&ResultLabels { controller: "bootstrap".into(), result: label.into() }).inc();
    outcome
}

/// Removes [`FINALIZER`] from a config an earlier version added it to, deleting the join token
/// first when the config is being deleted. True when it wrote (the next event continues).
async fn retire_legacy_finalizer(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<bool, Error> {
    let finalizers = cfg.finalizers();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(false);
    }
    if cfg.metadata.deletion_timestamp.is_some() {
        cleanup(cfg, ctx).await?;
    }
    let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    // The resourceVersion makes it a compare-and-swap: another writer's finalizer is never lost.
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": cfg.resource_version()}});
    let api: Api<WindowsKubeadmConfig> = Api::namespaced(ctx.client.clone(), &cfg.namespace().unwrap_or_default());
    api.patch(&cfg.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(true)
}

/// Doubles the wait on each consecutive failure of the same object, from `base` up to four
/// times `base`: each reason's base fits what it waits for (CAPI writes a Cluster's Secrets
/// seconds after its infrastructure, an identity is fixed by a person), and the watches wake the
/// config as soon as the input appears; the requeue is only the safety net.
fn backoff(ctx: &Context, key: &ObjectRef<WindowsKubeadmConfig>, base: Duration) -> Duration {
    ctx.failures.next(&capwin_runtime::ref_key(key), base)
}

/// Requeue policy for errors that were not a recorded blocking condition.
pub fn error_policy(cfg: Arc<WindowsKubeadmConfig>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(config = %cfg.name_any(), namespace = cfg.namespace().unwrap_or_default(), error = %err, "reconcile failed");
    ctx.metrics.errors.get_or_create(&ReasonLabels { controller: "bootstrap".into(), reason: "Error".into() }).inc();
    Action::requeue(backoff(&ctx, &ObjectRef::from_obj(cfg.as_ref()), capwin_runtime::Backoff::API_ERROR))
}

async fn apply(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<Action, Error> {
    match produce(cfg, ctx).await {
        Ok(action) => Ok(action),
        Err(Error::Blocked(b)) => {
            record_blocked(cfg, ctx, &b).await?;
            Err(Error::Blocked(b))
        }
        Err(e) => Err(e),
    }
}

/// Writes `Ready=False` with the reason, and an event when the reason is new.
async fn record_blocked(cfg: &WindowsKubeadmConfig, ctx: &Context, b: &Blocked) -> Result<(), Error> {
    let mut status = cfg.status.clone().unwrap_or_default();
    let before = conditions::reason(&status.conditions, "Ready").map(String::from);
    let now = now_rfc3339();
    let generation = cfg.metadata.generation;
    let paused = b.reason == "Paused";
    conditions::set(
        &mut status.conditions,
        "Paused",
        paused,
        if paused { "Paused" } else { "NotPaused" },
        if paused { &b.message } else { "" },
        generation,
        &now,
    );
    if !paused {
        let data_ok = status.initialization.as_ref().and_then(|i| i.data_secret_created) == Some(true);
        conditions::set(
            &mut status.conditions,
            "Ready",
            data_ok && b.reason == "Joined",
            b.reason,
            &b.message,
            generation,
            &now,
        );
        if !data_ok {
            conditions::set(
                &mut status.conditions,
                "DataSecretAvailable",
                false,
                b.reason,
                &b.message,
                generation,
                &now,
            );
        }
    }
    patch_status(cfg, ctx, &status).await?;
    if before.as_deref() != Some(b.reason) && !paused {
        publish(ctx, cfg, EventType::Warning, b.reason, &b.message).await;
    }
    Ok(())
}

async fn patch_status(
    cfg: &WindowsKubeadmConfig,
    ctx: &Context,
    status: &WindowsKubeadmConfigStatus,
) -> Result<(), Error> {
    let uid = cfg.uid().unwrap_or_default();
    if cfg.status.as_ref() == Some(status) || ctx.written.already_written(&uid, status) {
        return Ok(());
    }
    let api: Api<WindowsKubeadmConfig> = Api::namespaced(ctx.client.clone(), &cfg.namespace().unwrap_or_default());
    api.patch_status(&cfg.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    ctx.written.written(&uid, status);
    Ok(())
}

async fn publish(ctx: &Context, cfg: &WindowsKubeadmConfig, type_: EventType, reason: &str, note: &str) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cfg.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

/// A Secret from the cache of labelled Secrets; one without the `cluster.x-k8s.io/cluster-name`
/// label is outside the cache and is read by GET.
async fn cached_secret(ctx: &Context, ns: &str, name: &str) -> Result<Option<Secret>, Error> {
    if let Some(s) = secret_in_cache(ctx, ns, name).await {
        return Ok(Some(s));
    }
    Ok(Api::<Secret>::namespaced(ctx.client.clone(), ns).get_opt(name).await?)
}

/// What the Secret cache keeps of a data Secret's payload: a digest, not the bytes (a thousand
/// payloads of tens of KiB each would be most of the manager's memory). Only this controller's
/// data Secrets are slimmed; the CA and kubeconfig Secrets are read in full.
const CACHED_DIGEST_PREFIX: &[u8] = b"capwin-cache-digest:";

fn slim_secret(s: &mut Secret) {
    capwin_runtime::strip_managed_fields(s);
    let ours = s.annotations().contains_key(INPUTS_ANNOTATION)
        || s.annotations().contains_key(TOKEN_ID_ANNOTATION)
        || s.owner_references().iter().any(|o| o.kind == "WindowsKubeadmConfig");
    if let Some(v) = s.data.as_mut().and_then(|d| d.get_mut("value"))
        && ours
    {
        let digest = capwin_runtime::hash_of(&v.0.as_slice());
        v.0 = [CACHED_DIGEST_PREFIX, format!("{digest:016x}").as_bytes()].concat();
    }
}

/// The digest of a data Secret's payload: the cache's digest, or of the bytes a GET returned.
fn value_digest(s: &Secret) -> Option<u64> {
    let v = s.data.as_ref()?.get("value")?.0.as_slice();
    match v.strip_prefix(CACHED_DIGEST_PREFIX) {
        Some(hex) => u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok(),
        None => Some(capwin_runtime::hash_of(&v)),
    }
}

/// A labelled Secret as the cache holds it, once the Secret watch has listed.
async fn secret_in_cache(ctx: &Context, ns: &str, name: &str) -> Option<Secret> {
    ctx.secrets.wait_until_ready().await.ok()?;
    ctx.secrets.get(&ObjectRef::new(name).within(ns)).map(|s| s.as_ref().clone())
}

/// Everything up to and including the data Secret and status.
async fn produce(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<Action, Error> {
    let ns = cfg.namespace().unwrap_or_default();
    let name = cfg.name_any();

    // Owner Machine and its Cluster.
    let owner = cfg
        .owner_references()
        .iter()
        .find(|o| o.kind == "Machine" && o.api_version.starts_with("cluster.x-k8s.io/"))
        .cloned();
    let Some(owner) = owner else {
        return Err(blocked(
            "WaitingForMachineOwner",
            "no CAPI Machine owns this config yet; nothing to do until one does",
            None,
        ));
    };
    let Some(machine_obj) = ctx.cache.machine(&ns, &owner.name).await else {
        return Err(blocked(
            "WaitingForMachineOwner",
            format!("the owning Machine {} does not exist", owner.name),
            Some(Duration::from_secs(30)),
        ));
    };
    let machine = Machine(&machine_obj);
    let Some(cluster_name) = machine.cluster_name().map(String::from) else {
        return Err(blocked("MissingClusterName", format!("Machine {} has no spec.clusterName", owner.name), None));
    };
    let Some(cluster_obj) = ctx.cache.cluster(&ns, &cluster_name).await else {
        return Err(blocked(
            "WaitingForCluster",
            format!("Cluster {cluster_name} does not exist"),
            Some(Duration::from_secs(30)),
        ));
    };
    let cluster = Cluster(&cluster_obj);
    let annotated = cfg.annotations().contains_key(views::PAUSED_ANNOTATION);
    if cluster.paused() || annotated {
        let why = if annotated {
            "the config carries the cluster.x-k8s.io/paused annotation"
        } else {
            "Cluster.spec.paused is true"
        };
        return Err(blocked("Paused", why, None));
    }

    // After `clusterctl move` the Machine knows the Secret but our status is empty: re-derive it.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let created = cfg.status.as_ref().and_then(|s| s.initialization.as_ref()).and_then(|i| i.data_secret_created);
    let existing = match secret_in_cache(ctx, &ns, &name).await {
        Some(s) => Some(s),
        // Status says the Secret was written but the cache has not seen it yet (it lags our
        // own write by a watch event): only a fresh read tells "not yet seen" from "gone", and
        // a wrong "gone" would mint a second token.
        None if created == Some(true) => secrets.get_opt(&name).await?,
        None => None,
    };
    let provisioned = machine.infrastructure_provisioned();

    let ready = plan::gates(&Observed {
        control_plane_machine: machine.is_control_plane(),
        infrastructure_provisioned: cluster.infrastructure_provisioned(),
        control_plane_initialized: cluster.control_plane_initialized(),
        endpoint: cluster.endpoint(),
        version: machine.version().map(String::from),
        infrastructure_kind: machine.infrastructure_kind().map(String::from),
    });
    let ready = match ready {
        Ok(r) => r,
        // Once data exists, only token upkeep matters; the gates were passed before.
        Err(b) if existing.is_none() => return Err(Error::Blocked(b)),
        Err(_) => plan::Ready {
            endpoint: cluster.endpoint().unwrap_or_default(),
            version: machine.version().unwrap_or_default().to_string(),
            cloud: if machine.infrastructure_kind().unwrap_or_default().starts_with("AWS") {
                capwin_payload::Cloud::Aws
            } else {
                capwin_payload::Cloud::Azure
            },
        },
    };

    let ca_hashes = cluster_ca_hashes(ctx, &ns, &cluster_name).await?;
    let workload = workload_client(ctx, &ns, &cluster_name).await?;
    let tokens: Api<Secret> = Api::namespaced(workload, "kube-system");

    // The token: from the data Secret when one exists.
    let current = existing.as_ref().and_then(stored_token);
    if machine.has_node()
        && let Some(existing) = &existing
    {
        return after_join(cfg, ctx, &machine, &cluster, &secrets, existing, &tokens, current, ca_hashes, ready).await;
    }
    // Only `after_join` removes the token key: a data Secret without it belongs to a Node that
    // joined. After `clusterctl move` the Machine's status (its nodeRef) is empty until CAPI finds
    // the Node again; the config stays Joined and neither mints a token nor rewrites the Secret.
    if let Some(s) = &existing
        && s.data.as_ref().is_some_and(|d| d.contains_key("value") && !d.contains_key(TOKEN_KEY))
    {
        ensure_owner(cfg, &secrets, s).await?;
        return finish(cfg, ctx, true, &name).await;
    }
    let known_expiry = current.as_ref().and_then(|t| ctx.expiry_of(&t.id));
    let workload_expiry = match (&current, known_expiry) {
        (Some(_), Some(exp)) => Some(Some(exp)),
        // Not set by this process (a restart, a move): read it.
        (Some(t), None) => tokens
            .get_opt(&token::secret_name(&t.id))
            .await
            .map_err(|e| unreachable_workload(&cluster_name, e))?
            .as_ref()
            .map(token::expiration),
        (None, _) => None,
    };
    let action = plan::token_action(
        TokenState {
            have_token: current.is_some(),
            workload_expiry,
            vm_provisioned: provisioned,
            node_joined: machine.has_node(),
        },
        SystemTime::now(),
        ctx.settings.token_ttl,
    );
    let expires = SystemTime::now() + ctx.settings.token_ttl;
    let description = format!("capwin: join token for {ns}/{name}");
    let tok = match (action, current) {
        (TokenAction::Mint | TokenAction::Rotate, _) => {
            let t = token::generate().map_err(|e| Error::Random(e.to_string()))?;
            tokens
                .create(&PostParams::default(), &token::secret(&t, expires, &description))
                .await
                .map_err(|e| unreachable_workload(&cluster_name, e))?;
            ctx.metrics.token("minted");
            ctx.set_expiry(&t.id, Some(expires));
            // The first token is told in the DataSecretWritten event; a replacement gets its own.
            if existing.is_some() {
                publish(
                    ctx,
                    cfg,
                    EventType::Normal,
                    "BootstrapTokenCreated",
                    &format!("created bootstrap token {} in the workload cluster", t.id),
                )
                .await;
            }
            t
        }
        (TokenAction::Recreate, Some(t)) => {
            tokens
                .create(&PostParams::default(), &token::secret(&t, expires, &description))
                .await
                .map_err(|e| unreachable_workload(&cluster_name, e))?;
            ctx.metrics.token("recreated");
            ctx.set_expiry(&t.id, Some(expires));
            t
        }
        (TokenAction::Refresh, Some(t)) => {
            let patch = json!({"data": {"expiration": base64_of(&token::rfc3339(expires))}});
            tokens
                .patch(&token::secret_name(&t.id), &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(|e| unreachable_workload(&cluster_name, e))?;
            ctx.metrics.token("refreshed");
            ctx.set_expiry(&t.id, Some(expires));
            t
        }
        // A joined machine with a data Secret never gets here (`after_join` deletes its token).
        (_, Some(t)) => t,
        (_, None) => {
            return Err(blocked(
                "InternalError",
                "no token and nothing to mint one from",
                Some(Duration::from_secs(10)),
            ));
        }
    };

    // Rendered already from these very inputs: nothing to read or render.
    let inputs = cluster_inputs(&ready, ca_hashes, &cluster);
    let digest = inputs_digest(cfg, &inputs, &tok, ready.cloud);
    let token_changed = existing.as_ref().and_then(stored_token).as_ref() != Some(&tok);
    if let Some(s) = &existing
        && !token_changed
        && s.annotations().get(INPUTS_ANNOTATION) == Some(&digest)
    {
        ensure_owner(cfg, &secrets, s).await?;
        return finish(cfg, ctx, machine.has_node(), &name).await;
    }

    // Inputs the payload needs from Secrets.
    let secret_files = resolve_content_from(cfg, ctx).await?;
    let domain_join = resolve_domain_join(cfg, ctx).await?;
    let rendered = capwin_payload::render(&RenderInput {
        spec: &cfg.spec,
        secret_file_contents: &secret_files,
        domain_join_secret: domain_join.as_ref(),
        cluster: &inputs,
        token: &tok,
        cloud: ready.cloud,
    });
    let payload = match rendered {
        Ok(p) => p,
        Err(e @ RenderError::Invalid(_)) if existing.is_none() || !provisioned => {
            return Err(blocked("InvalidSpec", e.to_string(), Some(Duration::from_secs(60))));
        }
        Err(e @ RenderError::TooLarge { .. }) if existing.is_none() || !provisioned => {
            return Err(blocked("PayloadTooLarge", e.to_string(), Some(Duration::from_secs(60))));
        }
        Err(_) => {
            // The VM already has its payload; a later spec change cannot reach it anyway.
            return finish(cfg, ctx, machine.has_node(), &name).await;
        }
    };
    ctx.metrics.payload_bytes.observe(payload.bytes.len() as f64);

    let old_value = existing.as_ref().and_then(value_digest);
    let digest_changed = existing.as_ref().and_then(|s| s.annotations().get(INPUTS_ANNOTATION)) != Some(&digest);
    if plan::should_write(old_value, capwin_runtime::hash_of(&payload.bytes.as_slice()), provisioned)
        || (token_changed && !provisioned)
        || existing.is_none()
    {
        write_data_secret(cfg, &secrets, &cluster_name, &payload.bytes, &tok, &digest, existing.is_some()).await?;
        publish(
            ctx,
            cfg,
            EventType::Normal,
            "DataSecretWritten",
            &format!(
                "wrote bootstrap data Secret {name} ({} bytes, {}) with bootstrap token {}",
                payload.bytes.len(),
                ready.cloud.as_str(),
                tok.id
            ),
        )
        .await;
    } else if let Some(s) = &existing {
        ensure_owner(cfg, &secrets, s).await?;
        if digest_changed && !provisioned {
            // Same bytes from new inputs (a spec edit that changes nothing rendered): remember
            // the inputs, so the next pass neither reads nor renders.
            let patch = json!({"metadata": {"annotations": {INPUTS_ANNOTATION: digest}}});
            secrets.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
    }
    finish(cfg, ctx, machine.has_node(), &name).await
}

/// The digest of what a payload is rendered from: the spec, the cluster's inputs, the token's
/// id (never its secret) and the cloud. Secrets named by the spec are not in it: like CABPK, a
/// changed file Secret reaches machines rendered after a spec change, not existing ones.
fn inputs_digest(
    cfg: &WindowsKubeadmConfig,
    inputs: &ClusterInputs,
    tok: &BootstrapToken,
    cloud: capwin_payload::Cloud,
) -> String {
    use sha2::Digest;
    let spec = serde_json::to_string(&cfg.spec).unwrap_or_default();
    let text = format!("{spec}\n{inputs:?}\n{}\n{}", tok.id, cloud.as_str());
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

impl Context {
    fn expiry_of(&self, token_id: &str) -> Option<SystemTime> {
        self.token_expiry.lock().unwrap_or_else(|p| p.into_inner()).get(token_id).copied()
    }

    fn set_expiry(&self, token_id: &str, expiry: Option<SystemTime>) {
        let mut m = self.token_expiry.lock().unwrap_or_else(|p| p.into_inner());
        match expiry {
            Some(e) => m.insert(token_id.to_string(), e),
            None => m.remove(token_id),
        };
    }
}

/// The Node has joined: the join token is deleted from the workload cluster, and the data Secret
/// keeps nothing live. Its `bootstrap-token` key goes, and `value` is rendered again with
/// [`token::placeholder`] in place of the token, so no copy of a join credential outlives its use
/// here (the VM's own copy, in its user data / custom data, names a token that no longer exists).
#[allow(clippy::too_many_arguments)]
async fn after_join(
    cfg: &WindowsKubeadmConfig,
    ctx: &Context,
    machine: &Machine<'_>,
    cluster: &Cluster<'_>,
    secrets: &Api<Secret>,
    existing: &Secret,
    tokens: &Api<Secret>,
    current: Option<BootstrapToken>,
    ca_hashes: Vec<String>,
    ready: plan::Ready,
) -> Result<Action, Error> {
    let name = cfg.name_any();
    let cluster_name = machine.cluster_name().unwrap_or_default().to_string();
    let data = existing.data.as_ref();
    let has_token_key = data.is_some_and(|d| d.contains_key(TOKEN_KEY));
    if !has_token_key {
        // Scrubbed on an earlier pass: no Secret reads and no render again.
        return finish(cfg, ctx, machine.has_node(), &name).await;
    }
    if let Some(t) = &current {
        match tokens.delete(&token::secret_name(&t.id), &DeleteParams::default()).await {
            Ok(_) => {
                ctx.metrics.token("deleted");
                ctx.set_expiry(&t.id, None);
                publish(
                    ctx,
                    cfg,
                    EventType::Normal,
                    "BootstrapTokenDeleted",
                    &format!("the Node joined; deleted bootstrap token {}", t.id),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(unreachable_workload(&cluster_name, e)),
        }
    }
    let id =
        current.as_ref().map(|t| t.id.clone()).or_else(|| existing.annotations().get(TOKEN_ID_ANNOTATION).cloned());
    let placeholder = token::placeholder(id.as_deref().unwrap_or("000000"));
    let secret_files = resolve_content_from(cfg, ctx).await.unwrap_or_default();
    let inputs = cluster_inputs(&ready, ca_hashes, cluster);
    // A spec that no longer renders (changed after the VM got its payload) keeps the old value:
    // its token is deleted all the same.
    let rendered = capwin_payload::render(&RenderInput {
        spec: &cfg.spec,
        secret_file_contents: &secret_files,
        // The domain join account has served too: the scrubbed payload names none.
        domain_join_secret: cfg.spec.windows.domain_join.as_ref().map(|_| &*DOMAIN_JOIN_PLACEHOLDER),
        cluster: &inputs,
        token: &placeholder,
        cloud: ready.cloud,
    })
    .ok()
    .map(|p| p.bytes);
    let old_value = value_digest(existing);
    let rendered_digest = rendered.as_ref().map(|r| capwin_runtime::hash_of(&r.as_slice()));
    if plan::scrub_after_join(has_token_key, old_value, rendered_digest) {
        let mut patch = json!({"data": {TOKEN_KEY: null}});
        if let Some(v) = &rendered {
            patch["data"]["value"] = json!(ByteString(v.clone()));
        }
        secrets.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    finish(cfg, ctx, machine.has_node(), &name).await
}

/// Status for a config whose data Secret exists, and when to look again.
async fn finish(cfg: &WindowsKubeadmConfig, ctx: &Context, joined: bool, name: &str) -> Result<Action, Error> {
    let mut status = cfg.status.clone().unwrap_or_default();
    let now = now_rfc3339();
    let generation = cfg.metadata.generation;
    status.data_secret_name = Some(name.to_string());
    status.initialization = Some(BootstrapInitialization { data_secret_created: Some(true) });
    status.observed_generation = generation;
    conditions::set(&mut status.conditions, "DataSecretAvailable", true, "DataSecretAvailable", "", generation, &now);
    conditions::set(&mut status.conditions, "Paused", false, "NotPaused", "", generation, &now);
    let (reason, message) = if joined {
        ("Joined", "the Node has joined; the join token is deleted")
    } else {
        ("DataSecretAvailable", "bootstrap data is ready; waiting for the Node to join")
    };
    conditions::set(&mut status.conditions, "Ready", true, reason, message, generation, &now);
    patch_status(cfg, ctx, &status).await?;
    Ok(if joined { Action::await_change() } else { Action::requeue(ctx.settings.token_ttl / 3) })
}

fn stored_token(s: &Secret) -> Option<BootstrapToken> {
    let raw = s.data.as_ref()?.get(TOKEN_KEY)?;
    BootstrapToken::parse(std::str::from_utf8(&raw.0).ok()?).ok()
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unreachable_workload(cluster: &str, e: kube::Error) -> Error {
    let detail = match &e {
        kube::Error::Api(s) => format!("{} ({})", s.reason, s.code),
        _ => "connection failed".into(),
    };
    blocked(
        "WorkloadClusterUnreachable",
        format!("the workload cluster of {cluster} did not accept the token request: {detail}"),
        Some(Duration::from_secs(15)),
    )
}

async fn cluster_ca_hashes(ctx: &Context, ns: &str, cluster: &str) -> Result<Vec<String>, Error> {
    let name = format!("{cluster}-ca");
    let Some(s) = cached_secret(ctx, ns, &name).await? else {
        return Err(blocked("MissingCASecret", format!("Secret {name} does not exist"), Some(Duration::from_secs(15))));
    };
    let Some(crt) = s.data.as_ref().and_then(|d| d.get("tls.crt")) else {
        return Err(blocked("InvalidCASecret", format!("Secret {name} has no tls.crt"), Some(Duration::from_secs(30))));
    };
    ca::ca_cert_hashes(&crt.0).map_err(|e| {
        blocked("InvalidCASecret", format!("Secret {name} key tls.crt: {e}"), Some(Duration::from_secs(30)))
    })
}

async fn workload_client(ctx: &Context, ns: &str, cluster: &str) -> Result<Client, Error> {
    let name = format!("{cluster}-kubeconfig");
    let Some(s) = cached_secret(ctx, ns, &name).await? else {
        return Err(blocked(
            "MissingKubeconfigSecret",
            format!("Secret {name} does not exist"),
            Some(Duration::from_secs(15)),
        ));
    };
    let version = s.metadata.resource_version.clone().unwrap_or_default();
    let key = (ns.to_string(), cluster.to_string());
    if let Some((v, c)) = ctx.workload.0.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
        && *v == version
    {
        return Ok(c.clone());
    }
    let invalid = |why: String| {
        blocked("InvalidKubeconfigSecret", format!("Secret {name} key value: {why}"), Some(Duration::from_secs(30)))
    };
    let raw = s.data.as_ref().and_then(|d| d.get("value")).ok_or_else(|| invalid("missing".into()))?;
    let text = std::str::from_utf8(&raw.0).map_err(|_| invalid("not UTF-8".into()))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text).map_err(|_| invalid("not a kubeconfig".into()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|_| invalid("unusable kubeconfig".into()))?;
    let client = Client::try_from(config).map_err(|_| invalid("cannot build a client from it".into()))?;
    ctx.workload.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (version, client.clone()));
    Ok(client)
}

/// The `files[].contentFrom` Secrets' contents: from the cache when labelled with the cluster
/// name (as capwin's and CAPI's are), else by GET.
async fn resolve_content_from(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<BTreeMap<usize, Vec<u8>>, Error> {
    let ns = cfg.namespace().unwrap_or_default();
    let mut out = BTreeMap::new();
    for (i, f) in cfg.spec.files.iter().enumerate() {
        let Some(from) = &f.content_from else { continue };
        let r = &from.secret;
        let Some(s) = cached_secret(ctx, &ns, &r.name).await? else {
            return Err(blocked(
                "MissingFileSecret",
                format!("spec.files[{i}].contentFrom: Secret {} does not exist", r.name),
                Some(Duration::from_secs(30)),
            ));
        };
        let Some(v) = s.data.as_ref().and_then(|d| d.get(&r.key)) else {
            return Err(blocked(
                "MissingFileSecret",
                format!("spec.files[{i}].contentFrom: Secret {} has no key {}", r.name, r.key),
                Some(Duration::from_secs(30)),
            ));
        };
        out.insert(i, v.0.clone());
    }
    Ok(out)
}

/// What the payload needs from the Cluster.
fn cluster_inputs(ready: &plan::Ready, ca_cert_hashes: Vec<String>, cluster: &Cluster<'_>) -> ClusterInputs {
    ClusterInputs {
        api_server_endpoint: ready.endpoint.clone(),
        ca_cert_hashes,
        kubernetes_version: ready.version.clone(),
        pod_cidrs: cluster.pod_cidrs(),
        service_cidrs: cluster.service_cidrs(),
    }
}

/// The domain join account of `spec.windows.domainJoin`, read from its Secret like
/// `files[].contentFrom`. Errors name the Secret and key, never a value.
async fn resolve_domain_join(
    cfg: &WindowsKubeadmConfig,
    ctx: &Context,
) -> Result<Option<capwin_payload::DomainJoinSecret>, Error> {
    let Some(join) = &cfg.spec.windows.domain_join else { return Ok(None) };
    let r = &join.credentials_secret;
    let missing = |what: String| {
        blocked(
            "MissingDomainJoinSecret",
            format!("spec.windows.domainJoin.credentialsSecret: {what}"),
            Some(Duration::from_secs(30)),
        )
    };
    let Some(s) = cached_secret(ctx, &cfg.namespace().unwrap_or_default(), &r.name).await? else {
        return Err(missing(format!("Secret {} does not exist", r.name)));
    };
    let key = |k: &str| s.data.as_ref().and_then(|d| d.get(k)).map(|v| v.0.clone());
    let (Some(username), Some(password)) = (key(r.username_key()), key(r.password_key())) else {
        return Err(missing(format!("Secret {} needs the keys {} and {}", r.name, r.username_key(), r.password_key())));
    };
    Ok(Some(capwin_payload::DomainJoinSecret { username, password }))
}

/// What a scrubbed payload carries in place of the domain join account after the join.
static DOMAIN_JOIN_PLACEHOLDER: std::sync::LazyLock<capwin_payload::DomainJoinSecret> =
    std::sync::LazyLock::new(|| capwin_payload::DomainJoinSecret {
        username: b"redacted\\redacted".to_vec(),
        password: b"redacted".to_vec(),
    });

fn owner_ref(cfg: &WindowsKubeadmConfig) -> OwnerReference {
    let mut o = cfg.controller_owner_ref(&()).expect("a stored object has a uid");
    o.block_owner_deletion = Some(true);
    o
}

async fn write_data_secret(
    cfg: &WindowsKubeadmConfig,
    secrets: &Api<Secret>,
    cluster: &str,
    payload: &[u8],
    tok: &BootstrapToken,
    digest: &str,
    exists: bool,
) -> Result<(), Error> {
    let name = cfg.name_any();
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(views::CLUSTER_NAME_LABEL.to_string(), cluster.to_string())])),
            annotations: Some(BTreeMap::from([
                (TOKEN_ID_ANNOTATION.to_string(), tok.id.clone()),
                (INPUTS_ANNOTATION.to_string(), digest.to_string()),
                (WINDOWS_VERSION_ANNOTATION.to_string(), windows_version(cfg)),
            ])),
            owner_references: Some(vec![owner_ref(cfg)]),
            ..Default::default()
        },
        type_: Some("cluster.x-k8s.io/secret".into()),
        data: Some(BTreeMap::from([
            ("value".to_string(), ByteString(payload.to_vec())),
            ("format".to_string(), ByteString(capwin_payload::FORMAT.as_bytes().to_vec())),
            (TOKEN_KEY.to_string(), ByteString(tok.expose().into_bytes())),
        ])),
        ..Default::default()
    };
    if exists {
        let patch = serde_json::to_value(&secret).expect("a Secret serialises");
        secrets.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        return Ok(());
    }
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = serde_json::to_value(&secret).expect("a Secret serialises");
            secrets.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Re-asserts our controller owner reference on an existing data Secret (as CABPK does).
async fn ensure_owner(cfg: &WindowsKubeadmConfig, secrets: &Api<Secret>, s: &Secret) -> Result<(), Error> {
    let uid = cfg.uid();
    if s.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true)) {
        return Ok(());
    }
    let mut refs: Vec<OwnerReference> =
        s.owner_references().iter().filter(|o| o.controller != Some(true)).cloned().collect();
    refs.push(owner_ref(cfg));
    secrets
        .patch(&cfg.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"ownerReferences": refs}})))
        .await?;
    Ok(())
}

/// A data Secret that still held a join token is gone (its config was deleted before the Node
/// joined, and the Secret with it through its owner reference, or someone deleted it): delete the
/// token from the workload cluster too, best effort (it expires on its own otherwise). This is
/// what the old finalizer did, without a write on every config.
async fn forget_token(ctx: &Context, data: &Secret) {
    let Some(tok) = stored_token(data) else { return };
    let ns = data.namespace().unwrap_or_default();
    let cluster = data.labels().get(views::CLUSTER_NAME_LABEL).cloned().unwrap_or_default();
    ctx.set_expiry(&tok.id, None);
    match workload_client(ctx, &ns, &cluster).await {
        Ok(w) => {
            let tokens: Api<Secret> = Api::namespaced(w, "kube-system");
            match tokens.delete(&token::secret_name(&tok.id), &DeleteParams::default()).await {
                Ok(_) => ctx.metrics.token("deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                // The cluster may be going away too; the token expires on its own.
                Err(e) => {
                    tracing::info!(secret = %data.name_any(), error = %e, "could not delete the join token; it will expire")
                }
            }
        }
        Err(e) => {
            tracing::info!(secret = %data.name_any(), error = %e, "workload cluster unavailable; the join token will expire")
        }
    }
}

/// On deletion of a config that still carries the old finalizer: its token goes as with any
/// other config ([`forget_token`]), here before the finalizer is removed.
async fn cleanup(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<Action, Error> {
    let ns = cfg.namespace().unwrap_or_default();
    if let Some(data) = cached_secret(ctx, &ns, &cfg.name_any()).await? {
        forget_token(ctx, &data).await;
    }
    Ok(Action::await_change())
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
        slim_secret,
        move |s: &Secret| {
            if s.annotations().contains_key(TOKEN_ID_ANNOTATION) {
                let (ctx, s) = (forget.clone(), s.clone());
                tokio::spawn(async move { forget_token(&ctx, &s).await });
            }
        },
    );
    let output = controller
        .owns_stream(owned)
        .watches_stream_with(
            capwin_runtime::watch_into_with(
                machines,
                wc.clone(),
                writers.machines,
                "Machine",
                capwin_runtime::slim_machine,
                |_| {},
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data_secret(value: &[u8], annotated: bool) -> Secret {
        let mut s = Secret {
            data: Some(BTreeMap::from([
                ("value".to_string(), ByteString(value.to_vec())),
                (TOKEN_KEY.to_string(), ByteString(b"abcdef.0123456789abcdef".to_vec())),
            ])),
            ..Default::default()
        };
        if annotated {
            s.metadata.annotations = Some(BTreeMap::from([(INPUTS_ANNOTATION.to_string(), "d".to_string())]));
        }
        s
    }

    #[test]
    fn the_cache_keeps_a_payload_digest_that_compares_like_the_bytes() {
        let payload = vec![7u8; 40_000];
        let fetched = data_secret(&payload, true);
        let mut cached = fetched.clone();
        slim_secret(&mut cached);
        let kept = &cached.data.as_ref().unwrap()["value"].0;
        assert!(kept.len() < 64, "the payload is not kept: {} bytes", kept.len());
        assert_eq!(value_digest(&cached), value_digest(&fetched), "cached and fetched compare alike");
        assert_eq!(value_digest(&fetched), Some(capwin_runtime::hash_of(&payload.as_slice())));
        assert_ne!(value_digest(&cached), value_digest(&data_secret(&[8u8; 40_000], true)));
        assert!(cached.data.as_ref().unwrap().contains_key(TOKEN_KEY), "other keys stay");

        // Not a data Secret of this controller (a kubeconfig): kept whole.
        let mut kubeconfig = data_secret(b"apiVersion: v1", false);
        slim_secret(&mut kubeconfig);
        assert_eq!(kubeconfig.data.unwrap()["value"].0, b"apiVersion: v1");
    }
}
