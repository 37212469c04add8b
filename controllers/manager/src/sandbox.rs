//! `capwin sandbox`: the whole flow on this machine, from a real cluster template to joined
//! Windows nodes, with nothing to install but Python (for moto).
//!
//! Brings up the test kit (an in-memory management API server with capwin's and Cluster API's
//! CRDs, a second one as the workload cluster, and the CAPI-core simulator), substitutes the
//! template's clusterctl variables with sandbox values (`--var` overrides them), applies it, and
//! runs capwin's controllers in-process exactly as `capwin manager` runs them: the bootstrap
//! controller, and each cloud's machine controller against a local endpoint of that cloud
//! ([`SandboxCloud`]: AWS with moto, Azure with the kit's fake ARM). Which clouds run follows
//! from the template's kinds. It prints each Windows machine's progress (bootstrap data, the
//! instance or VM as the cloud reports it, providerID, Node) until every one has joined.
//! Rendered payloads land in `--out`.
//!
//! One run applies one template (one cluster, as `clusterctl generate cluster` makes one); the
//! default is the AWS flavour, `--template azure-windows-calico` the Azure one.
//!
//! Played, and labelled so in the output: CAPA's `AWSCluster` controller and its creation of the
//! `default` `AWSClusterControllerIdentity` `(simulated CAPA)`, CAPZ's `AzureCluster` controller `(simulated CAPZ)`, CAPI core (the simulator, and
//! `(simulated CAPI core)` for the endpoint it copies), and the Windows VM booting and joining
//! (the Node appears once the Machine has a providerID).

pub(crate) mod aws;
pub(crate) mod azure;
pub(crate) mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use capwin_bootstrap::metrics::Metrics;
use capwin_bootstrap::reconcile::{Context, Settings};
use capwin_testkit::apiserver::{ApiServer, Config};
use capwin_testkit::capi::{CapiSim, SimConfig};
use clap::Args;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

pub(crate) const CAPWIN_CRDS: [&str; 6] = [
    include_str!("../../../crds/bootstrap/bootstrap.cluster.x-k8s.io_windowskubeadmconfigs.yaml"),
    include_str!("../../../crds/bootstrap/bootstrap.cluster.x-k8s.io_windowskubeadmconfigtemplates.yaml"),
    include_str!("../../../crds/infrastructure/infrastructure.cluster.x-k8s.io_awswindowsmachines.yaml"),
    include_str!("../../../crds/infrastructure/infrastructure.cluster.x-k8s.io_awswindowsmachinetemplates.yaml"),
    include_str!("../../../crds/infrastructure/infrastructure.cluster.x-k8s.io_azurewindowsmachines.yaml"),
    include_str!("../../../crds/infrastructure/infrastructure.cluster.x-k8s.io_azurewindowsmachinetemplates.yaml"),
];
/// Every Cluster API kind the templates hold (see `test/kit/capi-crds/README.md`).
pub(crate) const CAPI_CRDS: [&str; 17] = [
    include_str!("../../../test/kit/capi-crds/cluster.x-k8s.io_clusters.yaml"),
    include_str!("../../../test/kit/capi-crds/cluster.x-k8s.io_machines.yaml"),
    include_str!("../../../test/kit/capi-crds/cluster.x-k8s.io_machinedeployments.yaml"),
    include_str!("../../../test/kit/capi-crds/cluster.x-k8s.io_machinehealthchecks.yaml"),
    include_str!("../../../test/kit/capi-crds/addons.cluster.x-k8s.io_clusterresourcesets.yaml"),
    include_str!("../../../test/kit/capi-crds/addons.cluster.x-k8s.io_helmchartproxies.yaml"),
    include_str!("../../../test/kit/capi-crds/addons.cluster.x-k8s.io_helmreleaseproxies.yaml"),
    include_str!("../../../test/kit/capi-crds/controlplane.cluster.x-k8s.io_kubeadmcontrolplanes.yaml"),
    include_str!("../../../test/kit/capi-crds/bootstrap.cluster.x-k8s.io_kubeadmconfigtemplates.yaml"),
    include_str!("../../../test/kit/capi-crds/infrastructure.cluster.x-k8s.io_awsclusters.yaml"),
    include_str!("../../../test/kit/capi-crds/infrastructure.cluster.x-k8s.io_awsmachinetemplates.yaml"),
    include_str!("../../../test/kit/capi-crds/infrastructure.cluster.x-k8s.io_awsclustercontrolleridentities.yaml"),
    include_str!("../../../test/kit/capi-crds/infrastructure.cluster.x-k8s.io_awsclusterroleidentities.yaml"),
    include_str!("../../../test/kit/capi-crds/infrastructure.cluster.x-k8s.io_awsclusterstaticidentities.yaml"),
    include_str!("../../../test/kit/capi-crds/infrastructure.cluster.x-k8s.io_azureclusters.yaml"),
    include_str!("../../../test/kit/capi-crds/infrastructure.cluster.x-k8s.io_azureclusteridentities.yaml"),
    include_str!("../../../test/kit/capi-crds/infrastructure.cluster.x-k8s.io_azuremachinetemplates.yaml"),
];

#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Folder for the rendered payloads (and the local cloud endpoints' state and logs, in kit/).
    #[arg(long, default_value = "sandbox-out")]
    out: PathBuf,
    /// The flavour of templates/ to apply: aws-windows-calico, azure-windows-calico or
    /// azure-windows-flannel.
    #[arg(long, default_value = template::DEFAULT_TEMPLATE, conflicts_with = "cluster")]
    template: String,
    /// A file of objects (or a cluster template) to apply instead of a flavour of templates/.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// A clusterctl variable for the template, NAME=VALUE (repeatable); overrides the sandbox's
    /// values (CLUSTER_NAME=demo, NAMESPACE=default, KUBERNETES_VERSION=v1.35.10, ...).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = template::parse_assignment)]
    vars: Vec<(String, String)>,
    /// Give up after this long.
    #[arg(long, default_value = "120s", value_parser = crate::manager::parse_duration)]
    timeout: Duration,
    /// Keep the API servers (and the cloud endpoints) running after the machines joined.
    #[arg(long)]
    keep_running: bool,
}

/// A cloud whose Windows machines the sandbox runs for real against a local endpoint: AWS with
/// moto (`test/kit/aws`), Azure with the fake ARM server (`test/kit/azure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SandboxCloud {
    Aws,
    Azure,
}

impl SandboxCloud {
    /// The clouds the kinds of a template need (`AWSCluster`, `AzureWindowsMachineTemplate`…).
    pub fn needed_by<'a>(kinds: impl IntoIterator<Item = &'a str>) -> BTreeSet<SandboxCloud> {
        kinds
            .into_iter()
            .filter_map(|kind| {
                if kind.starts_with("AWS") {
                    Some(SandboxCloud::Aws)
                } else if kind.starts_with("Azure") {
                    Some(SandboxCloud::Azure)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// The kinds of a multi-document YAML stream's top-level objects, read before substitution (a
/// template needs variables before it parses): the `kind:` lines at column 0.
fn top_level_kinds(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.strip_prefix("kind:")).map(str::trim).filter(|k| !k.is_empty()).collect()
}

/// A started cloud.
enum Cloud {
    Aws(aws::AwsCloud),
    Azure(Box<azure::AzureCloud>),
}

impl Cloud {
    fn machine_kind(&self) -> &'static str {
        match self {
            Cloud::Aws(_) => aws::MACHINE_KIND,
            Cloud::Azure(_) => azure::MACHINE_KIND,
        }
    }
    async fn seed_account(&self, objects: &[Value], say: &dyn Fn(String)) -> anyhow::Result<()> {
        match self {
            Cloud::Aws(c) => c.seed_account(objects, say).await,
            Cloud::Azure(c) => c.seed_account(objects, say).await,
        }
    }
    async fn start_controller(&self, mgmt: Client, ns: &str) -> tokio::task::JoinHandle<()> {
        match self {
            Cloud::Aws(c) => c.start_controller(mgmt, ns).await,
            Cloud::Azure(c) => c.start_controller(mgmt, ns).await,
        }
    }
    async fn step(&mut self, mgmt: &Client, ns: &str, say: &dyn Fn(String)) -> anyhow::Result<()> {
        match self {
            Cloud::Aws(c) => c.step(mgmt, ns, say).await,
            Cloud::Azure(c) => c.step(mgmt, ns, say).await,
        }
    }
    async fn describe_machine(&self, mgmt: &Client, ns: &str, name: &str) -> anyhow::Result<InstanceView> {
        match self {
            Cloud::Aws(c) => c.describe_machine(mgmt, ns, name).await,
            Cloud::Azure(c) => c.describe_machine(mgmt, ns, name).await,
        }
    }
    /// What the cloud holds once every machine joined (the sandbox's proof beyond the lines).
    async fn summary(&self, say: &dyn Fn(String)) -> anyhow::Result<()> {
        match self {
            Cloud::Aws(_) => Ok(()),
            Cloud::Azure(c) => c.summary(say).await,
        }
    }
}

/// (simulated CAPI core) Copies the endpoint of each ready infrastructure cluster of `kind`
/// (`status.ready`, as CAPA and CAPZ report it under the v1beta1 contract) into the `Cluster`s
/// that reference it and have none yet.
pub(crate) async fn copy_endpoint(
    mgmt: &Client,
    ns: &str,
    kind: &str,
    infra: &ApiResource,
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), ns, infra);
    let clusters: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), ns, &capwin_testkit::capi::capi("Cluster"));
    for c in clusters.list(&ListParams::default()).await? {
        let r = &c.data["spec"]["infrastructureRef"];
        let Some(name) = r["name"].as_str().filter(|_| r["kind"] == kind) else { continue };
        if !c.data["spec"]["controlPlaneEndpoint"]["host"].as_str().unwrap_or_default().is_empty() {
            continue;
        }
        let Some(ic) = api.get_opt(name).await? else { continue };
        let endpoint = &ic.data["spec"]["controlPlaneEndpoint"];
        if ic.data["status"]["ready"] != true || !endpoint["host"].is_string() {
            continue;
        }
        let patch = serde_json::json!({"spec": {"controlPlaneEndpoint": endpoint}});
        clusters.patch(&c.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        say(format!(
            "(simulated CAPI core) Cluster {}: control plane endpoint {}:{} from {kind} {name}",
            c.name_any(),
            endpoint["host"].as_str().unwrap_or_default(),
            endpoint["port"]
        ));
    }
    Ok(())
}

fn client(url: &str, ns: &str) -> anyhow::Result<Client> {
    let mut cfg = kube::Config::new(url.parse()?);
    cfg.default_namespace = ns.into();
    Ok(Client::try_from(cfg)?)
}

pub(crate) fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural(kind))
}

/// The resource name of a kind as the CRDs of the sandbox spell it (`AzureClusterIdentity` →
/// `azureclusteridentities`); a test holds it to every embedded CRD.
fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{lower}s"),
    }
}

/// A machine's instance as its cloud reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceView {
    /// `EC2 instance i-… running in us-east-1a at 10.0.0.4 (moto)`, once there is one.
    pub instance: Option<String>,
    /// The infrastructure machine's `Ready` reason (what it waits for, or what is wrong).
    pub reason: String,
}

/// What the sandbox has seen of one Windows machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Seen {
    bootstrap_reason: String,
    data_secret: Option<String>,
    instance: InstanceView,
    provider_id: Option<String>,
    node: Option<String>,
}

/// The lines to print for what changed between two sightings of a machine, in the order of a
/// machine's life: bootstrap data, the instance, the providerID, the Node; and, while none of
/// those moved, what the controllers wait for.
fn progress_lines(before: &Seen, now: &Seen) -> Vec<String> {
    let mut lines = Vec::new();
    if now.data_secret.is_some() && before.data_secret.is_none() {
        lines.push(format!("bootstrap data ready (Secret {})", now.data_secret.as_deref().unwrap_or_default()));
    }
    if let Some(i) = &now.instance.instance
        && before.instance.instance.as_ref() != Some(i)
    {
        lines.push(i.clone());
    }
    if let Some(p) = &now.provider_id
        && before.provider_id.is_none()
    {
        lines.push(format!("providerID {p}"));
    }
    if let Some(n) = &now.node
        && before.node.is_none()
    {
        lines.push(format!("Node {n} joined (simulated: the VM boots and runs the payload)"));
    }
    if now.bootstrap_reason == "Joined" && before.bootstrap_reason != "Joined" {
        lines.push("bootstrap Joined: the join token is deleted".into());
    }
    let waiting = (&now.bootstrap_reason, &now.instance.reason) != (&before.bootstrap_reason, &before.instance.reason);
    if lines.is_empty() && waiting && now.bootstrap_reason != "Joined" {
        lines.push(format!("bootstrap {}, instance {}", now.bootstrap_reason, now.instance.reason));
    }
    lines
}

/// The reason of an object's `Ready` condition, or `-`.
pub(crate) fn ready_reason(o: &DynamicObject) -> String {
    o.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["reason"].as_str())
        .unwrap_or("-")
        .to_string()
}

/// The variables: the sandbox's values, then `--var` ones.
fn variables(overrides: &[(String, String)]) -> BTreeMap<String, String> {
    let mut vars = template::sandbox_variables();
    vars.extend(overrides.iter().cloned());
    vars
}

/// The objects of a (substituted) multi-document YAML stream, all in namespace `ns`.
pub(crate) fn objects(text: &str, ns: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        anyhow::ensure!(v["kind"].is_string() && v["apiVersion"].is_string(), "a document without apiVersion and kind");
        if let Some(other) = v["metadata"]["namespace"].as_str().filter(|o| *o != ns) {
            anyhow::bail!(
                "{} {} is in namespace {other}; the sandbox runs one namespace, NAMESPACE={ns}",
                v["kind"].as_str().unwrap_or_default(),
                v["metadata"]["name"].as_str().unwrap_or_default()
            );
        }
        out.push(v);
    }
    Ok(out)
}

pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |msg: String| println!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64());
    // Ctrl-C ends the run through the normal path, so the cloud endpoints are stopped.
    let interrupted = tokio::spawn(async { tokio::signal::ctrl_c().await.ok() });

    let vars = variables(&args.vars);
    let (source, text) = match &args.cluster {
        Some(p) => {
            (p.display().to_string(), std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => {
            (format!("templates/cluster-template-{}.yaml", args.template), template::template(&args.template)?.into())
        }
    };
    let ns = vars.get("NAMESPACE").cloned().unwrap_or_else(|| "default".into());
    let needed = SandboxCloud::needed_by(top_level_kinds(&text));
    let text = template::substitute(&text, &vars).with_context(|| format!("substituting {source}"))?;
    let objects = objects(&text, &ns).with_context(|| format!("reading {source}"))?;
    std::fs::create_dir_all(&args.out)?;

    // Clouds first: the AWS SDK configuration comes from the environment, set before any task runs.
    let mut clouds = Vec::new();
    for cloud in &needed {
        match cloud {
            SandboxCloud::Aws => {
                let region = aws::region_of(&objects)
                    .or_else(|| vars.get("AWS_REGION").cloned())
                    .unwrap_or_else(|| "us-east-1".into());
                let c = aws::AwsCloud::start(&args.out.join("kit").join("aws"), &region).await?;
                say(format!(
                    "moto (EC2, region {region}) at {} (state and log in {}/kit/aws)",
                    c.moto.url,
                    args.out.display()
                ));
                clouds.push(Cloud::Aws(c));
            }
            SandboxCloud::Azure => {
                let c = azure::AzureCloud::start(&args.out.join("kit").join("azure")).await?;
                say(format!(
                    "fake ARM (and Entra ID) at {} over TLS with its own CA (state and log in {}/kit/azure)",
                    c.arm.url,
                    args.out.display()
                ));
                clouds.push(Cloud::Azure(Box::new(c)));
            }
        }
    }

    let mut crds: Vec<String> = CAPWIN_CRDS.iter().map(|s| s.to_string()).collect();
    crds.extend(CAPI_CRDS.iter().map(|s| s.to_string()));
    let mgmt_server = ApiServer::start(Config { crd_documents: crds, ..Config::default() }).await?;
    let workload_server = ApiServer::start(Config::default()).await?;
    say(format!(
        "management API server {} (kubectl --server={} get windowskubeadmconfigs)",
        mgmt_server.url(),
        mgmt_server.url()
    ));
    say(format!("workload API server   {}", workload_server.url()));
    let mgmt = client(mgmt_server.url(), &ns)?;
    let workload = client(workload_server.url(), "default")?;
    if ns != "default" {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(mgmt.clone());
        let n = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        namespaces.create(&PostParams::default(), &serde_json::from_value(n)?).await?;
    }

    let sim = CapiSim::new(
        mgmt.clone(),
        workload.clone(),
        SimConfig { namespace: ns.clone(), workload_url: workload_server.url().into(), join_nodes: true },
    );
    say(format!("applying {source} ({} objects, namespace {ns})", objects.len()));
    for v in &objects {
        let ar = resource(v["apiVersion"].as_str().unwrap_or_default(), v["kind"].as_str().unwrap_or_default());
        let api: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), &ns, &ar);
        let o = api
            .create(&PostParams::default(), &serde_json::from_value(v.clone())?)
            .await
            .with_context(|| format!("applying {} {}", v["kind"], v["metadata"]["name"]))?;
        // Addons are only stored: no ClusterResourceSet controller or CAAPH runs in the sandbox.
        let stored =
            if matches!(ar.kind.as_str(), "ClusterResourceSet" | "HelmChartProxy") { " (not run here)" } else { "" };
        say(format!("applied {} {}{stored}", ar.kind, o.name_any()));
    }

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let queue = capwin_runtime::QueueMetrics::register(&mut registry);
    let settings =
        Settings { namespace: Some(ns.clone()), token_ttl: Duration::from_secs(15 * 60), ..Settings::default() };
    let mut controllers =
        vec![tokio::spawn(capwin_bootstrap::reconcile::run(Context::new(mgmt.clone(), metrics, queue, settings)))];
    say("bootstrap controller running (the same code as `capwin manager --controllers bootstrap`)".into());
    for cloud in &clouds {
        cloud.seed_account(&objects, &say).await?;
        controllers.push(cloud.start_controller(mgmt.clone(), &ns).await);
        say(format!(
            "{} controller running against the local endpoint (as `capwin manager` runs it)",
            cloud.machine_kind()
        ));
    }
    let stop_controllers = |controllers: &[tokio::task::JoinHandle<()>]| controllers.iter().for_each(|c| c.abort());

    let machines: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), &ns, &capwin_testkit::capi::capi("Machine"));
    let configs: Api<DynamicObject> = Api::namespaced_with(
        mgmt.clone(),
        &ns,
        &resource("bootstrap.cluster.x-k8s.io/v1alpha1", "WindowsKubeadmConfig"),
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(mgmt.clone(), &ns);
    let tokens: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(workload.clone(), "kube-system");
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut written = BTreeSet::new();
    let deadline = Instant::now() + args.timeout;
    loop {
        for cloud in &mut clouds {
            cloud.step(&mgmt, &ns, &say).await?;
        }
        sim.step().await?;
        let windows: Vec<DynamicObject> = machines
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|m| m.data["spec"]["bootstrap"]["configRef"]["kind"] == "WindowsKubeadmConfig")
            .collect();
        let mut all_joined = !windows.is_empty();
        for m in &windows {
            let name = m.name_any();
            let cfg_name = m.data["spec"]["bootstrap"]["configRef"]["name"].as_str().unwrap_or_default().to_string();
            let infra_kind = m.data["spec"]["infrastructureRef"]["kind"].as_str().unwrap_or_default();
            let infra_name = m.data["spec"]["infrastructureRef"]["name"].as_str().unwrap_or_default();
            let instance = match clouds.iter().find(|c| c.machine_kind() == infra_kind) {
                Some(c) => c.describe_machine(&mgmt, &ns, infra_name).await?,
                None => InstanceView { instance: None, reason: format!("(no sandbox cloud runs {infra_kind})") },
            };
            let now = Seen {
                bootstrap_reason: configs
                    .get_opt(&cfg_name)
                    .await?
                    .map(|c| ready_reason(&c))
                    .unwrap_or_else(|| "-".into()),
                data_secret: m.data["spec"]["bootstrap"]["dataSecretName"].as_str().map(String::from),
                instance,
                provider_id: m.data["spec"]["providerID"].as_str().map(String::from),
                node: m.data["status"]["nodeRef"]["name"].as_str().map(String::from),
            };
            let before = seen.get(&name).cloned().unwrap_or_default();
            for line in progress_lines(&before, &now) {
                say(format!("{name}: {line}"));
            }
            if let Some(d) = &now.data_secret
                && !written.contains(&name)
                && let Some(s) = secrets.get_opt(d).await?
            {
                let value = s.data.and_then(|d| d.get("value").cloned()).map(|v| v.0).unwrap_or_default();
                write_payload(&args.out, &name, &value)?;
                let file = args.out.join(format!("{name}.userdata"));
                say(format!("{name}: payload written to {} ({} bytes)", file.display(), value.len()));
                written.insert(name.clone());
            }
            all_joined &= now.bootstrap_reason == "Joined";
            seen.insert(name, now);
        }
        if all_joined {
            let left = tokens.list(&ListParams::default()).await?.items.len();
            say(format!(
                "all {} Windows machines joined; join tokens left in the workload cluster: {left}",
                windows.len()
            ));
            say(format!(
                "payloads are in {}/ (.userdata as the cloud gets it, .cloud-config.yaml readable)",
                args.out.display()
            ));
            for cloud in &clouds {
                cloud.summary(&say).await?;
            }
            break;
        }
        if interrupted.is_finished() {
            stop_controllers(&controllers);
            anyhow::bail!("interrupted");
        }
        if Instant::now() > deadline {
            stop_controllers(&controllers);
            anyhow::bail!("not every machine joined within {:?}; see the lines above", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if args.keep_running {
        say("keeping the API servers and cloud endpoints up; Ctrl-C to stop".into());
        while !interrupted.is_finished() {
            sim.step().await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stop_controllers(&controllers);
    // Dropping the clouds stops their endpoints (the processes they started, by PID).
    drop(clouds);
    say("cloud endpoints stopped".into());
    Ok(())
}

fn write_payload(out: &std::path::Path, machine: &str, value: &[u8]) -> anyhow::Result<()> {
    std::fs::write(out.join(format!("{machine}.userdata")), value)?;
    let text = if value.starts_with(&[0x1f, 0x8b]) {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(value).read_to_string(&mut s)?;
        s
    } else {
        String::from_utf8_lossy(value).into_owned()
    };
    std::fs::write(out.join(format!("{machine}.cloud-config.yaml")), text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(reason: &str, data: bool, instance: Option<&str>, infra: &str, pid: bool, node: bool) -> Seen {
        Seen {
            bootstrap_reason: reason.into(),
            data_secret: data.then(|| "m-0".to_string()),
            instance: InstanceView { instance: instance.map(String::from), reason: infra.into() },
            provider_id: pid.then(|| "aws:///us-east-1a/i-1".to_string()),
            node: node.then(|| "m-0".to_string()),
        }
    }

    #[test]
    fn progress_is_told_in_the_order_of_a_machines_life() {
        let start = Seen::default();
        let waiting = seen("WaitingForClusterInfrastructure", false, None, "WaitingForBootstrapData", false, false);
        assert_eq!(
            progress_lines(&start, &waiting),
            ["bootstrap WaitingForClusterInfrastructure, instance WaitingForBootstrapData"]
        );
        assert!(progress_lines(&waiting, &waiting).is_empty(), "nothing new, nothing said");
        // Everything at once (one poll saw it all): still in order.
        let done = seen("Joined", true, Some("EC2 instance i-1 running (moto)"), "InstanceRunning", true, true);
        assert_eq!(
            progress_lines(&waiting, &done),
            [
                "bootstrap data ready (Secret m-0)",
                "EC2 instance i-1 running (moto)",
                "providerID aws:///us-east-1a/i-1",
                "Node m-0 joined (simulated: the VM boots and runs the payload)",
                "bootstrap Joined: the join token is deleted",
            ]
        );
        // An instance changing state is news; the waiting reasons are not repeated meanwhile.
        let pending =
            seen("DataSecretAvailable", true, Some("EC2 instance i-1 pending (moto)"), "InstancePending", false, false);
        let running =
            seen("DataSecretAvailable", true, Some("EC2 instance i-1 running (moto)"), "InstanceRunning", false, false);
        assert_eq!(progress_lines(&pending, &running), ["EC2 instance i-1 running (moto)"]);
    }

    #[test]
    fn clouds_come_from_the_kinds() {
        assert_eq!(
            SandboxCloud::needed_by(["Cluster", "AWSWindowsMachineTemplate", "AWSCluster"]),
            BTreeSet::from([SandboxCloud::Aws])
        );
        assert!(SandboxCloud::needed_by(["Cluster"]).is_empty());
        assert_eq!(
            SandboxCloud::needed_by(["AzureCluster", "AzureClusterIdentity", "AWSCluster"]),
            BTreeSet::from([SandboxCloud::Aws, SandboxCloud::Azure])
        );
    }

    #[test]
    fn plurals_are_the_crds() {
        for crd in CAPWIN_CRDS.iter().chain(CAPI_CRDS.iter()) {
            let crd: Value = serde_yaml_ng::from_str(crd).unwrap();
            let names = &crd["spec"]["names"];
            assert_eq!(plural(names["kind"].as_str().unwrap()), names["plural"].as_str().unwrap());
        }
        assert_eq!(plural("ConfigMap"), "configmaps");
    }

    #[test]
    fn top_level_kinds_skip_manifests_inside_config_maps() {
        let text = "kind: Cluster\n---\napiVersion: v1\nkind: ConfigMap\ndata:\n  x.yaml: |\n    kind: DaemonSet\n";
        assert_eq!(top_level_kinds(text), ["Cluster", "ConfigMap"]);
        let aws = template::template("aws-windows-calico").unwrap();
        assert!(top_level_kinds(aws).contains(&"AWSWindowsMachineTemplate"));
        assert!(!top_level_kinds(aws).contains(&"DaemonSet"));
    }

    #[test]
    fn objects_must_share_the_sandbox_namespace() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: default}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";
        assert_eq!(objects(text, "default").unwrap().len(), 2);
        let err = objects(text, "other").unwrap_err().to_string();
        assert!(err.contains("ConfigMap a is in namespace default"), "{err}");
        assert!(objects("kind: ConfigMap\n", "default").is_err());
    }

    #[test]
    fn var_flags_override_the_sandbox_values() {
        let v = variables(&[("CLUSTER_NAME".into(), "w1".into()), ("EXTRA".into(), "x".into())]);
        assert_eq!(v["CLUSTER_NAME"], "w1");
        assert_eq!(v["EXTRA"], "x");
        assert_eq!(v["NAMESPACE"], "default");
    }

    #[test]
    fn every_template_needs_its_own_cloud_and_the_sandbox_serves_every_kind() {
        let served: Vec<String> = CAPWIN_CRDS
            .iter()
            .chain(CAPI_CRDS.iter())
            .map(|c| {
                let crd: Value = serde_yaml_ng::from_str(c).unwrap();
                crd["spec"]["names"]["kind"].as_str().unwrap().to_string()
            })
            .collect();
        for (flavour, cloud) in [
            ("aws-windows-calico", SandboxCloud::Aws),
            ("azure-windows-calico", SandboxCloud::Azure),
            ("azure-windows-flannel", SandboxCloud::Azure),
        ] {
            let text = template::substitute(template::template(flavour).unwrap(), &variables(&[])).unwrap();
            let objs = objects(&text, "default").unwrap();
            let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
            assert_eq!(SandboxCloud::needed_by(kinds), BTreeSet::from([cloud]), "{flavour}");
            // Every kind of the template has its CRD in the sandbox (or is a core kind).
            for o in &objs {
                let kind = o["kind"].as_str().unwrap();
                assert!(kind == "ConfigMap" || served.iter().any(|s| s == kind), "{flavour}: no CRD for {kind}");
            }
        }
        let aws =
            template::substitute(template::template(template::DEFAULT_TEMPLATE).unwrap(), &variables(&[])).unwrap();
        assert_eq!(aws::region_of(&objects(&aws, "default").unwrap()).as_deref(), Some("us-east-1"));
    }
}
