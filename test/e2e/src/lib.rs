//! The end-to-end harness: runs the real `capwin` binary as the manager against
//!
//! - by default, the test kit: an in-memory management API server with every CRD (capwin's and
//!   CAPI's), a second one as the workload cluster, and the CAPI-core simulator stepping every
//!   200 ms; or
//! - a real management cluster with CAPI installed, when `CAPWIN_E2E_KUBECONFIG` names its
//!   kubeconfig (capwin's CRDs must be installed; each scenario uses its own namespace).
//!
//! Scenarios drive the cluster through the Kubernetes API only, so they run unchanged in both
//! modes. The harness never fakes what CAPI or a provider does beyond what a real cluster lets
//! an admin do (it creates Nodes in the workload cluster to stand in for a Windows VM joining).
//! On a failing test the manager's log and the objects of the scenario are printed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use capwin_testkit::apiserver::{ApiServer, Config};
use capwin_testkit::capi::{CapiSim, SimConfig};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// Environment variable naming a real management cluster's kubeconfig.
pub const REAL_CLUSTER_ENV: &str = "CAPWIN_E2E_KUBECONFIG";

/// A bearer token the kit's management API server authenticates (TokenReview) as
/// [`KIT_USER`] in group [`KIT_GROUP`]; a real cluster knows no such token.
pub const KIT_USER_TOKEN: &str = "capwin-e2e-user-token";
pub const KIT_USER: &str = "capwin-e2e-user";
pub const KIT_GROUP: &str = "capwin-e2e-metrics-scrapers";

pub mod azure;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A free loopback port (for a manager flag).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The `capwin` binary cargo built next to this test (or `CAPWIN_BIN`).
pub fn capwin_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAPWIN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target/<profile>/deps");
    let bin = dir.join("capwin");
    assert!(
        bin.exists(),
        "{} missing: build it with `cargo build -p capwin` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

fn client_for(url: &str) -> Client {
    let mut cfg = kube::Config::new(url.parse().expect("a URL"));
    cfg.default_namespace = "default".into();
    Client::try_from(cfg).expect("a client")
}

/// One scenario's world.
pub struct Env {
    pub mgmt: Client,
    pub namespace: String,
    dir: PathBuf,
    kubeconfig: PathBuf,
    manager: Option<tokio::process::Child>,
    manager_args: Vec<String>,
    log: PathBuf,
    _servers: Vec<ApiServer>,
    sim: Option<tokio::task::JoinHandle<()>>,
    /// Cloud endpoints started for this scenario: the kit script that stops each.
    clouds: Vec<PathBuf>,
    /// Environment of the manager process (cloud endpoints and credentials).
    manager_env: Vec<(String, String)>,
    /// Fault-injecting proxies started for this scenario: the kit script that stops each.
    proxies: Vec<PathBuf>,
    /// Each started kit's own URL (for `AwsThrottled`: moto's, behind the proxy).
    kit_urls: Vec<(CloudKit, String)>,
    /// The fault-injecting proxy's URL, when one was started.
    proxy_url: Option<String>,
    /// The fake ARM's CA certificate (PEM path), when one was started.
    arm_ca: Option<String>,
}

/// A local cloud endpoint of the test kit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudKit {
    /// moto's EC2 server (`test/kit/aws/moto.sh`).
    Aws,
    /// The fake ARM server over HTTPS (`test/kit/azure/arm.sh`).
    Azure,
    /// moto with the kit's fault-injecting proxy (`throttle_proxy.py`) in front: the manager's
    /// `AWS_ENDPOINT_URL` is the proxy, so every EC2 call it makes is counted and can be made to
    /// fail ([`Env::aws_proxy`]); [`Env::kit_url`]`(CloudKit::Aws)` is moto itself.
    AwsThrottled,
}

impl Env {
    /// Starts the kit (or connects to the real cluster) and the manager.
    pub async fn start(name: &str, manager_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(name, manager_args, &[]).await
    }

    /// Like [`Env::start`], with local cloud endpoints started first and handed to the manager
    /// (moto: `AWS_ENDPOINT_URL`, test credentials, region us-east-1).
    pub async fn start_with(name: &str, manager_args: &[&str], clouds: &[CloudKit]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("capwin-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let namespace = format!("e2e-{name}");
        let (mgmt, kubeconfig, servers, sim) = match std::env::var_os(REAL_CLUSTER_ENV) {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(&path)?;
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                (Client::try_from(cfg)?, PathBuf::from(path), vec![], None)
            }
            None => {
                let mgmt_server = ApiServer::start(Config {
                    crd_paths: Self::kit_crd_paths(),
                    bookmark_interval: Duration::from_secs(1),
                    tokens: [(
                        KIT_USER_TOKEN.to_string(),
                        capwin_testkit::apiserver::UserInfo::user(KIT_USER, &[KIT_GROUP]),
                    )]
                    .into(),
                    ..Config::default()
                })
                .await?;
                let workload_server = ApiServer::start(Config::default()).await?;
                let mgmt = client_for(mgmt_server.url());
                let kubeconfig = dir.join("mgmt.kubeconfig");
                std::fs::write(
                    &kubeconfig,
                    capwin_testkit::capi::workload_kubeconfig("management", mgmt_server.url()),
                )?;
                let sim = CapiSim::new(
                    mgmt.clone(),
                    client_for(workload_server.url()),
                    SimConfig {
                        namespace: namespace.clone(),
                        workload_url: workload_server.url().into(),
                        join_nodes: false,
                    },
                );
                let task = tokio::spawn(async move {
                    loop {
                        if let Err(e) = sim.step().await {
                            eprintln!("simulator: {e:#}");
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                (mgmt, kubeconfig, vec![mgmt_server, workload_server], Some(task))
            }
        };
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(mgmt.clone());
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}}))?;
        match nss.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let mut args: Vec<String> = vec![
            "manager".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--namespace".into(),
            namespace.clone(),
        ];
        // Defaults a scenario may override. Scenarios scrape /metrics over plain HTTP unless they
        // pass `--metrics-secure true` (the manager's own default is secure).
        for (flag, value) in [
            ("--metrics-bind-address", "0"),
            ("--metrics-secure", "false"),
            ("--health-probe-bind-address", "0"),
            ("--log-format", "json"),
        ] {
            if !manager_args.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(manager_args.iter().map(|s| s.to_string()));
        let log = dir.join("manager.log");
        let mut env = Self {
            mgmt,
            namespace,
            dir,
            kubeconfig,
            manager: None,
            manager_args: args,
            log,
            _servers: servers,
            sim,
            clouds: vec![],
            manager_env: vec![],
            proxies: vec![],
            kit_urls: vec![],
            proxy_url: None,
            arm_ca: None,
        };
        for c in clouds {
            let url = env.start_cloud(*c)?;
            if matches!(c, CloudKit::Aws | CloudKit::AwsThrottled) {
                let vars = [
                    ("AWS_ENDPOINT_URL", url.as_str()),
                    ("AWS_ACCESS_KEY_ID", "testing"),
                    ("AWS_SECRET_ACCESS_KEY", "testing"),
                    ("AWS_REGION", "us-east-1"),
                ];
                env.manager_env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            }
            if *c == CloudKit::Azure {
                env.configure_azure(&url)?;
            }
        }
        env.start_manager().await?;
        Ok(env)
    }

    /// Starts (or restarts) the manager process; its log is appended to `manager.log`.
    pub async fn start_manager(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        self.manager = Some(self.spawn_manager(&self.manager_args, log)?);
        Ok(())
    }

    /// A `capwin manager` process with `args`, this scenario's environment (cloud endpoints,
    /// credentials) and its output in `log`; killed when dropped.
    fn spawn_manager(&self, args: &[String], log: std::fs::File) -> anyhow::Result<tokio::process::Child> {
        tokio::process::Command::new(capwin_bin())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("CAPWIN_E2E_LOG").unwrap_or_else(|_| {
                    "info,capwin_bootstrap=debug,capwin_infra=debug,capwin_aws=debug,capwin_azure=debug".into()
                }),
            )
            .envs(self.manager_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting capwin manager")
    }

    /// Starts another manager with this scenario's flags and environment (cloud endpoints,
    /// credentials) against the management cluster of `kubeconfig` (a `clusterctl move`
    /// target), logging to `log`. The caller owns the process; it is killed when dropped.
    pub fn spawn_manager_against(
        &self,
        kubeconfig: &std::path::Path,
        log: &std::path::Path,
    ) -> anyhow::Result<tokio::process::Child> {
        let mut args = self.manager_args.clone();
        if let Some(i) = args.iter().position(|a| a == "--kubeconfig") {
            args[i + 1] = kubeconfig.display().to_string();
        }
        self.spawn_manager(&args, std::fs::File::create(log)?)
    }

    /// Starts a local cloud endpoint for this scenario (its own state folder, so scenarios never
    /// share one) and returns its URL; it is stopped by PID when the scenario ends.
    pub fn start_cloud(&mut self, cloud: CloudKit) -> anyhow::Result<String> {
        let script = match cloud {
            CloudKit::Aws | CloudKit::AwsThrottled => repo().join("test/kit/aws/moto.sh"),
            CloudKit::Azure => repo().join("test/kit/azure/arm.sh"),
        };
        let url = self.kit_script(&script, "start")?;
        self.clouds.push(script.clone());
        if cloud == CloudKit::AwsThrottled {
            self.kit_urls.push((CloudKit::Aws, url));
            // Same state folder: the proxy finds this scenario's moto there.
            let proxy = self.kit_script(&script, "proxy-start")?;
            self.proxies.push(script);
            self.kit_urls.push((cloud, proxy.clone()));
            self.proxy_url = Some(proxy.clone());
            return Ok(proxy);
        }
        self.kit_urls.push((cloud, url.clone()));
        Ok(url)
    }

    /// Runs a kit script's command in this scenario's state folder; its last line of output.
    fn kit_script(&self, script: &std::path::Path, command: &str) -> anyhow::Result<String> {
        let out = std::process::Command::new(script)
            .arg(command)
            .env("CAPWIN_KIT_STATE", self.dir.join("kit"))
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} {command} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.lines().last().unwrap_or_default().trim().to_string())
    }

    /// A started kit's own URL: `kit_url(CloudKit::Aws)` is moto even behind the proxy, so a
    /// scenario's checks neither count as the manager's calls nor use up injected faults.
    pub fn kit_url(&self, cloud: CloudKit) -> Option<&str> {
        self.kit_urls.iter().find(|(c, _)| *c == cloud).map(|(_, u)| u.as_str())
    }

    /// Calls the fault-injecting proxy's control API (`/_capwin/...`, see
    /// `test/kit/aws/README.md`): `aws_proxy("stats", None)` is a GET, with a body a POST.
    pub fn aws_proxy(&self, call: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!(
            "{}/_capwin/{call}",
            self.proxy_url.as_deref().context("no proxy started (CloudKit::AwsThrottled)")?
        );
        let method = if body.is_some() { "POST" } else { "GET" };
        control_call(&url, method, body, None)
    }

    /// Stops the kit's CAPI simulator (a paused Cluster's objects then stay as they are, as
    /// CAPI's controllers leave them; the simulator itself does not honour `spec.paused`).
    pub fn stop_simulator(&mut self) {
        if let Some(s) = self.sim.take() {
            s.abort();
        }
    }

    /// The paths of the CRDs the kit's management API server serves (capwin's and CAPI's).
    pub fn kit_crd_paths() -> Vec<PathBuf> {
        vec![repo().join("crds/bootstrap"), repo().join("crds/infrastructure"), repo().join("../shared/capi-crds")]
    }

    /// Kills the manager at once (SIGKILL), as a crash would.
    pub async fn kill_manager(&mut self) {
        if let Some(mut c) = self.manager.take() {
            let _ = c.kill().await;
        }
    }

    pub fn manager_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The manager's environment entry `key`, e.g. the moto URL under `AWS_ENDPOINT_URL`.
    pub fn manager_env(&self, key: &str) -> Option<&str> {
        self.manager_env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether the scenario runs against a real cluster (`CAPWIN_E2E_KUBECONFIG`).
    pub fn is_real(&self) -> bool {
        self._servers.is_empty()
    }

    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    pub fn api(&self, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
        let plural = format!("{}s", kind.to_lowercase());
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(group, version, kind),
            &plural,
        );
        Api::namespaced_with(self.mgmt.clone(), &self.namespace, &ar)
    }

    pub fn capi(&self, kind: &str) -> Api<DynamicObject> {
        self.api("cluster.x-k8s.io", "v1beta2", kind)
    }

    pub fn configs(&self) -> Api<DynamicObject> {
        self.api("bootstrap.cluster.x-k8s.io", "v1alpha1", "WindowsKubeadmConfig")
    }

    pub fn secrets(&self) -> Api<k8s_openapi::api::core::v1::Secret> {
        Api::namespaced(self.mgmt.clone(), &self.namespace)
    }

    /// Creates any object in the scenario's namespace.
    pub async fn create(&self, group: &str, version: &str, kind: &str, body: Value) -> anyhow::Result<DynamicObject> {
        let mut body = body;
        body["apiVersion"] = json!(if group.is_empty() { version.to_string() } else { format!("{group}/{version}") });
        body["kind"] = json!(kind);
        Ok(self.api(group, version, kind).create(&PostParams::default(), &serde_json::from_value(body)?).await?)
    }

    /// A client for the cluster's workload API server, from its `<cluster>-kubeconfig` Secret.
    pub async fn workload(&self, cluster: &str) -> anyhow::Result<Client> {
        let s = self.secrets().get(&format!("{cluster}-kubeconfig")).await?;
        let raw = s.data.and_then(|d| d.get("value").cloned()).context("kubeconfig value")?;
        let kc = kube::config::Kubeconfig::from_yaml(std::str::from_utf8(&raw.0)?)?;
        Ok(Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?)
    }

    /// A Windows VM joins: a Node with this providerID appears in the workload cluster.
    pub async fn join_node(&self, cluster: &str, node: &str, provider_id: &str) -> anyhow::Result<()> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.workload(cluster).await?);
        let n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"kubernetes.io/os": "windows"}}, "spec": {"providerID": provider_id}});
        nodes.create(&PostParams::default(), &serde_json::from_value(n)?).await?;
        Ok(())
    }

    /// Polls `f` until it returns `Some`, or fails after `timeout` naming `what`.
    pub async fn wait<T, F, Fut>(&self, what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match f().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context(format!("waiting for {what}")));
                }
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `name`'s `Ready` condition has `reason` (and, when given, that status).
    pub async fn wait_ready_reason(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        reason: &str,
        status: Option<bool>,
    ) -> DynamicObject {
        let want = status.map(|s| if s { "True" } else { "False" });
        self.wait(&format!("{name} Ready reason {reason}"), Duration::from_secs(60), || async {
            let o = api.get_opt(name).await?;
            Ok(o.filter(|o| condition(o, "Ready").is_some_and(|(s, r, _)| r == reason && want.is_none_or(|w| s == w))))
        })
        .await
        .unwrap()
    }

    /// Dumps what a failed scenario left, to stderr.
    async fn dump(&self) {
        eprintln!("---- capwin manager log ({}) ----", self.log.display());
        let log = self.manager_log();
        let lines: Vec<&str> = log.lines().collect();
        for l in &lines[lines.len().saturating_sub(80)..] {
            eprintln!("{l}");
        }
        if self.proxy_url.is_some() {
            eprintln!("---- AWS proxy stats: {}", self.aws_proxy("stats", None).unwrap_or_default());
        }
        for (g, v, k) in [
            ("bootstrap.cluster.x-k8s.io", "v1alpha1", "WindowsKubeadmConfig"),
            ("cluster.x-k8s.io", "v1beta2", "Machine"),
        ] {
            if let Ok(list) = self.api(g, v, k).list(&ListParams::default()).await {
                for o in list {
                    eprintln!("---- {k} {} status: {}", o.name_any(), o.data["status"]);
                }
            }
        }
    }
}

/// A Windows worker pool the way the cluster templates make one: a `WindowsKubeadmConfigTemplate`
/// and an infrastructure machine template (both named `templates`) and a MachineDeployment.
pub struct Pool<'a> {
    pub templates: &'a str,
    /// The MachineDeployment; the simulator names its Machines `<md>-0`, `<md>-1`, ...
    pub md: &'a str,
    pub cluster: &'a str,
    pub replicas: u32,
    pub version: &'a str,
    pub failure_domain: Option<&'a str>,
    /// `AWSWindowsMachine` or `AzureWindowsMachine`.
    pub infra_kind: &'a str,
    pub infra_spec: Value,
    /// The `WindowsKubeadmConfig` spec.
    pub config: Value,
}

impl Env {
    pub async fn windows_pool(&self, p: Pool<'_>) -> anyhow::Result<()> {
        const B: &str = "bootstrap.cluster.x-k8s.io";
        const I: &str = "infrastructure.cluster.x-k8s.io";
        let infra_template = format!("{}Template", p.infra_kind);
        self.create(
            B,
            "v1alpha1",
            "WindowsKubeadmConfigTemplate",
            json!({"metadata": {"name": p.templates}, "spec": {"template": {"spec": p.config}}}),
        )
        .await?;
        self.create(
            I,
            "v1alpha1",
            &infra_template,
            json!({"metadata": {"name": p.templates}, "spec": {"template": {"spec": p.infra_spec}}}),
        )
        .await?;
        self.machine_deployment(&p).await
    }

    /// The pool's MachineDeployment alone, over templates that already exist (a second
    /// MachineDeployment over the same templates, as a rollout makes).
    pub async fn machine_deployment(&self, p: &Pool<'_>) -> anyhow::Result<()> {
        const B: &str = "bootstrap.cluster.x-k8s.io";
        const I: &str = "infrastructure.cluster.x-k8s.io";
        let infra_template = format!("{}Template", p.infra_kind);
        let mut machine = json!({"clusterName": p.cluster, "version": p.version,
            "bootstrap": {"configRef": {"apiGroup": B, "kind": "WindowsKubeadmConfigTemplate", "name": p.templates}},
            "infrastructureRef": {"apiGroup": I, "kind": infra_template, "name": p.templates}});
        if let Some(fd) = p.failure_domain {
            machine["failureDomain"] = json!(fd);
        }
        self.create(
            "cluster.x-k8s.io",
            "v1beta2",
            "MachineDeployment",
            json!({"metadata": {"name": p.md}, "spec": {"clusterName": p.cluster, "replicas": p.replicas,
                "selector": {"matchLabels": {}}, "template": {"spec": machine}}}),
        )
        .await?;
        Ok(())
    }
}

/// One call to a kit's control API (`/_capwin/...`) with curl, trusting only `ca` when given;
/// the answer must be JSON.
pub(crate) fn control_call(url: &str, method: &str, body: Option<Value>, ca: Option<&str>) -> anyhow::Result<Value> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--fail-with-body", "--max-time", "10", "-X", method]);
    if let Some(ca) = ca {
        cmd.args(["--cacert", ca]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
    }
    let out = cmd.arg(url).output().context("running curl")?;
    anyhow::ensure!(
        out.status.success(),
        "{url}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("{url} answered no JSON"))
}

/// A condition of an object as (status, reason, message).
pub fn condition(o: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    o.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        (field("status"), field("reason"), field("message"))
    })
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.sim.take() {
            s.abort();
        }
        for script in self.proxies.drain(..) {
            let _ = std::process::Command::new(&script)
                .arg("proxy-stop")
                .env("CAPWIN_KIT_STATE", self.dir.join("kit"))
                .output();
        }
        for script in self.clouds.drain(..) {
            let _ =
                std::process::Command::new(&script).arg("stop").env("CAPWIN_KIT_STATE", self.dir.join("kit")).output();
        }
        if std::thread::panicking() {
            let handle = tokio::runtime::Handle::current();
            let this: &Env = self;
            tokio::task::block_in_place(|| handle.block_on(this.dump()));
            eprintln!("scenario files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
