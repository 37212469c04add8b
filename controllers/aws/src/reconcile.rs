//! The `AWSWindowsMachine` reconciler (CAPI v1beta2 infrastructure-machine contract): waits for
//! the bootstrap data, creates one EC2 instance idempotently, reports `spec.providerID`,
//! addresses and `status.initialization.provisioned`, mirrors the instance state in `Ready`, and
//! on deletion terminates the instance and waits until it is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capwin_api::aws::{AWSWindowsMachine, AWSWindowsMachineTemplate};
use capwin_api::common::NodeInfo;
use capwin_api::common::{
    InfraMachineInitialization, InfraMachineStatus, MachineAddress, MachineAddressType, set_condition,
};
use capwin_payload::serial::{self, Phase};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{Controller, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::ec2::{Counting, Ec2, SdkEc2};
use crate::launch::{self, LaunchError, MachineContext};
use crate::metrics::Metrics;
use crate::model::{self, StateReading};

/// Finalizer holding the object until its instance is terminated.
pub const FINALIZER: &str = "infrastructure.cluster.x-k8s.io/capwin-aws";

/// What the reconciler shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// EC2 with the manager's own credentials (the default chain); `None` without a region.
    pub ec2: Option<Ec2Client>,
    pub namespace: Option<String>,
    /// `None` when neither `--aws-region` nor `AWS_REGION` names one: the controller still runs
    /// (a crash loop would hide the reason) and every machine says `RegionNotSet`.
    pub region: Option<String>,
    /// Where per-cluster identity Secrets live (the manager's namespace).
    pub identity_namespace: String,
    pub metrics: Arc<Metrics>,
    /// EC2 clients per identity Secret, rebuilt when the Secret changes.
    identities: Mutex<HashMap<String, (String, Ec2Client)>>,
    /// When each machine's console was last read (by machine UID), for the rate limit.
    console_reads: Mutex<HashMap<String, Instant>>,
}

/// How often one machine's serial console is read while its Node has not joined: the output
/// changes once per bootstrap step (minutes apart), and `GetConsoleOutput` is throttled per
/// account like every EC2 call.
pub const CONSOLE_READ_INTERVAL: Duration = Duration::from_secs(60);

/// Whether the console may be read again, given the last read (or attempt) of this machine.
pub fn should_read_console(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|l| now.saturating_duration_since(l) >= CONSOLE_READ_INTERVAL)
}

/// Condition type for what the serial console says about bootstrap, before the Node exists.
/// Separate from `Ready`: `Ready` is the instance's state, and a failed join does not change it.
pub const NODE_BOOTSTRAP: &str = "NodeBootstrap";

/// The `NodeBootstrap` condition (status, reason, message) for a console report.
pub fn bootstrap_condition(r: &serial::Report) -> (bool, &'static str, String) {
    match r.phase {
        Phase::Failed { .. } => (false, "BootstrapFailed", r.summary()),
        Phase::Running => (false, "BootstrapInProgress", r.summary()),
        Phase::Succeeded => (true, "BootstrapSucceeded", r.summary()),
    }
}

/// An EC2 client with its call counter.
pub type Ec2Client = Arc<Counting<SdkEc2>>;

/// Annotation on an identity Secret listing the namespaces (comma-separated, or `*`) whose
/// machines may use it. Without it, no namespace may.
pub const ALLOWED_NAMESPACES_ANNOTATION: &str = "capwin.cluster.x-k8s.io/allowed-namespaces";

impl Context {
    /// The default-chain EC2 client is built here (`AWS_ENDPOINT_URL` is honoured); an empty
    /// region counts as none.
    pub async fn new(
        client: Client,
        region: Option<String>,
        namespace: Option<String>,
        identity_namespace: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter { controller: "capwin-aws".into(), instance: std::env::var("POD_NAME").ok() },
        );
        let region = region.filter(|r| !r.is_empty());
        let ec2 = match &region {
            Some(r) => Some(Arc::new(Counting::with_metrics(SdkEc2::new(r, None, None).await, metrics.clone()))),
            None => None,
        };
        Arc::new(Self {
            client,
            recorder,
            ec2,
            namespace,
            region,
            identity_namespace,
            metrics,
            identities: Mutex::default(),
            console_reads: Mutex::default(),
        })
    }

    fn default_ec2(&self) -> Result<Ec2Client, Error> {
        self.ec2.clone().ok_or_else(|| {
            blocked(
                "RegionNotSet",
                "the manager has no AWS region: set --aws-region or AWS_REGION (clusterctl variable CAPWIN_AWS_REGION_B64)",
                Some(Duration::from_secs(300)),
            )
        })
    }

    /// Takes the console-read slot of a machine when it is due (an attempt counts as a read, so
    /// a failing call is not retried faster than the limit).
    fn console_due(&self, uid: &str, now: Instant) -> bool {
        let mut reads = self.console_reads.lock().unwrap_or_else(|p| p.into_inner());
        if !should_read_console(reads.get(uid).copied(), now) {
            return false;
        }
        reads.insert(uid.to_string(), now);
        true
    }

    fn forget_console(&self, uid: &str) {
        self.console_reads.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    /// The EC2 client for a machine: its identity Secret's credentials when it names one (and
    /// its namespace is allowed to), else the manager's own.
    pub async fn ec2_for(&self, m: &AWSWindowsMachine) -> Result<Ec2Client, Error> {
        let default = self.default_ec2()?;
        let Some(r) = &m.spec.identity_ref else { return Ok(default) };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.identity_namespace);
        let name = &r.secret_name;
        let Some(s) = secrets.get_opt(name).await? else {
            return Err(blocked(
                "IdentityNotFound",
                format!("spec.identityRef: Secret {}/{name} does not exist", self.identity_namespace),
                Some(Duration::from_secs(60)),
            ));
        };
        let ns = m.namespace().unwrap_or_default();
        let allowed = s
            .annotations()
            .get(ALLOWED_NAMESPACES_ANNOTATION)
            .map(|a| a.split(',').map(str::trim).any(|n| n == "*" || n == ns))
            .unwrap_or(false);
        if !allowed {
            return Err(blocked(
                "IdentityNotAllowed",
                format!(
                    "spec.identityRef: namespace {ns} may not use identity {name} (see its {ALLOWED_NAMESPACES_ANNOTATION} annotation)"
                ),
                Some(Duration::from_secs(20)),
            ));
        }
        let version = s.resource_version().unwrap_or_default();
        if let Some((v, c)) = self.identities.lock().unwrap_or_else(|p| p.into_inner()).get(name)
            && *v == version
        {
            return Ok(c.clone());
        }
        let key = |k: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|v| !v.is_empty())
        };
        let (Some(id), Some(secret)) = (key("AccessKeyID"), key("SecretAccessKey")) else {
            return Err(blocked(
                "InvalidIdentity",
                format!("spec.identityRef: Secret {name} needs the keys AccessKeyID and SecretAccessKey"),
                Some(Duration::from_secs(60)),
            ));
        };
        let creds = crate::ec2::StaticCredentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: key("SessionToken"),
        };
        let region = self.region.as_deref().unwrap_or_default();
        let client =
            Arc::new(Counting::with_metrics(SdkEc2::new(region, None, Some(creds)).await, self.metrics.clone()));
        self.identities.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), (version, client.clone()));
        Ok(client)
    }
}

/// The one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{reason}: {message}")]
    Blocked { reason: &'static str, message: String, retry: Option<Duration> },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

fn blocked(reason: &'static str, message: impl Into<String>, retry: Option<Duration>) -> Error {
    Error::Blocked { reason, message: message.into(), retry }
}

impl From<LaunchError> for Error {
    fn from(e: LaunchError) -> Self {
        let retry = match &e {
            LaunchError::Ec2(_) => Duration::from_secs(20),
            _ => Duration::from_secs(120),
        };
        blocked(e.reason(), e.to_string(), Some(retry))
    }
}

use capwin_api::common::{capi_resource as capi, now_rfc3339 as now};

pub async fn reconcile(obj: Arc<AWSWindowsMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    tracing::debug!(machine = %obj.name_any(), "reconciling AWSWindowsMachine");
    let api: Api<AWSWindowsMachine> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, obj.clone(), |ev| async {
        match ev {
            Finalizer::Apply(m) => apply(&m, &ctx).await,
            Finalizer::Cleanup(m) => cleanup(&m, &ctx).await,
        }
    })
    .await;
    match result {
        Ok(a) => {
            ctx.metrics.reconciled("ok");
            Ok(a)
        }
        Err(kube::runtime::finalizer::Error::ApplyFailed(Error::Blocked { reason, message, retry })) => {
            ctx.metrics.reconciled("blocked");
            ctx.metrics.blocked(reason);
            record(&obj, &ctx, false, reason, &message, None).await?;
            Ok(retry.map(Action::requeue).unwrap_or_else(Action::await_change))
        }
        Err(kube::runtime::finalizer::Error::CleanupFailed(Error::Blocked { reason, message, retry })) => {
            ctx.metrics.reconciled("blocked");
            ctx.metrics.blocked(reason);
            record(&obj, &ctx, false, reason, &message, None).await?;
            Ok(Action::requeue(retry.unwrap_or(Duration::from_secs(10))))
        }
        Err(e) => {
            ctx.metrics.reconciled("error");
            ctx.metrics.blocked("KubernetesAPI");
            Err(Error::Finalizer(Box::new(e)))
        }
    }
}

pub fn error_policy(obj: Arc<AWSWindowsMachine>, err: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(machine = %obj.name_any(), error = %err, "AWSWindowsMachine reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

/// Writes `Ready` (and the rest of a status), with an event when the reason changes.
async fn record(
    m: &AWSWindowsMachine,
    ctx: &Context,
    ready: bool,
    reason: &str,
    message: &str,
    update: Option<InfraMachineStatus>,
) -> Result<(), Error> {
    let mut status = update.unwrap_or_else(|| m.status.clone().unwrap_or_default());
    let before = capwin_api::common::condition_reason(&status.conditions, "Ready").map(String::from);
    set_condition(&mut status.conditions, "Ready", ready, reason, message, m.metadata.generation, &now());
    if m.status.as_ref() != Some(&status) {
        let api: Api<AWSWindowsMachine> = Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
        api.patch_status(&m.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    if before.as_deref() != Some(reason) {
        let type_ = if ready || matches!(reason, "InstancePending" | "InstanceCreated") {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(message.into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let _ = ctx.recorder.publish(&ev, &m.object_ref(&())).await;
    }
    Ok(())
}

async fn apply(m: &AWSWindowsMachine, ctx: &Context) -> Result<Action, Error> {
    let ns = m.namespace().unwrap_or_default();
    let Some(owner) = m.owner_references().iter().find(|o| o.kind == "Machine").cloned() else {
        return Err(blocked("WaitingForMachineOwner", "no CAPI Machine owns this AWSWindowsMachine yet", None));
    };
    let machines: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &capi("Machine"));
    let Some(machine) = machines.get_opt(&owner.name).await? else {
        return Err(blocked(
            "WaitingForMachineOwner",
            format!("Machine {} does not exist", owner.name),
            Some(Duration::from_secs(30)),
        ));
    };
    let cluster_name = machine.data["spec"]["clusterName"].as_str().unwrap_or_default().to_string();
    let clusters: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &capi("Cluster"));
    let Some(cluster) = clusters.get_opt(&cluster_name).await? else {
        return Err(blocked(
            "WaitingForCluster",
            format!("Cluster {cluster_name} does not exist"),
            Some(Duration::from_secs(30)),
        ));
    };
    if cluster.data["spec"]["paused"] == true || m.annotations().contains_key("cluster.x-k8s.io/paused") {
        return Err(blocked("Paused", "the Cluster or this object is paused", None));
    }

    // An instance already belongs to this machine: only report on it, never replace it.
    if let Some(id) = &m.spec.instance_id {
        return report(m, ctx, id, &machine).await;
    }
    if cluster.data["status"]["initialization"]["infrastructureProvisioned"] != true {
        return Err(blocked(
            "WaitingForClusterInfrastructure",
            "the Cluster's infrastructure is not provisioned yet",
            Some(Duration::from_secs(30)),
        ));
    }
    let Some(secret_name) = machine.data["spec"]["bootstrap"]["dataSecretName"].as_str().map(String::from) else {
        return Err(blocked(
            "WaitingForBootstrapData",
            "Machine.spec.bootstrap.dataSecretName is not set yet",
            Some(Duration::from_secs(30)),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let payload =
        secrets.get_opt(&secret_name).await?.and_then(|s| s.data).and_then(|d| d.get("value").cloned()).ok_or_else(
            || {
                blocked(
                    "WaitingForBootstrapData",
                    format!("Secret {secret_name} has no key value"),
                    Some(Duration::from_secs(15)),
                )
            },
        )?;

    tracing::info!(machine = %m.name_any(), "bootstrap data present; resolving the launch");
    let ec2 = ctx.ec2_for(m).await?;
    let mctx = machine_context(ctx, m, &machine, &cluster, &cluster_name).await?;
    let image = launch::resolve_ami(ec2.as_ref(), &m.spec, &mctx).await?;
    let (subnet, _az) = launch::resolve_subnet(ec2.as_ref(), &m.spec, &mctx).await?;
    let groups = resolve_security_groups(ec2.as_ref(), m, &mctx).await?;
    let request = launch::launch_spec(&m.spec, &mctx, &image, &subnet, groups, &payload.0)?;
    let (instance, created) = launch::ensure_instance(ec2.as_ref(), &request, &launch::identity_tags(&mctx)).await?;
    // Record the instance at once: status is not restored by `clusterctl move`, spec is.
    let api: Api<AWSWindowsMachine> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &m.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"instanceID": instance.id, "providerID": model::provider_id(&instance)}})),
    )
    .await?;
    if created {
        let note = format!("created instance {} ({}, {})", instance.id, m.spec.instance_type, image.name);
        let ev = KubeEvent {
            type_: EventType::Normal,
            reason: "InstanceCreated".into(),
            note: Some(note),
            action: "Create".into(),
            secondary: None,
        };
        let _ = ctx.recorder.publish(&ev, &m.object_ref(&())).await;
    }
    Ok(Action::requeue(Duration::from_secs(5)))
}

async fn machine_context(
    ctx: &Context,
    m: &AWSWindowsMachine,
    machine: &DynamicObject,
    cluster: &DynamicObject,
    cluster_name: &str,
) -> Result<MachineContext, Error> {
    let ns = m.namespace().unwrap_or_default();
    // The Windows version the bootstrap config names (for the AMI look-up).
    let boot = &machine.data["spec"]["bootstrap"]["configRef"];
    let mut windows_year = "2025".to_string();
    if boot["kind"] == "WindowsKubeadmConfig" {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("bootstrap.cluster.x-k8s.io", "v1alpha1", "WindowsKubeadmConfig"),
            "windowskubeadmconfigs",
        );
        let configs: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
        if let Some(c) = configs.get_opt(boot["name"].as_str().unwrap_or_default()).await? {
            windows_year = c.data["spec"]["windows"]["version"].as_str().unwrap_or("2025").to_string();
        }
    }
    // Subnets and the node security group of the cluster's AWSCluster, when it has one.
    let mut cluster_subnets = Vec::new();
    let mut node_sg = None;
    let infra = &cluster.data["spec"]["infrastructureRef"];
    if infra["kind"] == "AWSCluster" {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("infrastructure.cluster.x-k8s.io", "v1beta2", "AWSCluster"),
            "awsclusters",
        );
        let awsclusters: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
        if let Some(a) = awsclusters.get_opt(infra["name"].as_str().unwrap_or_default()).await? {
            for s in a.data["spec"]["network"]["subnets"].as_array().cloned().unwrap_or_default() {
                let id = s["resourceID"].as_str().or(s["id"].as_str()).unwrap_or_default().to_string();
                if s["isPublic"] != true && id.starts_with("subnet-") {
                    cluster_subnets.push((id, s["availabilityZone"].as_str().unwrap_or_default().to_string()));
                }
            }
            node_sg = a.data["status"]["networkStatus"]["securityGroups"]["node"]["id"].as_str().map(String::from);
        }
    }
    Ok(MachineContext {
        cluster: cluster_name.to_string(),
        namespace: ns,
        machine: m.name_any(),
        machine_uid: m.uid().unwrap_or_default(),
        failure_domain: machine.data["spec"]["failureDomain"].as_str().map(String::from),
        kubernetes_version: machine.data["spec"]["version"].as_str().unwrap_or_default().to_string(),
        windows_year,
        cluster_subnets,
        cluster_node_security_group: node_sg,
    })
}

async fn resolve_security_groups<E: Ec2>(
    ec2: &E,
    m: &AWSWindowsMachine,
    mctx: &MachineContext,
) -> Result<Vec<String>, Error> {
    if m.spec.security_groups.is_empty() {
        return mctx
            .cluster_node_security_group
            .clone()
            .map(|g| vec![g])
            .ok_or_else(|| LaunchError::NoSecurityGroup.into());
    }
    let mut out = Vec::new();
    for (i, r) in m.spec.security_groups.iter().enumerate() {
        match (&r.id, &r.filters) {
            (Some(id), _) => out.push(id.clone()),
            (None, Some(filters)) => {
                let f: Vec<(String, Vec<String>)> =
                    filters.iter().map(|f| (f.name.clone(), f.values.clone())).collect();
                let found = ec2.security_groups(&f).await.map_err(LaunchError::from)?;
                if found.is_empty() {
                    return Err(blocked(
                        "SecurityGroupNotFound",
                        format!("spec.securityGroups[{i}]: no security group matches the filters"),
                        Some(Duration::from_secs(120)),
                    ));
                }
                out.extend(found);
            }
            (None, None) => {
                return Err(blocked(
                    "SecurityGroupNotFound",
                    format!("spec.securityGroups[{i}]: needs id or filters"),
                    None,
                ));
            }
        }
    }
    Ok(out)
}

/// Reads the instance and writes what CAPI copies to the Machine; until the Machine has a Node,
/// also what the serial console says about bootstrap.
async fn report(m: &AWSWindowsMachine, ctx: &Context, id: &str, machine: &DynamicObject) -> Result<Action, Error> {
    let ec2 = ctx.ec2_for(m).await?;
    let Some(instance) = ec2.describe(id).await.map_err(LaunchError::from)? else {
        return Err(blocked(
            "InstanceTerminated",
            format!("instance {id} no longer exists; it is not recreated (Machines are immutable): delete the Machine"),
            None,
        ));
    };
    let mut status = m.status.clone().unwrap_or_default();
    status.instance_state = Some(instance.state.clone());
    let (ready, reason, message, requeue) = match model::read_state(&instance.state) {
        StateReading::Pending => {
            (false, "InstancePending", format!("instance {id} is starting"), Duration::from_secs(10))
        }
        StateReading::Running => {
            (true, "InstanceRunning", format!("instance {id} is running"), Duration::from_secs(300))
        }
        StateReading::Stopped => {
            (false, "InstanceStopped", format!("instance {id} is {}", instance.state), Duration::from_secs(60))
        }
        StateReading::Terminated => (
            false,
            "InstanceTerminated",
            format!("instance {id} was terminated outside capwin; it is not recreated: delete the Machine"),
            Duration::from_secs(600),
        ),
    };
    if ready {
        let mut addresses = Vec::new();
        if let Some(ip) = &instance.private_ip {
            addresses.push(MachineAddress { r#type: MachineAddressType::InternalIP, address: ip.clone() });
        }
        if let Some(dns) = &instance.private_dns {
            addresses.push(MachineAddress { r#type: MachineAddressType::InternalDNS, address: dns.clone() });
            addresses.push(MachineAddress { r#type: MachineAddressType::Hostname, address: dns.clone() });
        }
        status.addresses = addresses;
        status.failure_domain = Some(instance.availability_zone.clone());
        status.initialization = Some(InfraMachineInitialization { provisioned: Some(true) });
    }
    let mut requeue = requeue;
    let mut failure_event = None;
    if ready {
        let uid = m.uid().unwrap_or_default();
        match machine.data["status"]["nodeRef"]["name"].as_str().filter(|n| !n.is_empty()) {
            Some(node) => {
                // The Node exists: its own conditions tell the rest; the console is not read again.
                ctx.forget_console(&uid);
                let msg = serial::clean(&format!("node {node} joined"));
                set_condition(
                    &mut status.conditions,
                    NODE_BOOTSTRAP,
                    true,
                    "NodeJoined",
                    &msg,
                    m.metadata.generation,
                    &now(),
                );
            }
            None => {
                requeue = requeue.min(CONSOLE_READ_INTERVAL);
                if ctx.console_due(&uid, Instant::now()) {
                    failure_event = read_console(ctx, m, &ec2, id, &mut status).await;
                }
            }
        }
    }
    record(m, ctx, ready, reason, &message, Some(status)).await?;
    if let Some(note) = failure_event {
        let ev = KubeEvent {
            type_: EventType::Warning,
            reason: "BootstrapFailed".into(),
            note: Some(note),
            action: "Bootstrap".into(),
            secondary: None,
        };
        let _ = ctx.recorder.publish(&ev, &m.object_ref(&())).await;
    }
    Ok(Action::requeue(requeue))
}

/// Reads the console once and sets `NodeBootstrap` from it; returns the event note when this
/// is a failure not reported before. Best effort: a failed read changes nothing.
async fn read_console(
    ctx: &Context,
    m: &AWSWindowsMachine,
    ec2: &Ec2Client,
    id: &str,
    status: &mut InfraMachineStatus,
) -> Option<String> {
    ctx.metrics.console_reads.inc();
    // Bounded: diagnostics must not hold up the report of the instance itself.
    let text = match tokio::time::timeout(Duration::from_secs(15), ec2.console_output(id)).await {
        Ok(Ok(Some(t))) => t,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(machine = %m.name_any(), error = %e, "console output not readable");
            return None;
        }
        Err(_) => {
            tracing::debug!(machine = %m.name_any(), "console output read timed out");
            return None;
        }
    };
    let report = serial::parse(&text)?;
    let (ok, reason, msg) = bootstrap_condition(&report);
    let before =
        status.conditions.iter().find(|c| c.r#type == NODE_BOOTSTRAP).map(|c| (c.reason.clone(), c.message.clone()));
    set_condition(&mut status.conditions, NODE_BOOTSTRAP, ok, reason, &msg, m.metadata.generation, &now());
    let changed = before.as_ref().is_none_or(|(r, mm)| r != reason || *mm != msg);
    (reason == "BootstrapFailed" && changed).then_some(msg)
}

/// Terminates the instance and waits until EC2 reports it terminated.
async fn cleanup(m: &AWSWindowsMachine, ctx: &Context) -> Result<Action, Error> {
    ctx.forget_console(&m.uid().unwrap_or_default());
    let id = match &m.spec.instance_id {
        Some(id) => Some(id.clone()),
        None => {
            // A create may have happened before the ID was recorded.
            let mctx = MachineContext {
                cluster: m.labels().get("cluster.x-k8s.io/cluster-name").cloned().unwrap_or_default(),
                namespace: m.namespace().unwrap_or_default(),
                machine: m.name_any(),
                ..Default::default()
            };
            let found =
                ctx.ec2_for(m).await?.find_by_tags(&launch::identity_tags(&mctx)).await.map_err(LaunchError::from)?;
            model::live_instance(&found).map(|i| i.id.clone())
        }
    };
    let Some(id) = id else { return Ok(Action::await_change()) };
    let ec2 = ctx.ec2_for(m).await?;
    match ec2.describe(&id).await.map_err(LaunchError::from)? {
        None => Ok(Action::await_change()),
        Some(i) if i.state == "terminated" => Ok(Action::await_change()),
        Some(i) => {
            if i.state != "shutting-down" {
                ec2.terminate(&id).await.map_err(LaunchError::from)?;
            }
            Err(blocked("Deleting", format!("waiting for instance {id} to terminate"), Some(Duration::from_secs(5))))
        }
    }
}

/// Template status for autoscaling from zero: `nodeInfo.operatingSystem: windows` and the
/// instance type's CPU and memory as `capacity`.
pub async fn reconcile_template(t: Arc<AWSWindowsMachineTemplate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<AWSWindowsMachineTemplate> = Api::namespaced(ctx.client.clone(), &t.namespace().unwrap_or_default());
    let instance_type = &t.spec.template.spec.instance_type;
    let mut status = t.status.clone().unwrap_or_default();
    status.node_info = Some(NodeInfo { operating_system: Some("windows".into()), architecture: Some("amd64".into()) });
    let looked_up = match &ctx.ec2 {
        Some(ec2) => ec2.instance_type(instance_type).await,
        None => Err(crate::ec2::Ec2Error {
            operation: "DescribeInstanceTypes",
            code: "RegionNotSet".into(),
            message: "the manager has no AWS region: set --aws-region or AWS_REGION".into(),
        }),
    };
    match looked_up {
        Ok(Some((cpus, mib))) => {
            status.capacity = std::collections::BTreeMap::from([
                ("cpu".to_string(), Quantity(cpus.to_string())),
                ("memory".to_string(), Quantity(format!("{mib}Mi"))),
            ]);
            set_condition(&mut status.conditions, "Ready", true, "CapacityKnown", "", t.metadata.generation, &now());
        }
        Ok(None) => {
            let msg = format!("spec.template.spec.instanceType: EC2 does not know {instance_type}");
            set_condition(
                &mut status.conditions,
                "Ready",
                false,
                "InstanceTypeNotFound",
                &msg,
                t.metadata.generation,
                &now(),
            );
        }
        Err(e) => {
            set_condition(
                &mut status.conditions,
                "Ready",
                false,
                match e.code.as_str() {
                    "RegionNotSet" => "RegionNotSet",
                    _ if e.throttled() => "Throttled",
                    _ => "EC2Error",
                },
                &e.to_string(),
                t.metadata.generation,
                &now(),
            );
        }
    }
    if t.status.as_ref() != Some(&status) {
        api.patch_status(&t.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    Ok(Action::requeue(Duration::from_secs(3600)))
}

/// What the AWS controller reads from a Machine. Conditions, addresses and timestamps are left
/// out on purpose: CAPI rewrites them often, and they change nothing here.
pub fn machine_fingerprint(m: &DynamicObject) -> u64 {
    use std::hash::{Hash, Hasher};
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
    let mut h = std::collections::hash_map::DefaultHasher::new();
    relevant.to_string().hash(&mut h);
    h.finish()
}

/// The last fingerprint seen per Machine (by namespace/name), for the Machine watch.
#[derive(Clone, Default)]
pub struct MachineChanges(Arc<Mutex<HashMap<String, u64>>>);

impl MachineChanges {
    /// Whether `m` differs, in what this controller reads, from the last time it was seen.
    pub fn changed(&self, m: &DynamicObject) -> bool {
        let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
        let print = machine_fingerprint(m);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key, print) != Some(print)
    }
}

/// Runs the controllers for machines and their templates.
pub async fn run(ctx: Arc<Context>) {
    let templates: Api<AWSWindowsMachineTemplate> = match &ctx.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let template_ctx = ctx.clone();
    tokio::spawn(async move {
        Controller::new(templates, watcher::Config::default())
            .run(reconcile_template, |_, _, _| Action::requeue(Duration::from_secs(30)), template_ctx)
            .for_each(|_| async {})
            .await;
    });
    let (api, machines): (Api<AWSWindowsMachine>, Api<DynamicObject>) = match &ctx.namespace {
        Some(ns) => {
            (Api::namespaced(ctx.client.clone(), ns), Api::namespaced_with(ctx.client.clone(), ns, &capi("Machine")))
        }
        None => (Api::all(ctx.client.clone()), Api::all_with(ctx.client.clone(), &capi("Machine"))),
    };
    let seen = MachineChanges::default();
    Controller::new(api, watcher::Config::default())
        // A Machine gains its bootstrap data and its Node on the Machine. Only those changes
        // trigger a reconcile: CAPI rewrites Machine status all the time, and each reconcile of a
        // running machine costs a DescribeInstances (measured: one a second without this filter).
        .watches_with(machines, capi("Machine"), watcher::Config::default(), move |m: DynamicObject| {
            let r = &m.data["spec"]["infrastructureRef"];
            if r["kind"] != "AWSWindowsMachine" || !seen.changed(&m) {
                return None;
            }
            Some(
                kube::runtime::reflector::ObjectRef::new(r["name"].as_str().unwrap_or_default())
                    .within(&m.namespace().unwrap_or_default()),
            )
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "aws controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_relevant_machine_changes_trigger_a_reconcile() {
        let base = json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "w-0", "namespace": "ns", "uid": "u1", "resourceVersion": "1"},
            "spec": {"clusterName": "c", "version": "v1.34.13", "bootstrap": {"configRef": {"name": "w-0"}},
                "infrastructureRef": {"kind": "AWSWindowsMachine", "name": "w-0"}},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let seen = MachineChanges::default();
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
    fn the_console_is_read_at_most_once_per_interval() {
        let t0 = Instant::now();
        assert!(should_read_console(None, t0), "never read: read now");
        assert!(!should_read_console(Some(t0), t0));
        assert!(!should_read_console(Some(t0), t0 + CONSOLE_READ_INTERVAL - Duration::from_millis(1)));
        assert!(should_read_console(Some(t0), t0 + CONSOLE_READ_INTERVAL));
        assert!(should_read_console(Some(t0), t0 + CONSOLE_READ_INTERVAL * 10));
        // A clock reading before the last read (another task's later `now`) never reads early.
        assert!(!should_read_console(Some(t0 + Duration::from_secs(5)), t0));
        assert!(CONSOLE_READ_INTERVAL >= Duration::from_secs(60));
    }

    fn report(text: &str) -> serial::Report {
        serial::parse(text).expect("a record")
    }

    #[test]
    fn console_reports_become_the_node_bootstrap_condition() {
        let failed = report(
            "CAPWIN-BOOTSTRAP {\"step\":\"join\",\"status\":\"failed\",\"message\":\"kubeadm.exe exited with code 1\"}",
        );
        assert_eq!(
            bootstrap_condition(&failed),
            (false, "BootstrapFailed", "step join exited 80: kubeadm.exe exited with code 1".to_string())
        );
        let running = report("CAPWIN-BOOTSTRAP {\"step\":\"containerd\",\"status\":\"running\",\"message\":\"\"}");
        assert_eq!(bootstrap_condition(&running), (false, "BootstrapInProgress", "at step containerd".to_string()));
        let done =
            report("CAPWIN-BOOTSTRAP {\"step\":\"done\",\"status\":\"succeeded\",\"message\":\"node ip-10-0-0-7\"}");
        assert_eq!(
            bootstrap_condition(&done),
            (true, "BootstrapSucceeded", "bootstrap succeeded: node ip-10-0-0-7".to_string())
        );
    }

    #[test]
    fn condition_messages_stay_bounded_and_free_of_tokens() {
        let long = format!(
            "CAPWIN-BOOTSTRAP {{\"step\":\"join\",\"status\":\"failed\",\"message\":\"abcdef.0123456789abcdef {}\"}}",
            "\\u001b[31m x".repeat(500)
        );
        let (_, _, msg) = bootstrap_condition(&report(&long));
        assert!(msg.chars().count() <= serial::MESSAGE_LIMIT, "{}", msg.len());
        assert!(!msg.contains("0123456789abcdef") && !msg.chars().any(char::is_control), "{msg}");
    }
}
