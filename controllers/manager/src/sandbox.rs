//! `capwin sandbox`: the whole flow on this machine, with nothing to install.
//!
//! Brings up the test kit (an in-memory management API server with capwin's and CAPI's CRDs, a
//! second one as the workload cluster, and the CAPI-core simulator), applies the example Windows
//! cluster (`config/samples/sandbox-cluster.yaml`, embedded), runs the bootstrap controller
//! in-process exactly as `capwin manager` runs it, and prints each Windows machine's progress
//! until every one has joined. Rendered payloads land in `--out`.
//!
//! Until the AWS and Azure machine shims land, the sandbox also plays the infrastructure
//! provider: once a Machine has its bootstrap data it reports the VM as provisioned with a
//! made-up provider ID, and the simulator then makes the Node join. Those lines are marked
//! `(simulated)`.

use std::collections::BTreeMap;
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
use serde_json::{Value, json};

const EXAMPLE: &str = include_str!("../../../config/samples/sandbox-cluster.yaml");
const CAPWIN_CRDS: [&str; 6] = [
    include_str!("../../../crds/bootstrap.cluster.x-k8s.io_windowskubeadmconfigs.yaml"),
    include_str!("../../../crds/bootstrap.cluster.x-k8s.io_windowskubeadmconfigtemplates.yaml"),
    include_str!("../../../crds/infrastructure.cluster.x-k8s.io_awswindowsmachines.yaml"),
    include_str!("../../../crds/infrastructure.cluster.x-k8s.io_awswindowsmachinetemplates.yaml"),
    include_str!("../../../crds/infrastructure.cluster.x-k8s.io_azurewindowsmachines.yaml"),
    include_str!("../../../crds/infrastructure.cluster.x-k8s.io_azurewindowsmachinetemplates.yaml"),
];
const CAPI_CRDS: [&str; 3] = [
    include_str!("../../../test/kit/capi-crds/cluster.x-k8s.io_clusters.yaml"),
    include_str!("../../../test/kit/capi-crds/cluster.x-k8s.io_machines.yaml"),
    include_str!("../../../test/kit/capi-crds/cluster.x-k8s.io_machinedeployments.yaml"),
];

#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Folder for the rendered payloads.
    #[arg(long, default_value = "sandbox-out")]
    out: PathBuf,
    /// A file of objects to apply instead of the embedded example.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, default_value = "120s", value_parser = crate::manager::parse_duration)]
    timeout: Duration,
    /// Keep the API servers running after the machines joined (prints their URLs).
    #[arg(long)]
    keep_running: bool,
}

fn client(url: &str) -> anyhow::Result<Client> {
    let mut cfg = kube::Config::new(url.parse()?);
    cfg.default_namespace = "default".into();
    Ok(Client::try_from(cfg)?)
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        &format!("{}s", kind.to_lowercase()),
    )
}

pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |msg: String| println!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64());
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
    let mgmt = client(mgmt_server.url())?;
    let workload = client(workload_server.url())?;

    let ns = "default";
    let sim = CapiSim::new(
        mgmt.clone(),
        workload.clone(),
        SimConfig { namespace: ns.into(), workload_url: workload_server.url().into(), join_nodes: true },
    );
    let text = match &args.cluster {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => EXAMPLE.to_string(),
    };
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        let ar = resource(v["apiVersion"].as_str().unwrap_or_default(), v["kind"].as_str().unwrap_or_default());
        let api: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), ns, &ar);
        let o = api
            .create(&PostParams::default(), &serde_json::from_value(v.clone())?)
            .await
            .with_context(|| format!("applying {} {}", v["kind"], v["metadata"]["name"]))?;
        say(format!("applied {} {}", ar.kind, o.name_any()));
    }

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let settings =
        Settings { namespace: Some(ns.into()), token_ttl: Duration::from_secs(15 * 60), ..Settings::default() };
    let controller = tokio::spawn(capwin_bootstrap::reconcile::run(Context::new(mgmt.clone(), metrics, settings)));
    say("bootstrap controller running (the same code as `capwin manager --controllers bootstrap`)".into());
    std::fs::create_dir_all(&args.out)?;

    let machines: Api<DynamicObject> =
        Api::namespaced_with(mgmt.clone(), ns, &resource("cluster.x-k8s.io/v1beta2", "Machine"));
    let configs: Api<DynamicObject> = Api::namespaced_with(
        mgmt.clone(),
        ns,
        &resource("bootstrap.cluster.x-k8s.io/v1alpha1", "WindowsKubeadmConfig"),
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(mgmt.clone(), ns);
    let tokens: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(workload.clone(), "kube-system");
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut written = std::collections::BTreeSet::new();
    let deadline = Instant::now() + args.timeout;
    loop {
        sim.step().await?;
        let ms = machines.list(&ListParams::default()).await?.items;
        let mut all_joined = !ms.is_empty();
        for m in &ms {
            let name = m.name_any();
            let cfg_name = m.data["spec"]["bootstrap"]["configRef"]["name"].as_str().unwrap_or_default().to_string();
            let cfg = configs.get_opt(&cfg_name).await?;
            let reason = cfg
                .as_ref()
                .and_then(|c| {
                    c.data["status"]["conditions"]
                        .as_array()
                        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
                })
                .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
                .unwrap_or_else(|| "-".into());
            let data = m.data["spec"]["bootstrap"]["dataSecretName"].as_str().map(String::from);
            if let Some(d) = &data {
                if !written.contains(&name)
                    && let Some(s) = secrets.get_opt(d).await?
                {
                    let value = s.data.and_then(|d| d.get("value").cloned()).map(|v| v.0).unwrap_or_default();
                    write_payload(&args.out, &name, &value)?;
                    let file = args.out.join(format!("{name}.userdata"));
                    say(format!("{name}: payload written to {} ({} bytes)", file.display(), value.len()));
                    written.insert(name.clone());
                }
                simulate_infrastructure(&mgmt, ns, m).await?;
            }
            let node = m.data["status"]["nodeRef"]["name"].as_str().unwrap_or("-").to_string();
            let provider = m.data["spec"]["providerID"].as_str().unwrap_or("-").to_string();
            let live_tokens = tokens.list(&ListParams::default()).await?.items.len();
            let line =
                format!("bootstrap={reason} data={} provider={provider} node={node}", data.as_deref().unwrap_or("-"));
            if last.get(&name) != Some(&line) {
                say(format!("{name}: {line} (join tokens in workload cluster: {live_tokens})"));
                last.insert(name.clone(), line);
            }
            all_joined &= reason == "Joined";
        }
        if all_joined {
            let left = tokens.list(&ListParams::default()).await?.items.len();
            say(format!("all {} Windows machines joined; join tokens left in the workload cluster: {left}", ms.len()));
            say(format!(
                "payloads are in {}/ (.userdata as the cloud gets it, .cloud-config.yaml readable)",
                args.out.display()
            ));
            break;
        }
        if Instant::now() > deadline {
            controller.abort();
            anyhow::bail!("not every machine joined within {:?}; see the lines above", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if args.keep_running {
        say("keeping the API servers up; Ctrl-C to stop".into());
        loop {
            sim.step().await?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
    controller.abort();
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

/// (simulated) The infrastructure provider: the VM boots with the payload.
async fn simulate_infrastructure(mgmt: &Client, ns: &str, m: &DynamicObject) -> anyhow::Result<()> {
    let r = &m.data["spec"]["infrastructureRef"];
    let kind = r["kind"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(mgmt.clone(), ns, &resource("infrastructure.cluster.x-k8s.io/v1alpha1", kind));
    let name = r["name"].as_str().unwrap_or_default();
    let Some(inf) = api.get_opt(name).await? else { return Ok(()) };
    if inf.data["status"]["initialization"]["provisioned"] == true {
        return Ok(());
    }
    let n = m.name_any().bytes().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    let provider_id = if kind.starts_with("AWS") {
        format!("aws:///us-east-1a/i-{n:016x}0")
    } else {
        format!(
            "azure:///subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sandbox/providers/Microsoft.Compute/virtualMachines/{}",
            m.name_any()
        )
    };
    api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"providerID": provider_id}}))).await?;
    let status = json!({"status": {"initialization": {"provisioned": true}, "addresses": [{"type": "InternalIP", "address": format!("10.0.1.{}", n % 200 + 10)}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Simulated", "message": "(simulated) the sandbox plays the infrastructure provider", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await?;
    println!("          {}: (simulated) VM running as {provider_id}", m.name_any());
    Ok(())
}
