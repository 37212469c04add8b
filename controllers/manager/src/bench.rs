//! `capwin bench scale --machines N --cloud aws|azure`: how capwin behaves with many machines,
//! counted.
//!
//! The kit of `capwin sandbox` (an in-memory management API server, a workload one, the CAPI-core
//! simulator, and moto behind the kit's counting proxy or the fake ARM), a flavour of
//! `templates/` with `CAPWIN_WINDOWS_WORKER_MACHINE_COUNT=N`, and capwin's controllers as
//! `capwin manager` runs them in a cluster: **two processes** (`--controllers bootstrap` and
//! `--controllers aws|azure`), each with its own bearer token, so the API server counts every
//! request by manager (`capwin_testkit::apiserver::audit`) and `/proc` gives each one's CPU time
//! and peak RSS. The cloud endpoint counts its own calls by operation.
//!
//! Phases: created → every data Secret → every instance/VM provisioned → every Machine joined
//! (its config `Ready` with reason `Joined`, so its token is gone); a steady window with nothing
//! to do; the MachineDeployment scaled to 0 → every machine and instance/VM gone.
//!
//! The `--max-*` flags turn targets into a verdict: the run fails, naming each count over its
//! limit, when one is exceeded, when any API write, GET or cloud call happens in the steady
//! window, or when a machine does not join. Times are printed, never judged: they depend on
//! the machine the bench runs on; counts do not.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use capwin_testkit::apiserver::audit::RequestKey;
use capwin_testkit::apiserver::{ApiServer, Config};
use capwin_testkit::capi::{CapiSim, SimConfig};
use clap::{Args, Subcommand, ValueEnum};
use futures_util::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};

use crate::sandbox::{self, aws, azure, template};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Create N Windows machines through the CAPI-core simulator and count what capwin does.
    Scale(ScaleArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchCloud {
    Aws,
    Azure,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Windows machines to create (the Windows MachineDeployment's replicas).
    #[arg(long, default_value_t = 100)]
    machines: usize,
    #[arg(long, value_enum, default_value_t = BenchCloud::Aws)]
    cloud: BenchCloud,
    /// The quiet window after every machine joined, in which nothing should be called.
    #[arg(long, default_value = "60s", value_parser = crate::manager::parse_duration)]
    steady: Duration,
    /// Give up on a phase after this long.
    #[arg(long, default_value = "600s", value_parser = crate::manager::parse_duration)]
    timeout: Duration,
    /// Folder for the kit's state, the managers' logs and `report.json`.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Reconciles at once per controller (`capwin manager --concurrency`).
    #[arg(long, default_value_t = 10)]
    concurrency: u16,
    /// AWS: the EC2 endpoint answers every call with `RequestLimitExceeded` for this long from
    /// the moment the machines are created (the kit's fault proxy), then recovers.
    #[arg(long, value_parser = crate::manager::parse_duration)]
    throttle_for: Option<Duration>,
    /// AWS: this many `RunInstances` take effect but their answers are lost (the kit's fault
    /// proxy, `when: after`), as on an endpoint that ignores `ClientToken`.
    #[arg(long, default_value_t = 0)]
    lose_run_instances_answers: u32,
    /// Fail when API writes per machine (both managers and the workload cluster, events aside)
    /// exceed this.
    #[arg(long)]
    max_writes_per_machine: Option<f64>,
    /// Fail when Events per machine exceed this.
    #[arg(long)]
    max_events_per_machine: Option<f64>,
    /// Fail when GETs per machine (reads outside the watch caches) exceed this.
    #[arg(long)]
    max_gets_per_machine: Option<f64>,
    /// Fail when cloud calls per machine, create → joined (every operation, the token requests
    /// aside), exceed this.
    #[arg(long)]
    max_cloud_calls_per_machine: Option<f64>,
    /// Fail when the calls that create an instance/VM (issue 14's "per machine create": the
    /// create and its share of batched reads and operation polls; not the serial-console
    /// diagnostics, the IMDS lock-down after the join or template look-ups) exceed this.
    #[arg(long)]
    max_create_calls_per_machine: Option<f64>,
}

/// Whether a cloud operation belongs to making an instance/VM, not to what follows it (serial
/// console diagnostics until the join, the IMDS lock-down after it) or to templates.
pub fn is_create_call(operation: &str) -> bool {
    const AFTER_CREATE: &[&str] = &[
        "GetConsoleOutput",
        "ModifyInstanceMetadataOptions",
        "DescribeInstanceTypes",
        "POST Microsoft.Compute/virtualMachines/retrieveBootDiagnosticsData",
        "GET blob",
    ];
    !AFTER_CREATE.contains(&operation)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Scale(a) => scale(a).await,
    }
}

/// The bearer tokens the bench hands out: each is a client name in the API server's counts.
const BOOTSTRAP_TOKEN: &str = "capwin-bootstrap-manager";
const INFRA_TOKEN: &str = "capwin-infrastructure-manager";
const SIM_TOKEN: &str = "capi-core-simulator";
const BENCH_TOKEN: &str = "bench";
/// The workload cluster's requests come through the kubeconfig the simulator writes (no token).
const WORKLOAD_CLIENT: &str = "anonymous";

const NAMESPACE: &str = "bench";
const CLUSTER: &str = "bench";

fn client(url: &str, token: &str) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig(url, token))?;
    let mut cfg = kube::Config::new(url.parse()?);
    cfg.auth_info = kc.auth_infos[0].auth_info.clone().context("a user")?;
    cfg.default_namespace = NAMESPACE.into();
    Ok(Client::try_from(cfg)?)
}

fn kubeconfig(url: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kit\n  cluster:\n    server: {url}\nusers:\n- name: {token}\n  user:\n    token: {token}\ncontexts:\n- name: kit\n  context:\n    cluster: kit\n    user: {token}\n    namespace: {NAMESPACE}\ncurrent-context: kit\n"
    )
}

/// A started cloud endpoint and how a manager process reaches it.
enum Cloud {
    Aws { cloud: aws::AwsCloud, proxy: Proxy },
    Azure { cloud: Box<azure::AzureCloud>, ca: PathBuf },
}

/// The kit's counting proxy in front of moto (`moto.sh proxy-start`), stopped on drop.
struct Proxy {
    state: PathBuf,
    url: String,
}

impl Proxy {
    fn start(state: &Path) -> anyhow::Result<Self> {
        let out = std::process::Command::new(aws::moto_sh())
            .arg("proxy-start")
            .env("CAPWIN_KIT_STATE", state)
            .output()
            .context("running moto.sh proxy-start")?;
        anyhow::ensure!(out.status.success(), "moto.sh proxy-start: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8(out.stdout)?.lines().last().unwrap_or_default().trim().to_string();
        Ok(Self { state: state.to_path_buf(), url })
    }
}

impl Proxy {
    /// A call to the proxy's control API (`/_capwin/<call>`): a POST with `body`, else a GET.
    fn control(&self, call: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "--fail-with-body", "--max-time", "10"]);
        if let Some(b) = body {
            curl.args(["-X", "POST", "-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let out = curl.arg(format!("{}/_capwin/{call}", self.url)).output().context("running curl")?;
        anyhow::ensure!(out.status.success(), "proxy {call}: {}", String::from_utf8_lossy(&out.stdout));
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(aws::moto_sh()).arg("proxy-stop").env("CAPWIN_KIT_STATE", &self.state).output();
    }
}

impl Cloud {
    async fn start(kind: BenchCloud, state: &Path) -> anyhow::Result<Self> {
        Ok(match kind {
            BenchCloud::Aws => {
                let cloud = aws::AwsCloud::start(state, "us-east-1").await?;
                let proxy = Proxy::start(state)?;
                Cloud::Aws { cloud, proxy }
            }
            BenchCloud::Azure => {
                let cloud = azure::AzureCloud::start(state).await?;
                let ca = state.join("bench-ca.pem");
                std::fs::write(&ca, &cloud.arm.ca_pem)?;
                Cloud::Azure { cloud: Box::new(cloud), ca }
            }
        })
    }

    fn template(&self) -> &'static str {
        match self {
            Cloud::Aws { .. } => "aws-windows-calico",
            Cloud::Azure { .. } => "azure-windows-calico",
        }
    }

    fn machine_plural(&self) -> &'static str {
        match self {
            Cloud::Aws { .. } => "awswindowsmachines",
            Cloud::Azure { .. } => "azurewindowsmachines",
        }
    }

    fn machine_kind(&self) -> &'static str {
        match self {
            Cloud::Aws { .. } => aws::MACHINE_KIND,
            Cloud::Azure { .. } => azure::MACHINE_KIND,
        }
    }

    /// The infrastructure manager's flags and environment for this endpoint.
    fn manager(&self) -> (Vec<String>, Vec<(String, String)>) {
        match self {
            Cloud::Aws { proxy, .. } => (
                vec!["--controllers".into(), "aws".into(), "--aws-region".into(), "us-east-1".into()],
                [
                    ("AWS_ENDPOINT_URL", proxy.url.as_str()),
                    ("AWS_ACCESS_KEY_ID", "testing"),
                    ("AWS_SECRET_ACCESS_KEY", "testing"),
                    ("AWS_REGION", "us-east-1"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            Cloud::Azure { cloud, ca } => {
                let url = cloud.arm.url.clone();
                let args = ["--controllers", "azure", "--azure-arm-endpoint", &url, "--azure-authority-host", &url];
                let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
                args.extend(["--azure-ca-bundle".to_string(), ca.display().to_string()]);
                let env = [
                    ("AZURE_TENANT_ID", azure::TENANT.to_string()),
                    ("AZURE_CLIENT_ID", "capwin-bench".to_string()),
                    ("AZURE_CLIENT_SECRET", "bench-secret-not-checked-by-the-fake".to_string()),
                    ("AZURE_FEDERATED_TOKEN_FILE", cloud.token_file().display().to_string()),
                ];
                (args, env.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }
        }
    }

    async fn seed(&self, objects: &[Value], say: &dyn Fn(String)) -> anyhow::Result<()> {
        match self {
            Cloud::Aws { cloud, .. } => cloud.seed_account(objects, say).await,
            Cloud::Azure { cloud, .. } => cloud.seed_account(objects, say).await,
        }
    }

    /// (simulated CAPA/CAPZ) the cluster's infrastructure.
    async fn step(&mut self, mgmt: &Client, say: &dyn Fn(String)) -> anyhow::Result<()> {
        match self {
            Cloud::Aws { cloud, .. } => cloud.step(mgmt, NAMESPACE, say).await,
            Cloud::Azure { cloud, .. } => cloud.step(mgmt, NAMESPACE, say).await,
        }
    }

    /// Calls the endpoint answered so far, by operation (Entra ID token requests aside: they
    /// are per credential, not per machine).
    async fn calls(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let (counts, key) = match self {
            Cloud::Aws { proxy, .. } => (proxy.control("stats", None)?, "requests"),
            Cloud::Azure { cloud, .. } => (cloud.control("counts").await?, "counts"),
        };
        Ok(counts[key]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !k.contains("oauth2/"))
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect())
    }

    /// Arms the faults asked for; true when any was armed.
    fn arm_faults(&self, args: &ScaleArgs) -> anyhow::Result<bool> {
        let wanted = args.throttle_for.is_some() || args.lose_run_instances_answers > 0;
        match self {
            _ if !wanted => Ok(false),
            Cloud::Azure { .. } => anyhow::bail!("--throttle-for and --lose-run-instances-answers are AWS faults"),
            Cloud::Aws { proxy, .. } => {
                if args.lose_run_instances_answers > 0 {
                    let rule = json!({"action": "RunInstances", "times": args.lose_run_instances_answers,
                        "when": "after", "drop": true});
                    proxy.control("arm", Some(rule))?;
                }
                if args.throttle_for.is_some() {
                    proxy.control("arm", Some(json!({"action": "*", "times": -1, "code": "RequestLimitExceeded"})))?;
                }
                Ok(true)
            }
        }
    }

    /// Ends the throttling (the `*` rule); unused lost-answer rules stay armed.
    fn end_throttling(&self) -> anyhow::Result<()> {
        if let Cloud::Aws { proxy, .. } = self {
            proxy.control("disarm", Some(json!({"action": "*"})))?;
        }
        Ok(())
    }

    /// Instances/VMs of the cluster that still exist.
    async fn live(&self) -> anyhow::Result<usize> {
        match self {
            Cloud::Aws { cloud, .. } => cloud.live_instances(CLUSTER).await,
            Cloud::Azure { cloud, .. } => cloud.live_vms().await,
        }
    }
}

/// A `capwin manager` child process.
struct Manager {
    name: &'static str,
    child: tokio::process::Child,
}

impl Manager {
    fn spawn(
        name: &'static str,
        kubeconfig: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("manager")
            .args(["--namespace", NAMESPACE, "--metrics-bind-address", "0", "--health-probe-bind-address", "0"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", std::env::var("CAPWIN_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {name} manager"))?;
        Ok(Self { name, child })
    }

    /// (CPU time in ms, peak RSS in KiB) from `/proc`.
    fn usage(&self) -> anyhow::Result<(u64, u64)> {
        let pid = self.child.id().with_context(|| format!("the {} manager exited", self.name))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th
        // of the whole line, in USER_HZ (100 on Linux).
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((ticks * 10, hwm))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("the {} manager exited ({status}); see its log", self.name);
        }
        Ok(())
    }
}

/// When the bench saw each machine reach each point.
#[derive(Default)]
struct Progress {
    config_seen: HashMap<String, Instant>,
    data: HashMap<String, Instant>,
    provisioned: HashMap<String, Instant>,
    joined: HashMap<String, Instant>,
    infra_seen: HashMap<String, Instant>,
    infra_gone: usize,
}

fn ready_reason(o: &DynamicObject) -> Option<&str> {
    o.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?["reason"].as_str()
}

/// Follows configs and infrastructure machines with watches (the bench's own client), so the
/// times have the resolution of events, not of polls.
fn follow(mgmt: &Client, cloud: &Cloud, progress: Arc<Mutex<Progress>>) -> Vec<tokio::task::JoinHandle<()>> {
    let configs = Api::<DynamicObject>::namespaced_with(
        mgmt.clone(),
        NAMESPACE,
        &sandbox::resource("bootstrap.cluster.x-k8s.io/v1alpha1", "WindowsKubeadmConfig"),
    );
    let infra = Api::<DynamicObject>::namespaced_with(
        mgmt.clone(),
        NAMESPACE,
        &sandbox::resource("infrastructure.cluster.x-k8s.io/v1alpha1", cloud.machine_kind()),
    );
    let p = progress.clone();
    let configs = tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(configs, watcher::Config::default()).default_backoff().applied_objects());
        while let Some(o) = s.next().await {
            let Ok(o) = o else { continue };
            let (name, now) = (o.name_any(), Instant::now());
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            p.config_seen.entry(name.clone()).or_insert(now);
            if o.data["status"]["initialization"]["dataSecretCreated"] == true {
                p.data.entry(name.clone()).or_insert(now);
            }
            if ready_reason(&o) == Some("Joined") {
                p.joined.entry(name).or_insert(now);
            }
        }
    });
    let p = progress;
    let infra = tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(infra, watcher::Config::default()).default_backoff());
        while let Some(ev) = s.next().await {
            let Ok(ev) = ev else { continue };
            let now = Instant::now();
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    p.infra_seen.entry(o.name_any()).or_insert(now);
                    if o.data["status"]["initialization"]["provisioned"] == true {
                        p.provisioned.entry(o.name_any()).or_insert(now);
                    }
                }
                watcher::Event::Delete(_) => p.infra_gone += 1,
                _ => {}
            }
        }
    });
    vec![configs, infra]
}

/// Requests counted between two snapshots of the API server, for the given clients.
fn requests_between(
    before: &BTreeMap<RequestKey, u64>,
    after: &BTreeMap<RequestKey, u64>,
    clients: &[&str],
) -> BTreeMap<RequestKey, u64> {
    after
        .iter()
        .filter(|(k, _)| clients.contains(&k.client.as_str()))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn calls_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
}

/// The API requests of one phase, summed the way the targets count them.
#[derive(Debug, Default, Serialize)]
struct ApiCounts {
    writes: u64,
    events: u64,
    gets: u64,
    lists: u64,
    watches: u64,
    /// `client verb resource` → count.
    detail: BTreeMap<String, u64>,
}

impl ApiCounts {
    fn of(phase: &[&BTreeMap<RequestKey, u64>]) -> Self {
        let mut c = ApiCounts::default();
        for m in phase {
            for (k, n) in *m {
                let is_event = k.resource == "events";
                match k.verb.as_str() {
                    _ if is_event && k.is_write() => c.events += n,
                    _ if k.is_write() => c.writes += n,
                    "get" => c.gets += n,
                    "list" => c.lists += n,
                    "watch" => c.watches += n,
                    _ => {}
                }
                *c.detail.entry(format!("{} {} {}", k.client, k.verb, k.resource)).or_default() += n;
            }
        }
        c
    }
}

#[derive(Debug, Serialize)]
struct Report {
    cloud: BenchCloud,
    machines: usize,
    joined: usize,
    seconds: BTreeMap<&'static str, f64>,
    /// Create → joined, per machine, both managers and the workload cluster.
    api_per_machine: BTreeMap<&'static str, f64>,
    api: ApiCounts,
    cloud_calls_per_machine: f64,
    /// Of those, the calls that make the instance/VM ([`is_create_call`]).
    create_calls_per_machine: f64,
    cloud_calls: BTreeMap<String, u64>,
    steady_api: ApiCounts,
    steady_cloud_calls: BTreeMap<String, u64>,
    delete_api: ApiCounts,
    delete_cloud_calls: BTreeMap<String, u64>,
    /// Instances/VMs alive beyond one per machine once every machine joined.
    duplicates: usize,
    left_after_delete: usize,
    cpu_ms_per_machine: BTreeMap<&'static str, f64>,
    peak_rss_mib: BTreeMap<&'static str, f64>,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

fn per(n: u64, machines: usize) -> f64 {
    ((n as f64 / machines.max(1) as f64) * 100.0).round() / 100.0
}

async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.machines > 0, "--machines must be at least 1");
    let started = Instant::now();
    let say = |msg: String| println!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
    let quiet = |_: String| {};
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    let n = args.machines;

    let mut cloud = Cloud::start(args.cloud, &out.join("kit")).await?;
    let mut vars = template::sandbox_variables();
    vars.insert("CLUSTER_NAME".into(), CLUSTER.into());
    vars.insert("NAMESPACE".into(), NAMESPACE.into());
    vars.insert("CAPWIN_WINDOWS_WORKER_MACHINE_COUNT".into(), n.to_string());
    let text =
        template::substitute(template::template(cloud.template())?, &vars).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let objects = sandbox::objects(&text, NAMESPACE)?;

    let mut crds: Vec<String> = sandbox::CAPWIN_CRDS.iter().map(|s| s.to_string()).collect();
    crds.extend(sandbox::CAPI_CRDS.iter().map(|s| s.to_string()));
    let mgmt_server = ApiServer::start(Config { crd_documents: crds, ..Config::default() }).await?;
    let workload_server = ApiServer::start(Config::default()).await?;
    let mgmt = client(mgmt_server.url(), BENCH_TOKEN)?;
    let sim = CapiSim::new(
        client(mgmt_server.url(), SIM_TOKEN)?,
        client(workload_server.url(), SIM_TOKEN)?,
        SimConfig { namespace: NAMESPACE.into(), workload_url: workload_server.url().into(), join_nodes: true },
    );
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(mgmt.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?)
        .await?;
    cloud.seed(&objects, &quiet).await?;

    // The managers, as two Deployments would run them.
    let bootstrap_kc = out.join("bootstrap.kubeconfig");
    let infra_kc = out.join("infrastructure.kubeconfig");
    std::fs::write(&bootstrap_kc, kubeconfig(mgmt_server.url(), BOOTSTRAP_TOKEN))?;
    std::fs::write(&infra_kc, kubeconfig(mgmt_server.url(), INFRA_TOKEN))?;
    let concurrency = ["--concurrency".to_string(), args.concurrency.to_string()];
    let mut bootstrap_args = vec!["--controllers".to_string(), "bootstrap".into()];
    bootstrap_args.extend(concurrency.clone());
    let (mut infra_args, infra_env) = cloud.manager();
    infra_args.extend(concurrency);
    let mut managers = [
        Manager::spawn("bootstrap", &bootstrap_kc, &bootstrap_args, &[], &out.join("bootstrap.log"))?,
        Manager::spawn("infrastructure", &infra_kc, &infra_args, &infra_env, &out.join("infrastructure.log"))?,
    ];
    // Ready when each has opened the watch on its own kind.
    let wait_until = Instant::now() + Duration::from_secs(60);
    loop {
        let r = mgmt_server.requests();
        let watching = |client: &str, resource: &str| {
            r.keys().any(|k| k.client == client && k.verb == "watch" && k.resource == resource)
        };
        if watching(BOOTSTRAP_TOKEN, "windowskubeadmconfigs") && watching(INFRA_TOKEN, cloud.machine_plural()) {
            break;
        }
        for m in &mut managers {
            m.check_alive()?;
        }
        anyhow::ensure!(Instant::now() < wait_until, "the managers did not start watching within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(format!("managers watching; creating {n} Windows machines ({} flavour)", cloud.template()));

    let progress = Arc::new(Mutex::new(Progress::default()));
    let followers = follow(&mgmt, &cloud, progress.clone());
    let (mgmt0, workload0, cloud0) = (mgmt_server.requests(), workload_server.requests(), cloud.calls().await?);
    let cpu0: Vec<u64> = managers.iter().map(|m| m.usage().map(|u| u.0)).collect::<Result<_, _>>()?;
    let mut recovered_at = None;
    let mut throttled_until = None;
    if cloud.arm_faults(&args)? {
        say(format!(
            "faults armed: {} lost RunInstances answers, throttling for {:?}",
            args.lose_run_instances_answers, args.throttle_for
        ));
        throttled_until = args.throttle_for.map(|d| Instant::now() + d);
    }
    let t0 = Instant::now();
    for v in &objects {
        let ar =
            sandbox::resource(v["apiVersion"].as_str().unwrap_or_default(), v["kind"].as_str().unwrap_or_default());
        let api: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), NAMESPACE, &ar);
        api.create(&PostParams::default(), &serde_json::from_value(v.clone())?)
            .await
            .with_context(|| format!("applying {} {}", v["kind"], v["metadata"]["name"]))?;
    }

    // Create → joined.
    let mut last_note = Instant::now();
    let joined_at = loop {
        if throttled_until.is_some_and(|at| Instant::now() >= at) {
            cloud.end_throttling()?;
            throttled_until = None;
            recovered_at = Some(Instant::now());
            say("throttling ended".into());
        }
        cloud.step(&mgmt, &quiet).await?;
        sim.step().await?;
        let (data, provisioned, joined) = {
            let p = progress.lock().unwrap_or_else(|e| e.into_inner());
            (p.data.len(), p.provisioned.len(), p.joined.len())
        };
        if joined >= n {
            break Instant::now();
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            say(format!("data {data}/{n}, provisioned {provisioned}/{n}, joined {joined}/{n}"));
            last_note = Instant::now();
        }
        for m in &mut managers {
            m.check_alive()?;
        }
        if t0.elapsed() > args.timeout {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The create phase ends when capwin has stopped writing (the infrastructure controller
    // still reacts to the Node: IMDS lock-down, last status), at most 30 s after the last join.
    let quiet_until = Instant::now() + Duration::from_secs(30);
    let writes = |r: &BTreeMap<RequestKey, u64>| -> u64 {
        r.iter()
            .filter(|(k, _)| (k.client == BOOTSTRAP_TOKEN || k.client == INFRA_TOKEN) && k.is_write())
            .map(|(_, v)| v)
            .sum()
    };
    let mut last = writes(&mgmt_server.requests());
    while Instant::now() < quiet_until {
        sim.step().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = writes(&mgmt_server.requests());
        if now == last {
            break;
        }
        last = now;
    }
    let (mgmt1, workload1, cloud1) = (mgmt_server.requests(), workload_server.requests(), cloud.calls().await?);
    let usage1: Vec<(u64, u64)> = managers.iter().map(Manager::usage).collect::<Result<_, _>>()?;
    let joined = progress.lock().unwrap_or_else(|e| e.into_inner()).joined.len();
    say(format!("{joined}/{n} joined after {:.1}s; steady window of {:?}", secs(joined_at - t0), args.steady));

    // Steady state: the simulator keeps stepping (CAPI keeps running), nothing changes.
    let steady_end = Instant::now() + args.steady;
    while Instant::now() < steady_end {
        sim.step().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (mgmt2, workload2, cloud2) = (mgmt_server.requests(), workload_server.requests(), cloud.calls().await?);

    // Duplicates: instances/VMs alive beyond one per machine.
    let live_before_delete = cloud.live().await?;

    // Delete: the MachineDeployment to 0 replicas; the simulator deletes the Machines and the
    // API server's garbage collector their configs and infrastructure machines.
    let mds: Api<DynamicObject> =
        Api::namespaced_with(mgmt.clone(), NAMESPACE, &capwin_testkit::capi::capi("MachineDeployment"));
    for md in mds.list(&ListParams::default()).await? {
        if md.data["spec"]["template"]["spec"]["infrastructureRef"]["kind"]
            .as_str()
            .is_some_and(|k| k.starts_with(cloud.machine_kind()))
        {
            mds.patch(&md.name_any(), &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}}))).await?;
        }
    }
    let infra_api = Api::<DynamicObject>::namespaced_with(
        mgmt.clone(),
        NAMESPACE,
        &sandbox::resource("infrastructure.cluster.x-k8s.io/v1alpha1", cloud.machine_kind()),
    );
    let d0 = Instant::now();
    let left = loop {
        sim.step().await?;
        let infra_left = infra_api.list(&ListParams::default()).await?.items.len();
        let live = if infra_left == 0 { cloud.live().await? } else { usize::MAX };
        if live == 0 || d0.elapsed() > args.timeout {
            break if infra_left == 0 { live } else { infra_left };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let delete_secs = secs(d0.elapsed());
    let (mgmt3, workload3, cloud3) = (mgmt_server.requests(), workload_server.requests(), cloud.calls().await?);
    followers.iter().for_each(|f| f.abort());

    let capwin = [BOOTSTRAP_TOKEN, INFRA_TOKEN];
    let create = ApiCounts::of(&[
        &requests_between(&mgmt0, &mgmt1, &capwin),
        &requests_between(&workload0, &workload1, &[WORKLOAD_CLIENT]),
    ]);
    let steady = ApiCounts::of(&[
        &requests_between(&mgmt1, &mgmt2, &capwin),
        &requests_between(&workload1, &workload2, &[WORKLOAD_CLIENT]),
    ]);
    let delete = ApiCounts::of(&[
        &requests_between(&mgmt2, &mgmt3, &capwin),
        &requests_between(&workload2, &workload3, &[WORKLOAD_CLIENT]),
    ]);
    let cloud_calls = calls_between(&cloud0, &cloud1);
    let p = progress.lock().unwrap_or_else(|e| e.into_inner());
    let first_data: Vec<f64> = p
        .data
        .iter()
        .filter_map(|(k, t)| p.config_seen.get(k).map(|s| t.saturating_duration_since(*s).as_secs_f64()))
        .collect();
    let max_of = |m: &HashMap<String, Instant>| m.values().max().map(|t| secs(t.saturating_duration_since(t0)));
    let mut seconds = BTreeMap::new();
    seconds.insert("created_to_all_data", max_of(&p.data).unwrap_or(-1.0));
    seconds.insert("created_to_all_provisioned", max_of(&p.provisioned).unwrap_or(-1.0));
    seconds.insert("created_to_all_joined", max_of(&p.joined).unwrap_or(-1.0));
    seconds.insert("config_to_data_max", (first_data.iter().cloned().fold(0.0, f64::max) * 100.0).round() / 100.0);
    seconds.insert("delete", delete_secs);
    if let Some(r) = recovered_at {
        seconds.insert("recovery_to_all_joined", secs(joined_at.saturating_duration_since(r)));
    }
    let names = ["bootstrap", "infrastructure"];
    let report = Report {
        cloud: args.cloud,
        machines: n,
        joined,
        seconds,
        api_per_machine: BTreeMap::from([
            ("writes", per(create.writes, n)),
            ("events", per(create.events, n)),
            ("gets", per(create.gets, n)),
            ("lists", per(create.lists, n)),
        ]),
        api: create,
        cloud_calls_per_machine: per(cloud_calls.values().sum(), n),
        create_calls_per_machine: per(cloud_calls.iter().filter(|(op, _)| is_create_call(op)).map(|(_, n)| n).sum(), n),
        cloud_calls,
        steady_api: steady,
        steady_cloud_calls: calls_between(&cloud1, &cloud2),
        delete_api: delete,
        delete_cloud_calls: calls_between(&cloud2, &cloud3),
        duplicates: live_before_delete.saturating_sub(n),
        left_after_delete: left,
        cpu_ms_per_machine: names
            .iter()
            .zip(usage1.iter().zip(&cpu0))
            .map(|(name, ((cpu, _), cpu0))| (*name, per(cpu - cpu0, n)))
            .collect(),
        peak_rss_mib: names.iter().zip(&usage1).map(|(name, (_, rss))| (*name, per(*rss, 1024))).collect(),
    };
    drop(p);
    let path = out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    print_report(&report);
    say(format!("report written to {}", path.display()));
    drop(managers);
    drop(cloud);

    let failures = verdict(&report, &args);
    if !failures.is_empty() {
        anyhow::bail!("over target:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!("\ncapwin bench scale: {} machines on {:?}, {} joined", r.machines, r.cloud, r.joined);
    for (k, v) in &r.seconds {
        println!("  {k:<28} {v:>8.2} s");
    }
    println!("  per machine, create → joined (both managers + workload cluster):");
    for (k, v) in &r.api_per_machine {
        println!("    API {k:<10} {v:>8.2}");
    }
    println!("    cloud calls {:>8.2}  {:?}", r.cloud_calls_per_machine, r.cloud_calls);
    println!("    of which create {:>8.2}", r.create_calls_per_machine);
    for (k, v) in &r.cpu_ms_per_machine {
        println!("    CPU ms ({k}) {v:>8.2}");
    }
    for (k, v) in &r.peak_rss_mib {
        println!("  peak RSS {k:<16} {v:>8.1} MiB");
    }
    println!(
        "  steady window: API writes {}, GETs {}, lists {}, cloud calls {:?}",
        r.steady_api.writes, r.steady_api.gets, r.steady_api.lists, r.steady_cloud_calls
    );
    println!(
        "  duplicates {}; delete: left {}, cloud calls {:?}",
        r.duplicates, r.left_after_delete, r.delete_cloud_calls
    );
    println!("  API requests create → joined (client verb resource):");
    for (k, v) in &r.api.detail {
        println!("    {v:>7}  {k}");
    }
}

/// Each count over its target, as a line; empty when the run meets every target given.
fn verdict(r: &Report, args: &ScaleArgs) -> Vec<String> {
    let mut out = Vec::new();
    if r.joined < r.machines {
        out.push(format!("{} of {} machines did not join", r.machines - r.joined, r.machines));
    }
    let mut check = |what: &str, value: f64, limit: Option<f64>| {
        if let Some(l) = limit
            && value > l
        {
            out.push(format!("{what}: {value} > {l}"));
        }
    };
    check("API writes per machine", r.api_per_machine["writes"], args.max_writes_per_machine);
    check("events per machine", r.api_per_machine["events"], args.max_events_per_machine);
    check("GETs per machine", r.api_per_machine["gets"], args.max_gets_per_machine);
    check("cloud calls per machine", r.cloud_calls_per_machine, args.max_cloud_calls_per_machine);
    check("cloud calls per machine create", r.create_calls_per_machine, args.max_create_calls_per_machine);
    let steady_calls: u64 = r.steady_cloud_calls.values().sum();
    if r.steady_api.writes + r.steady_api.gets + steady_calls > 0 {
        out.push(format!(
            "steady window: {} API writes, {} GETs, {} cloud calls (want none): {:?} {:?}",
            r.steady_api.writes, r.steady_api.gets, steady_calls, r.steady_api.detail, r.steady_cloud_calls
        ));
    }
    if r.duplicates > 0 {
        out.push(format!("{} duplicate instances or VMs", r.duplicates));
    }
    if r.left_after_delete > 0 {
        out.push(format!("{} machines or instances left after delete", r.left_after_delete));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_calls_are_the_create_and_its_reads_not_what_follows() {
        for op in ["RunInstances", "DescribeInstances", "DescribeImages", "PUT Microsoft.Compute/virtualMachines"] {
            assert!(is_create_call(op), "{op}");
        }
        for op in ["GetConsoleOutput", "ModifyInstanceMetadataOptions", "GET blob"] {
            assert!(!is_create_call(op), "{op}");
        }
        assert!(!is_create_call("POST Microsoft.Compute/virtualMachines/retrieveBootDiagnosticsData"));
        assert!(is_create_call("GET Microsoft.Compute/locations/operations"), "LRO polls count");
    }
}
