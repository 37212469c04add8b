//! The `AWSWindowsMachine` reconciler (CAPI v1beta2 infrastructure-machine contract): waits for
//! the bootstrap data, creates one EC2 instance idempotently, reports `spec.providerID`,
//! addresses and `status.initialization.provisioned`, mirrors the instance state in `Ready`, and
//! on deletion terminates the instance and waits until it is gone.

use std::sync::Arc;
use std::time::Duration;

use capwin_api::aws::{AWSWindowsMachine, AWSWindowsMachineTemplate};
use capwin_api::common::InfraMachineStatus;
use capwin_api::common::NodeInfo;
use capwin_api::common::{InfraMachineInitialization, MachineAddress, MachineAddressType, set_condition};
use capwin_infra::diagnostics::{self, Slots};
use capwin_infra::machine::{self, Created, Deletion, MachineCloud, Note, Owners, Report};
use capwin_infra::status::Writer;
pub use capwin_infra::{Error, blocked};
use capwin_infra::{contract, watch};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ApiResource, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::batch::Batched;
use crate::ec2::{Counting, Ec2, SdkEc2};
use crate::identity;
use crate::launch::{self, LaunchError, MachineContext};
use crate::metrics::Metrics;
use crate::model::{self, StateReading};

/// Finalizer holding the object until its instance is terminated.
pub const FINALIZER: &str = "infrastructure.cluster.x-k8s.io/capwin-aws";

/// What the reconciler shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// The Machines and Clusters the controller watches, read instead of fetched.
    pub cache: capwin_infra::cache::CapiCache,
    /// EC2 with the manager's own credentials (the default chain); `None` without a region.
    pub ec2: Option<Ec2Client>,
    pub namespace: Option<String>,
    /// `None` when neither `--aws-region` nor `AWS_REGION` names one: the controller still runs
    /// (a crash loop would hide the reason) and every machine says `RegionNotSet`.
    pub region: Option<String>,
    /// Where `AWSClusterStaticIdentity` Secrets live (the manager's namespace).
    pub identity_namespace: String,
    pub metrics: Arc<Metrics>,
    /// EC2 clients per cluster identity (CAPA's identity kinds), rebuilt when one changes.
    identities: identity::Identities,
    /// When each machine's console was last read (by machine UID), for the rate limit.
    console_reads: Slots,
    /// AMI look-up answers, reused for a few minutes.
    amis: launch::AmiCache,
    /// The status last written per machine.
    written: capwin_infra::WriteMemo,
    /// Consecutive blocks per machine.
    backoff: capwin_infra::Backoff,
}

/// An EC2 client: per-machine instance reads batched (`crate::batch`), every call that reaches
/// EC2 counted.
pub type Ec2Client = Arc<Batched<Counting<SdkEc2>>>;

/// How long the first instance read of a batch waits for others to join it.
const BATCH_WINDOW: Duration = Duration::from_millis(200);

/// The EC2 client the reconciler uses for `sdk`.
pub(crate) fn ec2_client(sdk: SdkEc2, metrics: Arc<Metrics>) -> Ec2Client {
    Arc::new(Batched::new(Counting::with_metrics(sdk, metrics), BATCH_WINDOW))
}

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
            Some(r) => Some(ec2_client(SdkEc2::new(r, None, None).await, metrics.clone())),
            None => None,
        };
        let identities = identity::Identities::new(
            client.clone(),
            identity_namespace.clone(),
            region.clone().unwrap_or_default(),
            metrics.clone(),
        );
        Arc::new(Self {
            client,
            recorder,
            cache: Default::default(),
            ec2,
            namespace,
            region,
            identities,
            identity_namespace,
            metrics,
            console_reads: Slots::default(),
            amis: launch::AmiCache::default(),
            written: Default::default(),
            backoff: Default::default(),
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

    fn writer(&self) -> Writer<'_> {
        Writer {
            client: &self.client,
            recorder: &self.recorder,
            normal_reasons: &["InstancePending", "InstanceCreated"],
            written: &self.written,
        }
    }

    /// The EC2 client for a machine: the credentials of the identity its cluster's `AWSCluster`
    /// names in `spec.identityRef` (the cluster from the `cluster.x-k8s.io/cluster-name` label,
    /// as CAPA's `AWSMachine` controller finds it), else the manager's own. See
    /// [`identity`] for the rules.
    /// Without the label (CAPI sets it with the owner reference) nothing is done with any
    /// credentials, as CAPA does nothing, except deleting a machine that never had an instance.
    pub async fn ec2_for(&self, m: &AWSWindowsMachine) -> Result<Ec2Client, Error> {
        let default = self.default_ec2()?;
        let cluster = m.labels().get("cluster.x-k8s.io/cluster-name").map(String::as_str);
        if cluster.is_none() && (m.metadata.deletion_timestamp.is_none() || m.spec.instance_id.is_some()) {
            return Err(blocked(
                "ClusterNotFound",
                "metadata.labels: no cluster.x-k8s.io/cluster-name (CAPI sets it): the cluster's AWSCluster names the AWS identity",
                Some(Duration::from_secs(30)),
            ));
        }
        self.identities.ec2(&self.cache, default, &m.namespace().unwrap_or_default(), cluster).await
    }

    /// The EC2 client for a template's look-ups: its cluster's identity, as for its machines.
    async fn ec2_for_template(&self, t: &AWSWindowsMachineTemplate) -> Result<Ec2Client, Error> {
        let default = self.default_ec2()?;
        let cluster = identity::template_cluster(t.owner_references(), t.labels());
        self.identities.ec2(&self.cache, default, &t.namespace().unwrap_or_default(), cluster.as_deref()).await
    }
}

/// A launch problem as a blocking condition: EC2 trouble retries soon, bad input later.
fn launch_error(e: LaunchError) -> Error {
    let retry = match &e {
        LaunchError::Ec2(_) => Duration::from_secs(20),
        _ => Duration::from_secs(120),
    };
    blocked(e.reason(), e.to_string(), Some(retry))
}

use capwin_api::common::now_rfc3339 as now;

impl MachineCloud for Context {
    type Machine = AWSWindowsMachine;
    const KIND: &'static str = "AWSWindowsMachine";
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
    fn recorded(&self, m: &AWSWindowsMachine) -> bool {
        m.spec.instance_id.is_some()
    }
    async fn create(
        &self,
        m: &AWSWindowsMachine,
        owners: &Owners,
        data: contract::BootstrapData,
    ) -> Result<Created, Error> {
        create(m, self, owners, data).await
    }
    async fn report(
        &self,
        m: &AWSWindowsMachine,
        owners: &Owners,
        draft: &mut InfraMachineStatus,
    ) -> Result<Report, Error> {
        report(m, self, owners, draft).await
    }
    async fn delete(&self, m: &AWSWindowsMachine, _: Option<&Owners>) -> Result<Deletion, Error> {
        cleanup(m, self).await
    }
}

pub async fn reconcile(obj: Arc<AWSWindowsMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    machine::reconcile(obj, ctx).await
}

pub fn error_policy(obj: Arc<AWSWindowsMachine>, err: &Error, ctx: Arc<Context>) -> Action {
    machine::error_policy(obj, err, ctx)
}

/// Resolves the launch (image, subnet, security groups) and makes the one instance.
async fn create(
    m: &AWSWindowsMachine,
    ctx: &Context,
    owners: &Owners,
    data: contract::BootstrapData,
) -> Result<Created, Error> {
    let ns = m.namespace().unwrap_or_default();
    let payload = &data.value;
    let port = diagnostics::port_annotation(payload);
    let ec2 = ctx.ec2_for(m).await?;
    let mctx = machine_context(ctx, m, owners, &data).await?;
    let image = match launch::ami_lookup(&m.spec, &mctx) {
        Some((owner, pattern)) => {
            let who = ctx.identities.key_of(&ec2);
            let key = (who, owner, pattern);
            match ctx.amis.get(&key, std::time::Instant::now()) {
                Some(i) => i,
                None => {
                    let i = launch::resolve_ami(ec2.as_ref(), &m.spec, &mctx).await.map_err(launch_error)?;
                    ctx.amis.put(key, i.clone(), std::time::Instant::now());
                    i
                }
            }
        }
        None => launch::resolve_ami(ec2.as_ref(), &m.spec, &mctx).await.map_err(launch_error)?,
    };
    let (subnet, _az) = launch::resolve_subnet(ec2.as_ref(), &m.spec, &mctx).await.map_err(launch_error)?;
    let groups = resolve_security_groups(ec2.as_ref(), m, &mctx).await?;
    let request = launch::launch_spec(&m.spec, &mctx, &image, &subnet, groups, payload).map_err(launch_error)?;
    let (instance, created) =
        launch::ensure_instance(ec2.as_ref(), &request, &launch::identity_tags(&mctx)).await.map_err(launch_error)?;
    // The one early write (crash safety, as CAPA records the instance ID at once): spec, not
    // status, because `clusterctl move` restores spec and not status.
    let api: Api<AWSWindowsMachine> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &m.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"annotations": {diagnostics::SERIAL_PORT_ANNOTATION: port}},
            "spec": {"instanceID": instance.id, "providerID": model::provider_id(&instance)},
        })),
    )
    .await?;
    let mut notes = Vec::new();
    if created {
        let note = format!("created instance {} ({}, {})", instance.id, m.spec.instance_type, image.name);
        notes.push(Note::normal("InstanceCreated", note, "Create"));
    }
    Ok(Created { requeue: Duration::from_secs(5), notes })
}

async fn machine_context(
    ctx: &Context,
    m: &AWSWindowsMachine,
    owners: &Owners,
    data: &contract::BootstrapData,
) -> Result<MachineContext, Error> {
    let ns = m.namespace().unwrap_or_default();
    let machine = &owners.machine;
    let windows_year = contract::windows_year(&ctx.client, machine, data).await?;
    // Subnets and the node security group of the cluster's AWSCluster, when it has one.
    let mut cluster_subnets = Vec::new();
    let mut node_sg = None;
    if let Some(name) = owners.cluster.infrastructure_named("AWSCluster") {
        let found = contract::cached_or_get(&ctx.cache, &ctx.client, &aws_cluster_resource(), Some(&ns), name).await?;
        if let Some(a) = found {
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
        cluster: owners.cluster.name.clone(),
        namespace: ns,
        machine: m.name_any(),
        machine_uid: m.uid().unwrap_or_default(),
        failure_domain: machine.failure_domain.clone(),
        kubernetes_version: machine.version.clone(),
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
            .ok_or_else(|| launch_error(LaunchError::NoSecurityGroup));
    }
    let mut out = Vec::new();
    for (i, r) in m.spec.security_groups.iter().enumerate() {
        match (&r.id, &r.filters) {
            (Some(id), _) => out.push(id.clone()),
            (None, Some(filters)) => {
                let f: Vec<(String, Vec<String>)> =
                    filters.iter().map(|f| (f.name.clone(), f.values.clone())).collect();
                let found = ec2.security_groups(&f).await.map_err(|e| launch_error(e.into()))?;
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
async fn report(
    m: &AWSWindowsMachine,
    ctx: &Context,
    owners: &Owners,
    status: &mut InfraMachineStatus,
) -> Result<Report, Error> {
    let id = m.spec.instance_id.as_deref().unwrap_or_default();
    let ec2 = ctx.ec2_for(m).await?;
    let Some(instance) = ec2.describe(id).await.map_err(|e| launch_error(e.into()))? else {
        return Err(blocked(
            "InstanceTerminated",
            format!("instance {id} no longer exists; it is not recreated (Machines are immutable): delete the Machine"),
            None,
        ));
    };
    let mut notes = Vec::new();
    if status.instance_state.is_none() {
        // The first look after the create: terminate any other live instance with this
        // machine's tags (a lost RunInstances answer on an endpoint that ignores ClientToken).
        notes = sweep_duplicates(m, &ec2, id).await?;
    }
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
    if ready {
        let uid = m.uid().unwrap_or_default();
        let read = || read_console(m, &ec2, id);
        let (cap, note) = diagnostics::follow(
            &ctx.console_reads,
            &ctx.metrics,
            capwin_payload::Cloud::Aws,
            m.annotations().get(diagnostics::SERIAL_PORT_ANNOTATION).map(String::as_str),
            owners.machine.node_name.as_deref(),
            &uid,
            status,
            m.metadata.generation,
            read,
        )
        .await;
        requeue = cap.map_or(requeue, |c| requeue.min(c));
        notes.extend(note.map(|n| Note::warning("BootstrapFailed", n, "Diagnose")));
    }
    if ready {
        let (event, retry) = lock_down_metadata(m, &ec2, &instance, owners.machine.joined(), status).await;
        notes.extend(event);
        requeue = retry.map_or(requeue, |r| requeue.min(r));
    }
    Ok(Report::Read { ready, reason, message, requeue, notes })
}

/// The ownership tags of a machine's instances, from the object alone (no Machine needed).
fn tags_of(m: &AWSWindowsMachine) -> Vec<(String, String)> {
    launch::identity_tags(&MachineContext {
        cluster: m.labels().get("cluster.x-k8s.io/cluster-name").cloned().unwrap_or_default(),
        namespace: m.namespace().unwrap_or_default(),
        machine: m.name_any(),
        ..Default::default()
    })
}

/// Terminates every live instance carrying the machine's tags except `keep`, with a Warning
/// event for each.
async fn sweep_duplicates(m: &AWSWindowsMachine, ec2: &Ec2Client, keep: &str) -> Result<Vec<Note>, Error> {
    let mut notes = Vec::new();
    let found = ec2.find_by_tags(&tags_of(m)).await.map_err(|e| launch_error(e.into()))?;
    for d in model::duplicates(&found, keep) {
        ec2.terminate(&d.id).await.map_err(|e| launch_error(e.into()))?;
        let note = format!("terminated instance {}: a duplicate of {keep} with this machine's tags", d.id);
        notes.push(Note::warning("DuplicateInstanceTerminated", note, "Create"));
    }
    Ok(notes)
}

/// Condition type reporting whether the instance's metadata service requires IMDSv2 tokens.
pub const IMDS_CONDITION: &str = "InstanceMetadataLockedDown";

/// Once the Node has joined, switches the instance to `httpTokens: required` (again, when it
/// finds it reverted), and sets [`IMDS_CONDITION`]. Returns the event to publish and, when the
/// switch failed, how soon to try again. Never affects `Ready`.
async fn lock_down_metadata(
    m: &AWSWindowsMachine,
    ec2: &Ec2Client,
    instance: &model::Instance,
    joined: bool,
    status: &mut InfraMachineStatus,
) -> (Option<Note>, Option<Duration>) {
    let enabled = m.spec.instance_metadata_options.lock_down_after_join.unwrap_or(true);
    let plan = model::imds_lockdown(enabled, joined, instance.http_tokens.as_deref());
    let was_locked = status
        .conditions
        .iter()
        .any(|c| c.r#type == IMDS_CONDITION && c.status == capwin_api::common::ConditionStatus::True);
    let (mut locked, mut reason, mut message) = (plan.locked, plan.reason, plan.message.clone());
    let mut event = None;
    let mut retry = None;
    if plan.require_tokens {
        match ec2.require_imds_tokens(&instance.id).await {
            Ok(()) if was_locked => {
                event = Some(Note::warning(
                    "InstanceMetadataReverted",
                    format!("instance {} allowed IMDSv1 again; set httpTokens required again", instance.id),
                    "LockDown",
                ));
            }
            // The first lock-down is what the condition says (its transition time is when);
            // an event is kept for the trouble case, a reverted setting.
            Ok(()) => {}
            Err(e) => {
                tracing::info!(machine = %m.name_any(), error = %e, "could not require IMDSv2 tokens; retrying");
                (locked, reason, message) = (false, "LockDownFailed", format!("ModifyInstanceMetadataOptions: {e}"));
                retry = Some(Duration::from_secs(20));
            }
        }
    }
    set_condition(&mut status.conditions, IMDS_CONDITION, locked, reason, &message, m.metadata.generation, &now());
    (event, retry)
}

/// The instance's console text, or `None` when it cannot be read now (best effort).
async fn read_console(m: &AWSWindowsMachine, ec2: &Ec2Client, id: &str) -> Option<String> {
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
    Some(text)
}

/// Terminates every live instance of the machine (the recorded one and any other carrying its
/// ownership tags, e.g. one created before the ID was recorded) and waits until EC2 reports them
/// gone.
async fn cleanup(m: &AWSWindowsMachine, ctx: &Context) -> Result<Deletion, Error> {
    ctx.console_reads.forget(&m.uid().unwrap_or_default());
    let ec2 = ctx.ec2_for(m).await?;
    let found = ec2.find_by_tags(&tags_of(m)).await.map_err(|e| launch_error(e.into()))?;
    let mut remaining: Vec<model::Instance> = found.into_iter().filter(|i| i.state != "terminated").collect();
    if let Some(id) = &m.spec.instance_id
        && !remaining.iter().any(|i| &i.id == id)
        && let Some(i) = ec2.describe(id).await.map_err(|e| launch_error(e.into()))?
        && i.state != "terminated"
    {
        remaining.push(i);
    }
    if remaining.is_empty() {
        return Ok(Deletion::Gone);
    }
    for i in remaining.iter().filter(|i| i.state != "shutting-down") {
        ec2.terminate(&i.id).await.map_err(|e| launch_error(e.into()))?;
    }
    let ids: Vec<&str> = remaining.iter().map(|i| i.id.as_str()).collect();
    Ok(Deletion::Waiting {
        message: format!("waiting for instance(s) {} to terminate", ids.join(", ")),
        retry: Duration::from_secs(5),
    })
}

/// Template status for autoscaling from zero: `nodeInfo.operatingSystem: windows` and the
/// instance type's CPU and memory as `capacity`.
pub async fn reconcile_template(t: Arc<AWSWindowsMachineTemplate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<AWSWindowsMachineTemplate> = Api::namespaced(ctx.client.clone(), &t.namespace().unwrap_or_default());
    let instance_type = &t.spec.template.spec.instance_type;
    let mut status = t.status.clone().unwrap_or_default();
    status.node_info = Some(NodeInfo { operating_system: Some("windows".into()), architecture: Some("amd64".into()) });
    let mut requeue = Duration::from_secs(3600);
    let looked_up = match ctx.ec2_for_template(&t).await {
        Ok(ec2) => ec2.instance_type(instance_type).await,
        Err(Error::Blocked(capwin_infra::Blocked { reason, message, retry })) => {
            requeue = retry.unwrap_or(requeue);
            Err(crate::ec2::Ec2Error { operation: "DescribeInstanceTypes", code: reason.into(), message })
        }
        Err(e) => return Err(e),
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
                    c if identity::REASONS.contains(&c) => c,
                    _ if e.throttled() => "Throttled",
                    _ => "EC2Error",
                },
                &if e.code == "RegionNotSet" || identity::REASONS.contains(&e.code.as_str()) {
                    e.message.clone()
                } else {
                    e.to_string()
                },
                t.metadata.generation,
                &now(),
            );
        }
    }
    if t.status.as_ref() != Some(&status) {
        api.patch_status(&t.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    Ok(Action::requeue(requeue))
}

/// Runs the controllers for machines and their templates; `queue` receives their reconcile
/// queue delays.
/// CAPA's `AWSCluster`.
fn aws_cluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("infrastructure.cluster.x-k8s.io", "v1beta2", "AWSCluster"),
        "awsclusters",
    )
}

pub async fn run(ctx: Arc<Context>, queue: capwin_infra::QueueMetrics, settings: watch::RunSettings) {
    let client = ctx.client.clone();
    let shared = ctx.clone();
    // The AWSClusters (subnets, node security group, identityRef), CAPA's identities and the
    // Namespaces (their labels decide `allowedNamespaces` selectors) are read from caches too.
    shared.cache.reflect_kind(client.clone(), &aws_cluster_resource(), true, settings.namespace.as_deref());
    for kind in [identity::CONTROLLER_KIND, identity::STATIC_KIND, identity::ROLE_KIND] {
        if let Some(ar) = identity::resource(kind) {
            shared.cache.reflect_kind(client.clone(), &ar, false, None);
        }
    }
    let namespaces = ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&());
    shared.cache.reflect_kind(client.clone(), &namespaces, false, None);
    watch::run_controllers::<AWSWindowsMachine, AWSWindowsMachineTemplate, _, _, _, _, _, _>(
        client,
        &shared.cache,
        &settings,
        "AWSWindowsMachine",
        queue,
        ctx,
        reconcile,
        error_policy,
        reconcile_template,
    )
    .await;
}
