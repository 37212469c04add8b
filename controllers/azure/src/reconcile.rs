//! The `AzureWindowsMachine` reconciler (CAPI v1beta2 infrastructure-machine contract): waits for
//! the bootstrap data, creates the NIC and the VM idempotently, reports `spec.providerID`,
//! addresses and `status.initialization.provisioned`, mirrors the VM's state in `Ready`, reads
//! the boot diagnostics serial log until the Node exists, and on deletion deletes the VM, NIC
//! and OS disk and verifies each is gone.
//!
//! Idempotency: the VM name is chosen once and kept in an annotation (metadata survives
//! `clusterctl move`) before anything is created; the NIC is created only when a GET finds none
//! (a NIC of that name that is not this machine's moves the machine to its next candidate name);
//! the VM is created with `If-None-Match: *`, so a manager killed at any point converges on the
//! one VM it started, and a VM of that name that is not this machine's is never touched (its
//! 412 moves the machine to its next candidate name, recorded before anything else is made).
//!
//! Cloud reads per create: the image and subnet probes are answered from a per-credential cache
//! shared by the fleet ([`ProbeCache`]); the VM name is recorded without a look-up; a NIC create
//! answered `Succeeded` is not polled; the VM create is not polled in the reconcile: the VM's
//! `provisioningState`, which ARM keeps authoritative, is read at ARM's advised interval
//! (`Retry-After`), and the NIC's private IP comes from the NIC's create answer. No worker is
//! held for minutes; deletions still follow their operations for a short budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capwin_api::azure::{AzureWindowsMachine, AzureWindowsMachineTemplate};
use capwin_api::common::InfraMachineStatus;
use capwin_api::common::{
    ConditionStatus, InfraMachineInitialization, MachineAddress, MachineAddressType, NodeInfo, capi_resource as capi,
    now_rfc3339 as now, set_condition,
};
use capwin_infra::diagnostics::{self, Slots};
use capwin_infra::machine::{self, Created, Deletion, MachineCloud, Note, Owners, Report};
use capwin_infra::status::Writer;
use capwin_infra::views::ClusterView;
pub use capwin_infra::{Error, blocked};
use capwin_infra::{contract, watch};
use capwin_payload::serial;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::arm::{self, Arm, ArmError, Counting, Endpoint, HttpArm, OperationStatus};
use crate::credentials::{self, CredentialSource, IdentityPlan, IdentityProblem};
use crate::metrics::Metrics;
use crate::model::{self, Placement, VmReading, api};

/// Finalizer holding the object until its VM, NIC and disk are gone.
pub const FINALIZER: &str = "infrastructure.cluster.x-k8s.io/capwin-azure";
/// Annotation with the ARM ID of the VM chosen for this machine (set before it is created).
pub const VM_ID_ANNOTATION: &str = "capwin.cluster.x-k8s.io/vm-id";
/// How long one reconcile follows a long-running operation before requeueing.
const LRO_BUDGET: Duration = Duration::from_secs(20);

/// An ARM client with its call counter.
pub type ArmClient = Arc<Counting<HttpArm>>;

/// Where ARM and Entra ID are; the manager's credential comes from its environment.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoint: Endpoint,
    /// Entra ID authority host override (a stand-in or a sovereign cloud).
    pub authority: Option<String>,
    pub namespace: Option<String>,
    /// The projected service-account token for workload identity (`AZURE_FEDERATED_TOKEN_FILE`).
    pub federated_token_file: Option<String>,
    /// Tenant for `azure.json` when no identity names one (`AZURE_TENANT_ID`).
    pub tenant: Option<String>,
}

/// What the reconciler shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// The Machines and Clusters the controller watches, read instead of fetched.
    pub cache: capwin_infra::cache::CapiCache,
    /// The status last written per machine.
    written: capwin_infra::WriteMemo,
    /// Consecutive blocks per machine.
    backoff: capwin_infra::Backoff,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// The manager's own ARM client, or why it could not be built.
    own: Result<ArmClient, String>,
    /// ARM clients per `AzureClusterIdentity`, rebuilt when it or its Secret changes.
    identities: Mutex<HashMap<String, (String, ArmClient)>>,
    /// When each machine's serial log was last read (by machine UID).
    serial_reads: Slots,
    /// When each machine's VM was last read (by machine UID), for [`vm_read_due`].
    vm_reads: Slots,
    /// Image and subnet existence per (ARM client, path), shared by every machine.
    probes: ProbeCache,
    /// VMs this manager created or adopted (by machine UID) until they leave `Creating`.
    created: Mutex<HashMap<String, CreatedVm>>,
}

/// What the create path knows about a VM it just created or adopted, kept in memory until the
/// VM is no longer being created (a restarted manager reads the VM instead: nothing here is
/// needed for correctness).
#[derive(Clone, Debug, PartialEq, Eq)]
struct CreatedVm {
    /// The VM's ARM ID (the machine's `vm-id` annotation when it was recorded).
    vm_id: String,
    /// Not read before this (ARM's advice after the PUT, then the interval after each read).
    next_read: Instant,
    /// How often a VM still `Creating` is read.
    interval: Duration,
    /// When ARM accepted this manager's create (`None` for an adopted VM).
    accepted: Option<Instant>,
    /// The NIC's private IP from the NIC's create answer or look-up, so the first report of a
    /// running VM needs no NIC read.
    ip: Option<String>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, own: CredentialSource, metrics: Arc<Metrics>) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter { controller: "capwin-azure".into(), instance: std::env::var("POD_NAME").ok() },
        );
        let own = build_client(&settings, &own, &metrics);
        if let Err(e) = &own {
            tracing::warn!(error = %e, "the manager's own Azure credential is unusable; machines need an identityRef");
        }
        Arc::new(Self {
            client,
            recorder,
            cache: Default::default(),
            written: Default::default(),
            backoff: Default::default(),
            settings,
            metrics,
            own,
            identities: Mutex::default(),
            serial_reads: Slots::default(),
            vm_reads: Slots::default(),
            probes: ProbeCache::default(),
            created: Mutex::default(),
        })
    }

    fn created(&self) -> std::sync::MutexGuard<'_, HashMap<String, CreatedVm>> {
        self.created.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ARM calls made through every client, by operation.
    pub fn call_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let mut all = self.own.as_ref().map(|c| c.counts()).unwrap_or_default();
        for (_, c) in self.identities.lock().unwrap_or_else(|p| p.into_inner()).values() {
            for (k, v) in c.counts() {
                *all.entry(k).or_default() += v;
            }
        }
        all
    }

    fn own_client(&self) -> Result<(String, ArmClient), Error> {
        self.own.clone().map(|c| (OWN_CLIENT.to_string(), c)).map_err(|e| {
            blocked(
                "CredentialsUnavailable",
                format!("the manager's Azure credential: {e}"),
                Some(Duration::from_secs(300)),
            )
        })
    }

    /// The ARM client for a machine: its `identityRef`, else its `AzureCluster`'s, else the
    /// manager's own. An identity is usable only from the namespaces it allows. The key names
    /// the credential (the identity and the versions of it and its Secret) for [`ProbeCache`].
    async fn arm_for(
        &self,
        m: &AzureWindowsMachine,
        azure_cluster: Option<&Value>,
    ) -> Result<(String, ArmClient), Error> {
        let ns = m.namespace().unwrap_or_default();
        let (name, id_ns, field) = match (&m.spec.identity_ref, azure_cluster.map(|a| &a["spec"]["identityRef"])) {
            (Some(r), _) => (r.name.clone(), r.namespace.clone().unwrap_or_else(|| ns.clone()), "spec.identityRef"),
            (None, Some(r)) if r["name"].as_str().is_some_and(|n| !n.is_empty()) => (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(&ns).to_string(),
                "AzureCluster spec.identityRef",
            ),
            _ => return self.own_client(),
        };
        let found =
            contract::cached_or_get(&self.cache, &self.client, &identity_resource(), Some(&id_ns), &name).await?;
        let Some(identity) = found else {
            return Err(blocked(
                "IdentityNotFound",
                format!("{field}: AzureClusterIdentity {id_ns}/{name} does not exist"),
                Some(Duration::from_secs(60)),
            ));
        };
        let identity = serde_json::to_value(&identity).unwrap_or_default();
        let namespace = contract::cached_or_get(&self.cache, &self.client, &namespace_resource(), None, &ns).await?;
        let labels = namespace
            .and_then(|n| n.metadata.labels)
            .map(|l| l.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
            .unwrap_or_default();
        if !credentials::namespace_allowed(&identity, &ns, &labels) {
            return Err(blocked(
                "IdentityNotAllowed",
                format!(
                    "{field}: namespace {ns} may not use AzureClusterIdentity {id_ns}/{name} (see its spec.allowedNamespaces)"
                ),
                Some(Duration::from_secs(60)),
            ));
        }
        let problem = |p: IdentityProblem| match p {
            IdentityProblem::NotAllowed(m) => blocked("IdentityNotAllowed", m, Some(Duration::from_secs(60))),
            IdentityProblem::Unsupported(m) => blocked("IdentityNotSupported", m, None),
            IdentityProblem::Invalid(m) => blocked("InvalidIdentity", m, Some(Duration::from_secs(60))),
        };
        let mut version = identity["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
        let source = match credentials::identity_plan(&identity, self.settings.federated_token_file.as_deref())
            .map_err(problem)?
        {
            IdentityPlan::ManagerOwn => return self.own_client(),
            IdentityPlan::Ready(source) => source,
            IdentityPlan::ClientSecret { tenant, client_id, secret_namespace, secret_name } => {
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &secret_namespace);
                let Some(s) = secrets.get_opt(&secret_name).await? else {
                    return Err(blocked(
                        "IdentitySecretNotFound",
                        format!(
                            "AzureClusterIdentity {id_ns}/{name}: Secret {secret_namespace}/{secret_name} does not exist"
                        ),
                        Some(Duration::from_secs(60)),
                    ));
                };
                version.push('/');
                version.push_str(&s.resource_version().unwrap_or_default());
                let secret = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get("clientSecret"))
                    .and_then(|v| String::from_utf8(v.0.clone()).ok())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        blocked(
                            "InvalidIdentity",
                            format!("AzureClusterIdentity {id_ns}/{name}: Secret {secret_namespace}/{secret_name} has no key clientSecret"),
                            Some(Duration::from_secs(60)),
                        )
                    })?;
                CredentialSource::ClientSecret { tenant, client_id, secret }
            }
        };
        let key = format!("{id_ns}/{name}");
        let keyed = |c: ArmClient| (format!("{key}@{version}"), c);
        if let Some((v, c)) = self.identities.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && *v == version
        {
            return Ok(keyed(c.clone()));
        }
        let client = build_client(&self.settings, &source, &self.metrics).map_err(|e| {
            blocked("InvalidIdentity", format!("AzureClusterIdentity {key}: {e}"), Some(Duration::from_secs(60)))
        })?;
        // Two machines may build a client at once: the first stored one wins, so no client (and
        // none of its call counts) is silently replaced.
        let mut identities = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        match identities.get(&key) {
            Some((v, existing)) if *v == version => Ok(keyed(existing.clone())),
            _ => {
                identities.insert(key.clone(), (version.clone(), client.clone()));
                Ok(keyed(client))
            }
        }
    }

    fn writer(&self) -> Writer<'_> {
        Writer {
            client: &self.client,
            recorder: &self.recorder,
            normal_reasons: &["VMCreating", "Deleting"],
            written: &self.written,
        }
    }
}

/// The [`ProbeCache`] key of the manager's own credential.
const OWN_CLIENT: &str = "manager";
/// How long an image or subnet that exists is believed to (the AWS controller's AMI look-up
/// keeps its answer as long; CAPZ keeps resource SKUs per credential and location for a day,
/// `azure/services/resourceskus/cache.go`). A create that ARM refuses for that reason forgets it.
pub const PROBE_FOUND_TTL: Duration = Duration::from_secs(300);
/// How long an image or subnet that does not exist is believed not to: well under the blocked
/// retry of `ImageNotFound` (300 s) and `SubnetNotFound` (120 s), so a fix is seen on the next
/// retry, while a fleet failing at once asks once.
pub const PROBE_MISSING_TTL: Duration = Duration::from_secs(15);
/// How often a VM in `Creating` is read when ARM gave no `Retry-After` with its create.
const CREATING_REQUEUE: Duration = Duration::from_secs(10);

/// Answers to existence probes (the image, the subnet) per (ARM client key, ARM path), so a
/// fleet of machines in one cluster asks once per [`PROBE_FOUND_TTL`]. One probe per key is in
/// flight at a time; the machines that wait for it use its answer.
#[derive(Default)]
pub struct ProbeCache {
    answers: Mutex<HashMap<ProbeKey, (Instant, bool)>>,
    flights: Mutex<HashMap<ProbeKey, Flight>>,
}

/// (ARM client key, ARM path).
type ProbeKey = (String, String);
/// Held while one probe of a key is asked.
type Flight = Arc<tokio::sync::Mutex<()>>;

impl ProbeCache {
    /// The cached answer, while fresh.
    pub fn get(&self, client: &str, path: &str, now: Instant) -> Option<bool> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers.get(&(client.to_string(), path.to_string())).and_then(|(at, found)| {
            let ttl = if *found { PROBE_FOUND_TTL } else { PROBE_MISSING_TTL };
            (now.saturating_duration_since(*at) < ttl).then_some(*found)
        })
    }

    pub fn put(&self, client: &str, path: &str, found: bool, now: Instant) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers.retain(|_, (at, f)| {
            now.saturating_duration_since(*at) < if *f { PROBE_FOUND_TTL } else { PROBE_MISSING_TTL }
        });
        answers.insert((client.to_string(), path.to_string()), (now, found));
    }

    /// ARM refused a create for what the answer said exists: ask again next time.
    pub fn forget(&self, client: &str, path: &str) {
        self.answers.lock().unwrap_or_else(|p| p.into_inner()).remove(&(client.to_string(), path.to_string()));
    }

    /// The cached answer, else `ask`'s (cached). Errors are not cached.
    async fn probe<F, Fut>(&self, client: &str, path: &str, ask: F) -> Result<bool, ArmError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<bool, ArmError>>,
    {
        if let Some(found) = self.get(client, path, Instant::now()) {
            return Ok(found);
        }
        let flight = self
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((client.to_string(), path.to_string()))
            .or_default()
            .clone();
        let _one = flight.lock().await;
        if let Some(found) = self.get(client, path, Instant::now()) {
            return Ok(found);
        }
        let found = ask().await?;
        self.put(client, path, found, Instant::now());
        Ok(found)
    }
}

/// How often a running, joined machine's VM is read from ARM, whatever wakes the reconcile.
pub const STEADY_READ_INTERVAL: Duration = Duration::from_secs(300);

/// Whether a reconcile reads the VM again. A machine in steady state (running, its Node joined)
/// is read at most every [`STEADY_READ_INTERVAL`]: Machine status churn wakes the reconciler
/// often, and ARM's read quota is per subscription. Anything else is read every time.
pub fn vm_read_due(last: Option<Instant>, now: Instant, steady: bool) -> bool {
    !steady || last.is_none_or(|l| now.saturating_duration_since(l) >= STEADY_READ_INTERVAL)
}

fn build_client(settings: &Settings, source: &CredentialSource, metrics: &Arc<Metrics>) -> Result<ArmClient, String> {
    let http = arm::http_client(settings.endpoint.ca_pem.as_deref())?;
    let credential = credentials::build(source, settings.authority.as_deref(), &http)?;
    let arm = HttpArm::new(&settings.endpoint, credential)?;
    Ok(Arc::new(Counting::with_metrics(arm, metrics.clone())))
}

/// The condition reason for an ARM error that ends a create.
pub fn create_failure_reason(e: &ArmError) -> &'static str {
    match e.code.as_str() {
        "PlatformImageNotFound" | "ImageNotFound" | "GalleryImageNotFound" => "ImageNotFound",
        "InvalidResourceReference" | "NotFound" if e.message.contains("subnet") => "SubnetNotFound",
        "SubnetIsFull" => "SubnetIsFull",
        "SkuNotAvailable" | "InvalidParameter" if e.message.contains("vmSize") || e.message.contains("size") => {
            "VMSizeNotAvailable"
        }
        "AuthorizationFailed" | "AuthenticationFailed" | "InvalidAuthenticationToken" => "AuthorizationFailed",
        _ if e.throttled() => "Throttled",
        _ if e.transient() => "ARMUnavailable",
        _ => "VMCreateFailed",
    }
}

fn identity_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("infrastructure.cluster.x-k8s.io", "v1beta1", "AzureClusterIdentity"),
        "azureclusteridentities",
    )
}

fn namespace_resource() -> ApiResource {
    ApiResource::erase::<Namespace>(&())
}

fn azure_cluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("infrastructure.cluster.x-k8s.io", "v1beta1", "AzureCluster"),
        "azureclusters",
    )
}

/// An ARM error met on the way: throttling and outages retry soon, the rest names itself.
fn arm_error(e: ArmError) -> Error {
    let retry = if e.transient() { Duration::from_secs(20) } else { Duration::from_secs(120) };
    let reason = if e.throttled() {
        "Throttled"
    } else if e.transient() {
        "ARMUnavailable"
    } else if matches!(e.code.as_str(), "AuthorizationFailed" | "AuthenticationFailed" | "InvalidAuthenticationToken") {
        "AuthorizationFailed"
    } else if e.code == "CredentialUnavailable" {
        "CredentialUnavailable"
    } else {
        "ARMError"
    };
    blocked(reason, e.to_string(), Some(retry))
}

impl MachineCloud for Context {
    type Machine = AzureWindowsMachine;
    const KIND: &'static str = "AzureWindowsMachine";
    const FINALIZER: &'static str = FINALIZER;

    fn cache(&self) -> &capwin_infra::cache::CapiCache {
        &self.cache
    }
    fn metrics(&self) -> &capwin_infra::metrics::Metrics {
        &self.metrics
    }
    fn writer(&self) -> Writer<'_> {
        Context::writer(self)
    }
    fn backoff(&self) -> &capwin_infra::Backoff {
        &self.backoff
    }
    /// The VM's name is recorded and its create was accepted (`spec.providerID`, or this manager
    /// recorded it a moment ago and the cached object does not show it yet).
    fn recorded(&self, m: &AzureWindowsMachine) -> bool {
        let Some(id) = m.annotations().get(VM_ID_ANNOTATION) else { return false };
        m.spec.provider_id.is_some() || self.created().get(&m.uid().unwrap_or_default()).is_some_and(|c| c.vm_id == *id)
    }
    async fn create(
        &self,
        m: &AzureWindowsMachine,
        owners: &Owners,
        data: contract::BootstrapData,
    ) -> Result<Created, Error> {
        apply(m, self, owners, data).await
    }
    async fn report(
        &self,
        m: &AzureWindowsMachine,
        owners: &Owners,
        draft: &mut InfraMachineStatus,
    ) -> Result<Report, Error> {
        let azure_cluster = azure_cluster_of(self, &m.namespace().unwrap_or_default(), &owners.cluster).await?;
        let (_, arm) = self.arm_for(m, azure_cluster.as_ref()).await?;
        let vm_id = m.annotations().get(VM_ID_ANNOTATION).cloned().unwrap_or_default();
        report(m, self, &arm, owners, &vm_id, draft).await
    }
    async fn delete(&self, m: &AzureWindowsMachine, owners: Option<&Owners>) -> Result<Deletion, Error> {
        cleanup(m, self, owners).await
    }
}

pub async fn reconcile(obj: Arc<AzureWindowsMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    machine::reconcile(obj, ctx).await
}

pub fn error_policy(obj: Arc<AzureWindowsMachine>, err: &Error, ctx: Arc<Context>) -> Action {
    machine::error_policy(obj, err, ctx)
}

/// The cluster's `AzureCluster`, when its infrastructure is one.
async fn azure_cluster_of(ctx: &Context, ns: &str, cluster: &ClusterView) -> Result<Option<Value>, Error> {
    let Some(name) = cluster.infrastructure_named("AzureCluster") else {
        return Ok(None);
    };
    Ok(contract::cached_or_get(&ctx.cache, &ctx.client, &azure_cluster_resource(), Some(ns), name)
        .await?
        .map(|a| serde_json::to_value(a).unwrap_or_default()))
}

/// Chooses and records the VM's name, then creates its NIC and the VM, idempotently.
async fn apply(
    m: &AzureWindowsMachine,
    ctx: &Context,
    o: &Owners,
    data: contract::BootstrapData,
) -> Result<Created, Error> {
    let ns = m.namespace().unwrap_or_default();
    let vm_id = m.annotations().get(VM_ID_ANNOTATION).cloned();
    let azure_cluster = azure_cluster_of(ctx, &ns, &o.cluster).await?;
    let Some(azure_cluster) = &azure_cluster else {
        return Err(blocked(
            "UnsupportedCluster",
            format!(
                "Cluster {} has no AzureCluster infrastructure; AzureWindowsMachines join CAPZ clusters",
                o.cluster.name
            ),
            None,
        ));
    };
    let payload = &data.value;
    // Bad input first, before anything exists in Azure.
    let custom_data = model::custom_data(payload).map_err(|e| blocked("CustomDataTooLarge", e.to_string(), None))?;
    let placement = model::placement(azure_cluster, m.spec.network.subnet_name.as_deref())
        .map_err(|e| blocked("InvalidAzureCluster", e.0, Some(Duration::from_secs(60))))?;
    let zone =
        model::zone(o.machine.failure_domain.as_deref()).map_err(|e| blocked("InvalidFailureDomain", e, None))?;
    let (who, arm) = ctx.arm_for(m, Some(azure_cluster)).await?;
    let windows_year = contract::windows_year(&ctx.client, &o.machine, &data).await?;
    let k8s_version = o.machine.version.as_str();
    let image = model::image(m.spec.image.as_ref(), &placement, &windows_year, k8s_version);
    // The image and the subnet are the cluster's, not the machine's: asked once per credential
    // and TTL for the whole fleet.
    let image_found = ctx
        .probes
        .probe(&who, &image.probe, || async {
            let found = arm::get_path(arm.as_ref(), &image.probe).await?;
            Ok(found.is_some_and(|v| !v.as_array().is_some_and(Vec::is_empty)))
        })
        .await
        .map_err(arm_error)?;
    if !image_found {
        return Err(blocked(
            "ImageNotFound",
            format!("spec.image: {} does not exist in {}", image.describe, placement.location),
            Some(Duration::from_secs(300)),
        ));
    }
    let subnet_id = model::resources(&placement, "probe").subnet;
    let subnet_found = ctx
        .probes
        .probe(&who, &subnet_id, || async { Ok(arm::get(arm.as_ref(), &subnet_id, api::NETWORK).await?.is_some()) })
        .await
        .map_err(arm_error)?;
    if !subnet_found {
        let field = if m.spec.network.subnet_name.is_some() {
            "spec.network.subnetName"
        } else {
            "the AzureCluster's node subnet"
        };
        return Err(blocked(
            "SubnetNotFound",
            format!("{field}: subnet {} of virtual network {} does not exist", placement.subnet, placement.vnet),
            Some(Duration::from_secs(120)),
        ));
    }

    let vm_name = match vm_id.as_deref().and_then(|id| id.rsplit('/').next()) {
        Some(n) => n.to_string(),
        None => choose_vm_name(m, ctx, &placement, diagnostics::port_annotation(payload)).await?,
    };
    let res = model::resources(&placement, &vm_name);
    let tags = model::tags(&o.cluster.name, &ns, &m.name_any(), &m.spec.additional_tags);
    let mut random = [0u8; 24];
    getrandom::fill(&mut random)
        .map_err(|e| blocked("RandomUnavailable", e.to_string(), Some(Duration::from_secs(10))))?;
    let password = model::admin_password(&random);
    let inputs = model::VmInputs {
        spec: &m.spec,
        placement: &placement,
        resources: &res,
        tags: &tags,
        image: &image,
        zone: zone.as_deref(),
        custom_data: &custom_data,
        admin_password: &password,
    };

    // The NIC is looked up before it is created (CAPZ's `async.Service.CreateResource` GETs
    // before its PUT too): NRP documents no `If-None-Match` for network interfaces, so only the
    // look-up guarantees a NIC that is not this machine's is never overwritten. Its answer (or
    // the create's) carries the private IP, kept for the first report.
    let ip = match arm::get(arm.as_ref(), &res.nic, api::NETWORK).await.map_err(arm_error)? {
        Some(nic) if model::owned_by(&nic, &ns, &m.name_any()) => model::private_ip(&nic),
        Some(_) => return name_taken(m, ctx, &placement, &vm_name, "a NIC").await,
        None => {
            // `If-None-Match` anyway: where the provider honours it, a NIC made between the
            // look-up and here is refused (412) and looked up again on the next pass.
            let created = match arm::put(arm.as_ref(), &res.nic, api::NETWORK, &model::nic_body(&inputs), true).await {
                Ok(a) => a,
                Err(e) if e.status == 412 => return Ok(Created { requeue: Duration::from_secs(1), notes: Vec::new() }),
                Err(e) => {
                    let reason = create_failure_reason(&e);
                    if reason == "SubnetNotFound" {
                        ctx.probes.forget(&who, &subnet_id);
                    }
                    return Err(blocked(
                        reason,
                        format!("creating NIC {}: {e}", res.nic),
                        Some(Duration::from_secs(60)),
                    ));
                }
            };
            // NRP usually answers a NIC create with `provisioningState: Succeeded`: nothing to
            // follow then (see `arm::Accepted`).
            if let OperationStatus::Failed { code, message } =
                arm::wait(arm.as_ref(), &created.op, LRO_BUDGET).await.map_err(arm_error)?
            {
                return Err(blocked(
                    "NICCreateFailed",
                    format!("NIC {}: {code}: {message}", res.nic),
                    Some(Duration::from_secs(60)),
                ));
            }
            model::private_ip(&created.body)
        }
    };
    let created = match arm::put(arm.as_ref(), &res.vm, api::COMPUTE, &model::vm_body(&inputs), true).await {
        Ok(a) => Some(a),
        Err(e) if e.status == 412 => {
            // A VM of this name exists: ours from an interrupted reconcile, or someone else's.
            let existing = arm::get(arm.as_ref(), &res.vm, api::COMPUTE).await.map_err(arm_error)?;
            if !existing.as_ref().is_some_and(|v| model::owned_by(v, &ns, &m.name_any())) {
                // Our NIC for that name goes too, or it would outlive the only record of it.
                delete_if_owned(&arm, &res.nic, api::NETWORK, &ns, &m.name_any()).await?;
                return name_taken(m, ctx, &placement, &vm_name, "a VM").await;
            }
            None
        }
        Err(e) if e.transient() => return Err(arm_error(e)),
        Err(e) => {
            // Nothing half-created stays behind: the NIC goes with the refused VM.
            let reason = create_failure_reason(&e);
            if reason == "ImageNotFound" {
                ctx.probes.forget(&who, &image.probe);
            }
            if let Err(d) = arm::delete(arm.as_ref(), &res.nic, api::NETWORK).await {
                tracing::warn!(machine = %m.name_any(), error = %d, "could not delete the NIC of a refused VM");
            }
            return Err(blocked(
                reason,
                format!("creating VM {vm_name}: {}: {}", e.code, e.message),
                Some(Duration::from_secs(300)),
            ));
        }
    };
    // Record the VM at once: CAPI copies providerID to the Machine; spec survives a move.
    let api_: Api<AzureWindowsMachine> = Api::namespaced(ctx.client.clone(), &ns);
    api_.patch(
        &m.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"providerID": model::provider_id(&placement, &vm_name)}})),
    )
    .await?;
    // The create is not followed here: the VM's own `provisioningState`, which ARM keeps
    // authoritative, is read at ARM's advised interval (`Retry-After`), as CAPZ requeues a
    // not-done operation after `max(Retry-After, 15 s)` (`azure/services/async/async.go`)
    // instead of holding a worker. An adopted VM is read at once.
    let now = Instant::now();
    let mut notes = Vec::new();
    let (next_read, interval) = match &created {
        Some(a) => {
            let note = format!("creating VM {vm_name} ({}, {})", m.spec.vm_size, image.describe);
            notes.push(Note::normal("VMCreating", note, "Create"));
            let wait = model::creating_interval(a.retry_after, CREATING_REQUEUE);
            (now + wait, wait)
        }
        None => (now, CREATING_REQUEUE),
    };
    let accepted = created.is_some().then_some(now);
    ctx.created()
        .insert(m.uid().unwrap_or_default(), CreatedVm { vm_id: res.vm.clone(), next_read, interval, accepted, ip });
    Ok(Created { requeue: next_read.saturating_duration_since(now).max(Duration::from_secs(1)), notes })
}

/// Records the machine's first deterministic VM name before anything is created. No look-up:
/// the NIC look-up and the VM's `If-None-Match: *` create find a name that is taken, and
/// [`name_taken`] moves on to the next candidate.
async fn choose_vm_name(
    m: &AzureWindowsMachine,
    ctx: &Context,
    p: &Placement,
    serial_port: Option<String>,
) -> Result<String, Error> {
    let name = model::vm_name(&m.name_any(), &m.uid().unwrap_or_default(), 0);
    record_vm_name(m, ctx, &model::resources(p, &name).vm, Some(serial_port)).await?;
    Ok(name)
}

/// The recorded name is taken by a VM or NIC that is not this machine's (and nothing of this
/// machine's is left under it): records the next candidate, so the next pass tries that one.
async fn name_taken<T>(
    m: &AzureWindowsMachine,
    ctx: &Context,
    p: &Placement,
    current: &str,
    what: &str,
) -> Result<T, Error> {
    let Some(next) = model::next_vm_name(&m.name_any(), &m.uid().unwrap_or_default(), current) else {
        return Err(blocked(
            "VMNameTaken",
            format!("{} candidate VM names are all taken in the resource group", model::VM_NAME_CANDIDATES),
            Some(Duration::from_secs(300)),
        ));
    };
    record_vm_name(m, ctx, &model::resources(p, &next).vm, None).await?;
    Err(blocked(
        "VMNameTaken",
        format!("{what} named {current} that is not this machine's exists; choosing {next}"),
        Some(Duration::from_secs(1)),
    ))
}

/// Writes the `vm-id` annotation (and, when given, the serial port the payload writes to).
async fn record_vm_name(
    m: &AzureWindowsMachine,
    ctx: &Context,
    vm_id: &str,
    serial_port: Option<Option<String>>,
) -> Result<(), Error> {
    let mut annotations = json!({VM_ID_ANNOTATION: vm_id});
    if let Some(port) = serial_port {
        annotations[diagnostics::SERIAL_PORT_ANNOTATION] = json!(port);
    }
    let api_: Api<AzureWindowsMachine> = Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
    api_.patch(
        &m.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
    )
    .await?;
    Ok(())
}

/// Reads the VM and writes what CAPI copies to the Machine.
async fn report(
    m: &AzureWindowsMachine,
    ctx: &Context,
    arm: &ArmClient,
    owners: &Owners,
    vm_id: &str,
    status: &mut InfraMachineStatus,
) -> Result<Report, Error> {
    let name = vm_id.rsplit('/').next().unwrap_or_default();
    let running = m.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == ConditionStatus::True && c.reason == "VMRunning")
    });
    let steady = running && owners.machine.joined();
    let uid = m.uid().unwrap_or_default();
    // A VM being created is read at ARM's advised interval, whatever wakes the reconcile.
    let now = Instant::now();
    if let Some(c) = ctx.created().get(&uid)
        && c.next_read > now
    {
        return Ok(Report::NotRead { requeue: c.next_read - now });
    }
    if !ctx.vm_reads.take(&uid, now, |last, now| vm_read_due(last, now, steady)) {
        return Ok(Report::NotRead { requeue: STEADY_READ_INTERVAL });
    }
    let mut created_ip = None;
    let target = format!("{vm_id}?api-version={}&$expand=instanceView", api::COMPUTE);
    let Some(vm) = arm::get_path(arm.as_ref(), &target).await.map_err(arm_error)? else {
        ctx.created().remove(&uid);
        status.instance_state = Some("Deleted".into());
        let message =
            format!("VM {name} no longer exists; it is not recreated (Machines are immutable): delete the Machine");
        let requeue = Duration::from_secs(600);
        return Ok(Report::Read { ready: false, reason: "VMDeleted", message, requeue, notes: Vec::new() });
    };
    let reading = model::read_vm(&vm);
    // Still being created: read again after the create's interval; otherwise the create's
    // memory is done with (its IP is taken below).
    let creating = {
        let mut created = ctx.created();
        match (&reading, created.get_mut(&uid)) {
            (VmReading::Creating, Some(c)) => {
                let now = Instant::now();
                c.next_read = now + c.interval;
                // The create's event said so; the condition follows if the VM is still being
                // created after [`LRO_BUDGET`], as before (when the reconcile followed the
                // operation that long, then recorded `VMCreating`).
                if c.accepted.is_some_and(|at| now.saturating_duration_since(at) < LRO_BUDGET) {
                    return Ok(Report::NotRead { requeue: c.interval });
                }
                c.interval
            }
            (VmReading::Creating, None) => CREATING_REQUEUE,
            _ => {
                let ip = created.remove(&uid).and_then(|c| c.ip);
                created_ip = ip;
                CREATING_REQUEUE
            }
        }
    };
    let (ready, reason, message, requeue) = match &reading {
        VmReading::Creating => (false, "VMCreating", format!("VM {name} is being created"), creating),
        VmReading::Running => (true, "VMRunning", format!("VM {name} is running"), Duration::from_secs(600)),
        VmReading::Stopped(s) => (false, "VMStopped", format!("VM {name} is {s}"), Duration::from_secs(60)),
        VmReading::Deleting => {
            (false, "VMDeleting", format!("VM {name} is being deleted outside capwin"), Duration::from_secs(30))
        }
        VmReading::Failed { code, message } => (
            false,
            "VMProvisioningFailed",
            format!("VM {name} failed to provision: {code}: {}", serial::clean(message)),
            Duration::from_secs(300),
        ),
    };
    status.instance_state = vm["properties"]["provisioningState"].as_str().map(String::from);
    let mut requeue = requeue;
    let mut notes = Vec::new();
    if reading == VmReading::Running {
        if status.addresses.is_empty() {
            // Read once: from the NIC's create answer when this manager made it, else the NIC.
            let ip = match created_ip {
                Some(ip) => Some(ip),
                None => {
                    let nic_id =
                        vm["properties"]["networkProfile"]["networkInterfaces"][0]["id"].as_str().unwrap_or_default();
                    arm::get(arm.as_ref(), nic_id, api::NETWORK)
                        .await
                        .map_err(arm_error)?
                        .as_ref()
                        .and_then(model::private_ip)
                }
            };
            let mut addresses = Vec::new();
            if let Some(ip) = ip {
                addresses.push(MachineAddress { r#type: MachineAddressType::InternalIP, address: ip });
            }
            let computer = vm["properties"]["osProfile"]["computerName"].as_str().unwrap_or(name).to_ascii_lowercase();
            addresses.push(MachineAddress { r#type: MachineAddressType::Hostname, address: computer });
            status.addresses = addresses;
        }
        status.failure_domain = vm["zones"][0].as_str().map(String::from).or(status.failure_domain.take());
        status.initialization = Some(InfraMachineInitialization { provisioned: Some(true) });
        // Until the Node exists, the serial log is the only window into the join.
        let uid = m.uid().unwrap_or_default();
        let read = || read_serial_log(m, arm, vm_id);
        let (cap, note) = diagnostics::follow(
            &ctx.serial_reads,
            &ctx.metrics,
            capwin_payload::Cloud::Azure,
            m.annotations().get(diagnostics::SERIAL_PORT_ANNOTATION).map(String::as_str),
            owners.machine.node_name.as_deref(),
            &uid,
            status,
            m.metadata.generation,
            read,
        )
        .await;
        requeue = cap.unwrap_or(requeue);
        notes.extend(note.map(|n| Note::warning("BootstrapFailed", n, "Diagnose")));
    }
    Ok(Report::Read { ready, reason, message, requeue, notes })
}

/// The VM's boot diagnostics serial log, or `None` when it cannot be read now (best effort). The
/// SAS URL is fetched without the ARM token.
async fn read_serial_log(m: &AzureWindowsMachine, arm: &ArmClient, vm_id: &str) -> Option<String> {
    let target =
        format!("{vm_id}/retrieveBootDiagnosticsData?api-version={}&sasUriExpirationTimeInMinutes=5", api::COMPUTE);
    let uris = match arm.call(arm::Method::Post, &target, None, false).await {
        Ok(r) => r.body,
        Err(e) => {
            tracing::debug!(machine = %m.name_any(), error = %e, "boot diagnostics not readable");
            return None;
        }
    };
    let url = uris["serialConsoleLogBlobUri"].as_str()?;
    let text = match arm.blob(url).await {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!(machine = %m.name_any(), error = %e, "serial log not readable");
            return None;
        }
    };
    Some(text)
}

/// Deletes the VM, then the NIC and the OS disk, verifying each is gone.
async fn cleanup(m: &AzureWindowsMachine, ctx: &Context, owners: Option<&Owners>) -> Result<Deletion, Error> {
    ctx.serial_reads.forget(&m.uid().unwrap_or_default());
    ctx.created().remove(&m.uid().unwrap_or_default());
    // No name chosen: nothing was ever created for this machine.
    let Some(vm_id) = m.annotations().get(VM_ID_ANNOTATION).cloned() else { return Ok(Deletion::Gone) };
    // The Machine or Cluster may be gone already (then the machine's own identityRef or the
    // manager's credential); a failure reading the AzureCluster is retried, never guessed
    // around (another credential could see other resources).
    let azure_cluster = match owners {
        Some(o) => azure_cluster_of(ctx, &m.namespace().unwrap_or_default(), &o.cluster).await?,
        None => None,
    };
    let (_, arm) = ctx.arm_for(m, azure_cluster.as_ref()).await?;
    let ns = m.namespace().unwrap_or_default();
    let (prefix, name) = vm_id.rsplit_once("/providers/Microsoft.Compute/virtualMachines/").unwrap_or((&vm_id, ""));
    let nic = format!("{prefix}/providers/Microsoft.Network/networkInterfaces/{name}-nic");
    let disk = format!("{prefix}/providers/Microsoft.Compute/disks/{name}_OSDisk");
    // The VM and NIC carry our tags; the OS disk cannot, and is ours when the VM was (capwin
    // records the providerID only for a VM it created or adopted by its tags).
    let vm_ours = m.spec.provider_id.is_some();
    for (id, version, what) in
        [(&vm_id, api::COMPUTE, "VM"), (&nic, api::NETWORK, "NIC"), (&disk, api::DISKS, "OS disk")]
    {
        let started = if what == "OS disk" {
            if vm_ours { arm::delete(arm.as_ref(), id, version).await.map_err(arm_error)? } else { None }
        } else {
            delete_if_owned(&arm, id, version, &ns, &m.name_any()).await?
        };
        if let Some(op) = started {
            if let OperationStatus::Failed { code, message } =
                arm::wait(arm.as_ref(), &op, LRO_BUDGET).await.map_err(arm_error)?
            {
                return Err(blocked(
                    "DeleteFailed",
                    format!("deleting {what} {id}: {code}: {message}"),
                    Some(Duration::from_secs(30)),
                ));
            }
            // Verified, not assumed: the next pass finds this resource gone.
            return Ok(Deletion::Waiting {
                message: format!("waiting for {what} {name} to be deleted"),
                retry: Duration::from_secs(2),
            });
        }
    }
    tracing::info!(machine = %m.name_any(), vm = name, "VM, NIC and OS disk are gone");
    Ok(Deletion::Gone)
}

/// Deletes a VM or NIC only when its tags say it is this machine's; `None` when there is nothing
/// (of ours) to delete.
async fn delete_if_owned(
    arm: &ArmClient,
    id: &str,
    version: &str,
    ns: &str,
    machine: &str,
) -> Result<Option<arm::Operation>, Error> {
    match arm::get_existing(arm.as_ref(), id, version).await.map_err(arm_error)? {
        Some(r) if model::owned_by(&r, ns, machine) => arm::delete(arm.as_ref(), id, version).await.map_err(arm_error),
        Some(_) => {
            tracing::warn!(resource = id, "not deleting a resource that is not this machine's");
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Template status for autoscaling from zero (`nodeInfo.operatingSystem: windows`, capacity from
/// the VM size), and the `<template>-azure-json` Secret with `worker-node-azure.json` that
/// Windows bootstrap templates put on the node (CAPZ writes it only for its own templates).
pub async fn reconcile_template(t: Arc<AzureWindowsMachineTemplate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = t.namespace().unwrap_or_default();
    let api_: Api<AzureWindowsMachineTemplate> = Api::namespaced(ctx.client.clone(), &ns);
    let size = &t.spec.template.spec.vm_size;
    let mut status = t.status.clone().unwrap_or_default();
    status.node_info = Some(NodeInfo { operating_system: Some("windows".into()), architecture: Some("amd64".into()) });
    let gen_ = t.metadata.generation;
    let mut requeue = Duration::from_secs(3600);
    match model::vm_size_capacity(size) {
        Some((cpu, mib)) => {
            status.capacity = std::collections::BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.to_string())),
                ("memory".to_string(), Quantity(format!("{mib}Mi"))),
            ]);
            set_condition(&mut status.conditions, "Ready", true, "CapacityKnown", "", gen_, &now());
        }
        None => {
            let msg = format!(
                "spec.template.spec.vmSize: capwin cannot tell the capacity of {size}; set the capacity.cluster-autoscaler.kubernetes.io annotations on the MachineDeployment to scale from zero"
            );
            set_condition(&mut status.conditions, "Ready", false, "CapacityUnknown", &msg, gen_, &now());
        }
    }
    match azure_json_for(&t, &ctx).await? {
        Ok(()) => set_condition(&mut status.conditions, "AzureJSONReady", true, "SecretWritten", "", gen_, &now()),
        Err((reason, msg)) => {
            requeue = Duration::from_secs(30);
            set_condition(&mut status.conditions, "AzureJSONReady", false, reason, &msg, gen_, &now());
        }
    }
    if t.status.as_ref() != Some(&status) {
        api_.patch_status(&t.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    Ok(Action::requeue(requeue))
}

/// Writes `<template>-azure-json` for the cluster whose MachineDeployments use the template.
async fn azure_json_for(
    t: &AzureWindowsMachineTemplate,
    ctx: &Context,
) -> Result<Result<(), (&'static str, String)>, Error> {
    let ns = t.namespace().unwrap_or_default();
    let name = t.name_any();
    let cluster_name = match t.labels().get("cluster.x-k8s.io/cluster-name") {
        Some(c) => Some(c.clone()),
        None => {
            let mds: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &capi("MachineDeployment"));
            mds.list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|md| {
                    let r = &md.data["spec"]["template"]["spec"]["infrastructureRef"];
                    r["kind"] == "AzureWindowsMachineTemplate" && r["name"] == name.as_str()
                })
                .and_then(|md| md.data["spec"]["clusterName"].as_str().map(String::from))
        }
    };
    let Some(cluster_name) = cluster_name else {
        return Ok(Err(("WaitingForCluster", "no MachineDeployment uses this template yet".into())));
    };
    let Some(cluster) = ctx.cache.cluster(&ns, &cluster_name).await else {
        return Ok(Err(("WaitingForCluster", format!("Cluster {cluster_name} does not exist"))));
    };
    let Some(ac) = azure_cluster_of(ctx, &ns, &ClusterView::of(&cluster)).await? else {
        return Ok(Err(("WaitingForCluster", format!("Cluster {cluster_name} has no AzureCluster yet"))));
    };
    let placement = match model::placement(&ac, t.spec.template.spec.network.subnet_name.as_deref()) {
        Ok(p) => p,
        Err(e) => return Ok(Err(("InvalidAzureCluster", e.0))),
    };
    let tenant = ac["spec"]["identityRef"]["name"].as_str().map(String::from);
    let tenant = match tenant {
        Some(id_name) => {
            let id_ns = ac["spec"]["identityRef"]["namespace"].as_str().unwrap_or(&ns).to_string();
            contract::cached_or_get(&ctx.cache, &ctx.client, &identity_resource(), Some(&id_ns), &id_name)
                .await?
                .and_then(|i| i.data["spec"]["tenantID"].as_str().map(String::from))
        }
        None => None,
    }
    .or_else(|| ctx.settings.tenant.clone());
    let cloud = ac["spec"]["azureEnvironment"].as_str().filter(|c| !c.is_empty()).unwrap_or("AzurePublicCloud");
    let body = serde_json::to_string_pretty(&model::worker_azure_json(&placement, tenant.as_deref(), cloud))
        .unwrap_or_default();
    let owner = OwnerReference {
        api_version: "infrastructure.cluster.x-k8s.io/v1alpha1".into(),
        kind: "AzureWindowsMachineTemplate".into(),
        name: name.clone(),
        uid: t.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": format!("{name}-azure-json"),
            "namespace": ns,
            "labels": {"cluster.x-k8s.io/cluster-name": cluster_name},
            "ownerReferences": [owner],
        },
        "type": "Opaque",
        "stringData": {"worker-node-azure.json": body},
    });
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    secrets
        .patch(&format!("{name}-azure-json"), &PatchParams::apply("capwin-azure").force(), &Patch::Apply(secret))
        .await?;
    Ok(Ok(()))
}

/// Runs the controllers for machines and their templates; `queue` receives their reconcile
/// queue delays.
pub async fn run(ctx: Arc<Context>, queue: capwin_infra::QueueMetrics, settings: watch::RunSettings) {
    let client = ctx.client.clone();
    let shared = ctx.clone();
    // What the reconcilers read besides Machines and Clusters: AzureClusters (in the watched
    // namespace), identities (anywhere: an identity may live in another namespace) and
    // Namespaces (their labels decide `allowedNamespaces`).
    let ns = settings.namespace.as_deref();
    shared.cache.reflect_kind(client.clone(), &azure_cluster_resource(), true, ns);
    shared.cache.reflect_kind(client.clone(), &identity_resource(), true, None);
    shared.cache.reflect_kind(client.clone(), &namespace_resource(), false, None);
    watch::run_controllers::<AzureWindowsMachine, AzureWindowsMachineTemplate, _, _, _, _, _, _>(
        client,
        &shared.cache,
        &settings,
        "AzureWindowsMachine",
        queue,
        ctx,
        reconcile,
        error_policy,
        reconcile_template,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_machines_are_read_at_most_once_per_interval() {
        let t0 = Instant::now();
        assert!(vm_read_due(Some(t0), t0, false), "not steady: always");
        assert!(vm_read_due(None, t0, true));
        assert!(!vm_read_due(Some(t0), t0 + Duration::from_secs(299), true));
        assert!(vm_read_due(Some(t0), t0 + STEADY_READ_INTERVAL, true));
    }

    #[test]
    fn probes_are_kept_per_credential_found_for_minutes_missing_for_seconds() {
        let cache = ProbeCache::default();
        let t0 = Instant::now();
        assert_eq!(cache.get("manager", "/img", t0), None);
        cache.put("manager", "/img", true, t0);
        cache.put("manager", "/subnet", false, t0);
        assert_eq!(cache.get("manager", "/img", t0 + Duration::from_secs(299)), Some(true));
        assert_eq!(cache.get("manager", "/img", t0 + PROBE_FOUND_TTL), None, "stale after the TTL");
        assert_eq!(cache.get("ns/team@1/2", "/img", t0), None, "another credential may see another subscription");
        assert_eq!(cache.get("manager", "/subnet", t0 + Duration::from_secs(14)), Some(false));
        assert_eq!(
            cache.get("manager", "/subnet", t0 + PROBE_MISSING_TTL),
            None,
            "a fixed subnet is seen on the next blocked retry"
        );
        const { assert!(PROBE_MISSING_TTL.as_secs() < 120, "shorter than SubnetNotFound's retry") };
        cache.forget("manager", "/img");
        assert_eq!(cache.get("manager", "/img", t0), None, "a refused create forgets the answer");
    }

    #[tokio::test]
    async fn one_probe_per_key_is_in_flight() {
        let cache = Arc::new(ProbeCache::default());
        let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ask = |asked: Arc<std::sync::atomic::AtomicU32>| async move {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(true)
        };
        let (a, b) = tokio::join!(
            cache.probe("manager", "/img", || ask(asked.clone())),
            cache.probe("manager", "/img", || ask(asked.clone()))
        );
        assert_eq!((a, b), (Ok(true), Ok(true)));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "the second waited for the first's answer");
        let e = ArmError { operation: "GET x".into(), status: 503, code: "HTTP503".into(), message: String::new() };
        assert!(cache.probe("manager", "/other", || async { Err(e.clone()) }).await.is_err());
        assert_eq!(cache.get("manager", "/other", Instant::now()), None, "errors are not cached");
    }

    #[test]
    fn create_failures_are_named() {
        let e = |status: u16, code: &str, message: &str| ArmError {
            operation: "PUT virtualMachines".into(),
            status,
            code: code.into(),
            message: message.into(),
        };
        assert_eq!(create_failure_reason(&e(404, "PlatformImageNotFound", "")), "ImageNotFound");
        assert_eq!(
            create_failure_reason(&e(400, "InvalidResourceReference", "Resource .../subnets/x referenced")),
            "SubnetNotFound"
        );
        assert_eq!(
            create_failure_reason(&e(400, "InvalidParameter", "The requested VM size Standard_X")),
            "VMSizeNotAvailable"
        );
        assert_eq!(create_failure_reason(&e(429, "TooManyRequests", "")), "Throttled");
        assert_eq!(create_failure_reason(&e(409, "OperationNotAllowed", "Disk with size 64GB")), "VMCreateFailed");
    }
}
