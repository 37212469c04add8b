//! `clusterctl move` of a running Windows cluster, AWS (moto behind the kit's counting proxy)
//! and Azure (the fake ARM, which counts calls), into a second management API server, done the
//! way clusterctl does it
//! (`cmd/clusterctl/client/cluster/objectgraph.go` and `mover.go` of cluster-api):
//!
//! - discovery: the kinds of the CRDs labelled `clusterctl.cluster.x-k8s.io` (clusterctl init puts
//!   that label on every provider's CRDs; capwin's carry it from `crds/` already, and this test
//!   requires it of them) plus Secrets and ConfigMaps, listed in the Cluster's namespace;
//! - the graph: owner references; Secrets without owners named `<cluster>-<suffix>` (split at the
//!   last `-`) soft-owned by that Cluster; ClusterResourceSetBindings soft-owned by their Cluster;
//!   Clusters, ClusterClasses, ClusterResourceSets and kinds or objects labelled
//!   `clusterctl.cluster.x-k8s.io/move-hierarchy` take their owner-reference descendants;
//!   kinds or objects labelled `clusterctl.cluster.x-k8s.io/move` are taken alone;
//! - the move: source Cluster paused, objects created in the target owners first (metadata and
//!   spec: no uid, resourceVersion or status; owner reference uids remapped to the new objects),
//!   source objects annotated `clusterctl.cluster.x-k8s.io/delete-for-move`, their finalizers
//!   removed and deleted, the target Cluster unpaused.
//!
//! The source manager is stopped before the originals go, so no finalizer or deletion reaches
//! the cloud or the workload cluster. The moved machine must adopt its instance or VM (AWS: 0
//! RunInstances, 0 TerminateInstances; Azure: no PUT or DELETE), report Ready again, and its joined config must stay Joined without a new
//! join token or a rewritten data Secret. Every object of the namespace must be taken: an object
//! the move would leave behind fails the test by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use capwin_e2e::{CloudKit, Env, Pool, REAL_CLUSTER_ENV};
use capwin_testkit::apiserver::{ApiServer, Config};
use capwin_testkit::capi::{CapiSim, SimConfig};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const I: &str = "infrastructure.cluster.x-k8s.io";
const CLUSTERCTL_LABEL: &str = "clusterctl.cluster.x-k8s.io";
const MOVE_LABEL: &str = "clusterctl.cluster.x-k8s.io/move";
const MOVE_HIERARCHY_LABEL: &str = "clusterctl.cluster.x-k8s.io/move-hierarchy";
const DELETE_FOR_MOVE: &str = "clusterctl.cluster.x-k8s.io/delete-for-move";

fn client_for(url: &str) -> Client {
    let mut cfg = kube::Config::new(url.parse().expect("a URL"));
    cfg.default_namespace = "default".into();
    Client::try_from(cfg).expect("a client")
}

fn section(stats: &Value, key: &str) -> BTreeMap<String, u64> {
    stats[key]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

fn minus(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
}

/// A kind move discovers, as `getDiscoveryTypes` records it.
struct Kind {
    ar: ApiResource,
    force_move: bool,
    force_move_hierarchy: bool,
}

/// One object of the graph (`node` in objectgraph.go).
struct Node {
    ar: ApiResource,
    obj: DynamicObject,
    owners: Vec<String>,
    soft_owners: Vec<String>,
    force_move: bool,
    force_move_hierarchy: bool,
}

impl Node {
    fn id(&self) -> String {
        format!("{} {}", self.ar.kind, self.obj.name_any())
    }
}

/// The kinds `clusterctl move` discovers on `client`: CRDs labelled `clusterctl.cluster.x-k8s.io`
/// (storage version), with their move labels, and Secrets and ConfigMaps. The kit's CAPI CRDs
/// are upstream's `config/crd/bases` without the label clusterctl init adds to them, so they
/// count as labelled; capwin's CRDs must carry it themselves.
async fn discovery_types(client: &Client) -> anyhow::Result<Vec<Kind>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut kinds = vec![];
    for crd in crds.list(&ListParams::default()).await? {
        let labels = crd.labels();
        let capwin = crd.spec.names.kind.contains("Windows");
        if capwin {
            assert!(
                labels.contains_key(CLUSTERCTL_LABEL),
                "capwin's CRD {} lacks the {CLUSTERCTL_LABEL} label move discovers CRDs by",
                crd.name_any()
            );
        }
        if !crd.spec.group.ends_with("cluster.x-k8s.io") {
            continue;
        }
        // Global kinds (CAPA's identities) are listed cluster-wide by clusterctl; a capwin
        // cluster's objects are all namespaced, and this cluster names no identity.
        if crd.spec.scope == "Cluster" {
            continue;
        }
        let Some(v) = crd.spec.versions.iter().find(|v| v.storage) else { continue };
        let kind = crd.spec.names.kind.clone();
        let group = crd.spec.group.clone();
        let builtin_hierarchy = (group == "cluster.x-k8s.io" && (kind == "Cluster" || kind == "ClusterClass"))
            || (group == "addons.cluster.x-k8s.io" && kind == "ClusterResourceSet");
        let force_move_hierarchy = builtin_hierarchy || labels.contains_key(MOVE_HIERARCHY_LABEL);
        kinds.push(Kind {
            ar: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(&group, &v.name, &kind),
                &crd.spec.names.plural,
            ),
            force_move: force_move_hierarchy || labels.contains_key(MOVE_LABEL),
            force_move_hierarchy,
        });
    }
    for (kind, plural) in [("Secret", "secrets"), ("ConfigMap", "configmaps")] {
        kinds.push(Kind {
            ar: ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", kind), plural),
            force_move: false,
            force_move_hierarchy: false,
        });
    }
    Ok(kinds)
}

/// The objects of `ns` with their owner and soft-owner links (`Discovery` + `setSoftOwnership`).
async fn discover(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, Node>> {
    let mut nodes = BTreeMap::new();
    for k in discovery_types(client).await? {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &k.ar);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            // getObjList: a kind the server does not serve has no objects.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                eprintln!("move discovery: {} not served", k.ar.kind);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for obj in list {
            // A namespace's CA bundle is the API server's own, never a cluster's.
            if k.ar.kind == "ConfigMap" && obj.name_any() == "kube-root-ca.crt" {
                continue;
            }
            let labels = obj.labels();
            let node = Node {
                ar: k.ar.clone(),
                owners: obj.owner_references().iter().map(|o| o.uid.clone()).collect(),
                soft_owners: vec![],
                force_move: k.force_move || labels.contains_key(MOVE_LABEL),
                force_move_hierarchy: k.force_move_hierarchy || labels.contains_key(MOVE_HIERARCHY_LABEL),
                obj,
            };
            nodes.insert(node.obj.uid().expect("a stored object has a uid"), node);
        }
    }
    let clusters: HashMap<String, String> = nodes
        .iter()
        .filter(|(_, n)| n.ar.group == "cluster.x-k8s.io" && n.ar.kind == "Cluster")
        .map(|(uid, n)| (n.obj.name_any(), uid.clone()))
        .collect();
    for n in nodes.values_mut() {
        let linked = if n.ar.kind == "Secret" && n.ar.group.is_empty() && n.owners.is_empty() {
            // secret.ParseSecretName: `<cluster>-<purpose>`, split at the last '-'.
            n.obj.name_any().rsplit_once('-').map(|(c, _)| c.to_string())
        } else if n.ar.kind == "ClusterResourceSetBinding" {
            n.obj.data["spec"]["clusterName"].as_str().map(String::from)
        } else {
            None
        };
        if let Some(uid) = linked.and_then(|c| clusters.get(&c)) {
            n.soft_owners.push(uid.clone());
        }
    }
    Ok(nodes)
}

/// The uids `clusterctl move` takes (`setTenants` + `getMoveNodes`).
fn move_set(nodes: &BTreeMap<String, Node>) -> BTreeSet<String> {
    let mut taken: BTreeSet<String> = nodes.iter().filter(|(_, n)| n.force_move).map(|(u, _)| u.clone()).collect();
    let mut stack: Vec<String> = nodes.iter().filter(|(_, n)| n.force_move_hierarchy).map(|(u, _)| u.clone()).collect();
    let mut seen = BTreeSet::new();
    while let Some(uid) = stack.pop() {
        if !seen.insert(uid.clone()) {
            continue;
        }
        taken.insert(uid.clone());
        for (other, n) in nodes {
            if n.owners.contains(&uid) || n.soft_owners.contains(&uid) {
                stack.push(other.clone());
            }
        }
    }
    taken
}

/// Owners before what they own (`getMoveSequence`): groups of objects whose moved owners are
/// all in earlier groups.
fn move_sequence(nodes: &BTreeMap<String, Node>, taken: &BTreeSet<String>) -> Vec<String> {
    let mut order: Vec<String> = vec![];
    let mut placed = BTreeSet::new();
    while placed.len() < taken.len() {
        let group: Vec<String> = taken
            .iter()
            .filter(|u| !placed.contains(*u))
            .filter(|u| {
                let n = &nodes[*u];
                n.owners.iter().chain(&n.soft_owners).all(|o| !taken.contains(o) || placed.contains(o))
            })
            .cloned()
            .collect();
        assert!(!group.is_empty(), "an ownership cycle among {:?}", taken.difference(&placed).collect::<Vec<_>>());
        placed.extend(group.iter().cloned());
        order.extend(group);
    }
    order
}

/// What `createTargetObject` sends: metadata without server fields, owner uids remapped, no
/// status.
fn target_object(n: &Node, new_uids: &HashMap<String, String>) -> Value {
    let mut o = serde_json::to_value(&n.obj).expect("an object serialises");
    o["apiVersion"] = json!(n.ar.api_version);
    o["kind"] = json!(n.ar.kind);
    let meta = o["metadata"].as_object_mut().expect("metadata");
    for k in ["uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink"] {
        meta.remove(k);
    }
    if let Some(refs) = meta.get_mut("ownerReferences").and_then(Value::as_array_mut) {
        for r in refs {
            if let Some(new) = r["uid"].as_str().and_then(|u| new_uids.get(u)) {
                r["uid"] = json!(new);
            }
        }
    }
    o.as_object_mut().expect("object").remove("status");
    o
}

/// The cloud a scenario moves a cluster of.
#[derive(Clone, Copy, PartialEq)]
enum Cloud {
    Aws,
    Azure,
}

impl Cloud {
    fn machine_kind(self) -> &'static str {
        match self {
            Cloud::Aws => "AWSWindowsMachine",
            Cloud::Azure => "AzureWindowsMachine",
        }
    }

    fn running(self) -> &'static str {
        match self {
            Cloud::Aws => "InstanceRunning",
            Cloud::Azure => "VMRunning",
        }
    }

    /// The cloud's count of calls per action or method and resource type, since its start.
    fn calls(self, env: &Env) -> BTreeMap<String, u64> {
        match self {
            Cloud::Aws => section(&env.aws_proxy("stats", None).unwrap(), "requests"),
            Cloud::Azure => section(&env.arm("GET", "counts", None).unwrap(), "counts"),
        }
    }

    /// Calls that create or delete something in the cloud.
    fn mutating(self, calls: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        calls
            .iter()
            .filter(|(k, _)| match self {
                Cloud::Aws => ["RunInstances", "TerminateInstances"].contains(&k.as_str()),
                Cloud::Azure => k.starts_with("PUT ") || k.starts_with("DELETE "),
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// A cluster with one Windows machine, its config naming a file from a Secret the user made
/// and labelled for move (its name links it to no Cluster).
async fn cluster(env: &Env, cloud: Cloud, name: &str) {
    env.create(
        "",
        "v1",
        "Secret",
        json!({"metadata": {"name": "node-files", "labels": {MOVE_LABEL: ""}}, "stringData": {"motd": "moved"}}),
    )
    .await
    .unwrap();
    let mut spec = json!({"controlPlaneEndpoint": {"host": "10.0.0.4", "port": 6443}});
    if cloud == Cloud::Azure {
        let ac = json!({"metadata": {"name": name}, "spec": {
            "subscriptionID": capwin_e2e::azure::SUBSCRIPTION, "resourceGroup": capwin_e2e::azure::RESOURCE_GROUP,
            "location": "westeurope",
            "networkSpec": {"vnet": {"name": "capwin-e2e-vnet"},
                "subnets": [{"name": "capwin-e2e-controlplane-subnet", "role": "control-plane"},
                    {"name": "capwin-e2e-node-subnet", "role": "node"}]}}});
        env.create(I, "v1beta1", "AzureCluster", ac).await.unwrap();
        spec["infrastructureRef"] = json!({"apiGroup": I, "kind": "AzureCluster", "name": name});
    }
    env.create("cluster.x-k8s.io", "v1beta2", "Cluster", json!({"metadata": {"name": name}, "spec": spec}))
        .await
        .unwrap();
    let files = json!([{"path": "C:\\k\\motd.txt", "contentFrom": {"secret": {"name": "node-files", "key": "motd"}}}]);
    let pool = match cloud {
        Cloud::Aws => Pool {
            templates: name,
            md: name,
            cluster: name,
            replicas: 1,
            version: "v1.34.13",
            failure_domain: Some("us-east-1c"),
            infra_kind: "AWSWindowsMachine",
            infra_spec: json!({"instanceType": "m6i.xlarge",
                "subnet": {"filters": [{"name": "default-for-az", "values": ["true"]}]},
                "securityGroups": [{"filters": [{"name": "group-name", "values": ["default"]}]}]}),
            config: json!({"files": files}),
        },
        Cloud::Azure => Pool {
            templates: name,
            md: name,
            cluster: name,
            replicas: 1,
            version: "v1.35.10",
            failure_domain: Some("2"),
            infra_kind: "AzureWindowsMachine",
            infra_spec: json!({"vmSize": "Standard_D4s_v5",
                "osDisk": {"diskSizeGB": 128, "storageAccountType": "Premium_LRS"}}),
            config: json!({"windows": {"version": "2025"}, "files": files}),
        },
    };
    env.windows_pool(pool).await.unwrap();
}

fn ready(o: &DynamicObject) -> Option<(String, String)> {
    capwin_e2e::condition(o, "Ready").map(|(s, r, _)| (s, r))
}

fn paused(o: &DynamicObject) -> bool {
    capwin_e2e::condition(o, "Paused").is_some_and(|(s, _, _)| s == "True")
}

async fn token_secrets(workload: &Client) -> BTreeSet<String> {
    let secrets: Api<Secret> = Api::namespaced(workload.clone(), "kube-system");
    secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.name_any())
        .filter(|n| n.starts_with("bootstrap-token-"))
        .collect()
}

/// One scenario at a time: each starts its own cloud kit, two API servers and two managers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skip_on_real_cluster() -> bool {
    if std::env::var_os(REAL_CLUSTER_ENV).is_some() {
        eprintln!(
            "skipped against {REAL_CLUSTER_ENV}: the move's target is a second management cluster \
             with CAPI and capwin installed, which one real cluster cannot provide"
        );
        return true;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_aws_cluster_adopts_its_instance_without_creating_or_deleting() {
    if skip_on_real_cluster() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env =
        Env::start_with("move-aws", &["--controllers", "bootstrap,aws"], &[CloudKit::AwsThrottled]).await.unwrap();
    move_scenario(env, Cloud::Aws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_azure_cluster_adopts_its_vm_without_creating_or_deleting() {
    if skip_on_real_cluster() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start_with("move-azure", &["--controllers", "bootstrap,azure"], &[CloudKit::Azure]).await.unwrap();
    move_scenario(env, Cloud::Azure).await;
}

async fn move_scenario(mut env: Env, cloud: Cloud) {
    let started = std::time::Instant::now();
    let ns = env.namespace.clone();
    let kind = cloud.machine_kind();
    cluster(&env, cloud, "mv").await;
    // CAPI's controllers make the Cluster an owner of its infrastructure cluster (Cluster
    // controller) and of a MachineDeployment (MachineDeployment controller), and its MachineSet
    // controller of the templates a MachineSet uses (`reconcileExternalTemplateReference`); the
    // kit's simulator does none of it, so the test does.
    let cluster = env.capi("Cluster").get("mv").await.unwrap();
    let cluster_ref = json!([{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "name": "mv",
        "uid": cluster.uid().unwrap()}]);
    let mut owned = vec![
        env.capi("MachineDeployment"),
        env.api(I, "v1alpha1", &format!("{kind}Template")),
        env.api("bootstrap.cluster.x-k8s.io", "v1alpha1", "WindowsKubeadmConfigTemplate"),
    ];
    if cloud == Cloud::Azure {
        owned.push(env.api(I, "v1beta1", "AzureCluster"));
    }
    for api in owned {
        let patch = json!({"metadata": {"ownerReferences": cluster_ref.clone()}});
        api.patch("mv", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }

    // Running and joined.
    let machines = env.api(I, "v1alpha1", kind);
    let m = env.wait_ready_reason(&machines, "mv-0", cloud.running(), Some(true)).await;
    let provider_id = env
        .wait("the machine's providerID", T, || async {
            let m = machines.get("mv-0").await?;
            Ok(m.data["spec"]["providerID"].as_str().map(String::from))
        })
        .await
        .unwrap();
    env.wait("Machine.spec.providerID", T, || async {
        let mm = env.capi("Machine").get("mv-0").await?;
        Ok((mm.data["spec"]["providerID"] == provider_id.as_str()).then_some(()))
    })
    .await
    .unwrap();
    let node = match cloud {
        Cloud::Aws => m.data["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == "InternalDNS")
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string(),
        Cloud::Azure => provider_id.rsplit('/').next().unwrap().to_string(),
    };
    env.join_node("mv", &node, &provider_id).await.unwrap();
    let configs = env.configs();
    env.wait_ready_reason(&configs, "mv-0", "Joined", Some(true)).await;
    // The data Secret scrubbed after the join (no token key left): what the move must keep.
    let data = env
        .wait("the data Secret scrubbed after the join", T, || async {
            let s = env.secrets().get("mv-0").await?;
            Ok(s.data.as_ref().is_some_and(|d| !d.contains_key("bootstrap-token")).then_some(s))
        })
        .await
        .unwrap();
    let source_machine = machines.get("mv-0").await.unwrap();
    let workload = env.workload("mv").await.unwrap();
    let workload_url = {
        let s = env.secrets().get("mv-kubeconfig").await.unwrap();
        let raw = s.data.unwrap()["value"].0.clone();
        let kc = kube::config::Kubeconfig::from_yaml(std::str::from_utf8(&raw).unwrap()).unwrap();
        kc.clusters[0].cluster.as_ref().unwrap().server.clone().unwrap()
    };
    let tokens_before = token_secrets(&workload).await;
    eprintln!("move: source running and joined after {:?}", started.elapsed());

    // clusterctl move, step by step. Pause the source; CAPI (the simulator) and capwin leave it.
    env.capi("Cluster")
        .patch("mv", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": true}})))
        .await
        .unwrap();
    env.wait("the config to report Paused", T, || async { Ok(paused(&configs.get("mv-0").await?).then_some(())) })
        .await
        .unwrap();
    env.stop_simulator();
    env.kill_manager().await;
    let calls_before = cloud.calls(&env);

    // The target: a second management API server (the same CRDs) with its own manager and,
    // later, its own CAPI simulator; the same cloud.
    let target_server = ApiServer::start(Config {
        crd_paths: Env::kit_crd_paths(),
        bookmark_interval: Duration::from_secs(1),
        ..Config::default()
    })
    .await
    .unwrap();
    let target = client_for(target_server.url());
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(target.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();

    let nodes = discover(&env.mgmt, &ns).await.unwrap();
    let taken = move_set(&nodes);
    let left: Vec<String> = nodes.iter().filter(|(u, _)| !taken.contains(*u)).map(|(_, n)| n.id()).collect();
    assert!(left.is_empty(), "clusterctl move would leave these behind: {left:?}");
    let order = move_sequence(&nodes, &taken);
    eprintln!("move: {} objects: {:?}", order.len(), order.iter().map(|u| nodes[u].id()).collect::<Vec<_>>());
    let mut new_uids: HashMap<String, String> = HashMap::new();
    for uid in &order {
        let n = &nodes[uid];
        let api: Api<DynamicObject> = Api::namespaced_with(target.clone(), &ns, &n.ar);
        let created = api
            .create(&PostParams::default(), &serde_json::from_value(target_object(n, &new_uids)).unwrap())
            .await
            .unwrap_or_else(|e| panic!("creating {} in the target: {e}", n.id()));
        new_uids.insert(uid.clone(), created.uid().unwrap());
    }
    // Delete the originals, dependents first, without finalizers (nothing reaches the cloud).
    for uid in order.iter().rev() {
        let n = &nodes[uid];
        let api: Api<DynamicObject> = Api::namespaced_with(env.mgmt.clone(), &ns, &n.ar);
        let patch = json!({"metadata": {"annotations": {DELETE_FOR_MOVE: ""}, "finalizers": null}});
        match api.patch(&n.obj.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => panic!("preparing {} for deletion: {e}", n.id()),
        }
        match api.delete(&n.obj.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("deleting {}: {e}", n.id()),
        }
    }

    // capwin on the target first; CAPI (the simulator) only later, so capwin meets the moved
    // Machine as it is until CAPI's Machine controller has found the Node again: no status, no
    // nodeRef.
    let dir = std::env::temp_dir().join(format!("capwin-e2e-move-target-{}-{}", kind, std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("mgmt.kubeconfig");
    std::fs::write(&kubeconfig, capwin_testkit::capi::workload_kubeconfig("management", target_server.url())).unwrap();
    let log_path = dir.join("manager.log");
    let mut manager = env.spawn_manager_against(&kubeconfig, &log_path).unwrap();
    let tapi = |g: &str, k: &str| {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(g, "v1alpha1", k),
            &format!("{}s", k.to_lowercase()),
        );
        Api::<DynamicObject>::namespaced_with(target.clone(), &ns, &ar)
    };
    let t_machines = tapi(I, kind);
    let t_configs = tapi("bootstrap.cluster.x-k8s.io", "WindowsKubeadmConfig");
    let t_clusters: Api<DynamicObject> =
        Api::namespaced_with(target.clone(), &ns, &capwin_testkit::capi::capi("Cluster"));
    // Paused as moved: capwin says so and does nothing else.
    env.wait("the moved config to report Paused", T, || async { Ok(t_configs.get("mv-0").await.ok().filter(paused)) })
        .await
        .unwrap();
    t_clusters.patch("mv", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": false}}))).await.unwrap();

    let result = async {
        let m = env
            .wait("the moved machine Ready (running)", T, || async {
                let m = t_machines.get("mv-0").await?;
                Ok((ready(&m) == Some(("True".into(), cloud.running().into()))).then_some(m))
            })
            .await?;
        let c = env
            .wait("the moved config Ready (Joined)", T, || async {
                let c = t_configs.get("mv-0").await?;
                Ok((ready(&c) == Some(("True".into(), "Joined".into()))).then_some(c))
            })
            .await?;
        let t_machine_api: Api<DynamicObject> =
            Api::namespaced_with(target.clone(), &ns, &capwin_testkit::capi::capi("Machine"));
        let before_capi = t_machine_api.get("mv-0").await?;
        anyhow::ensure!(before_capi.data["status"]["nodeRef"].is_null(), "CAPI has not run on the target yet");
        anyhow::ensure!(token_secrets(&workload).await == tokens_before, "a join token minted before CAPI caught up");
        // Now CAPI on the target: it finds the Node again; the config stays Joined.
        let sim = CapiSim::new(
            target.clone(),
            workload.clone(),
            SimConfig { namespace: ns.clone(), workload_url, join_nodes: false },
        );
        let sim_task = tokio::spawn(async move {
            loop {
                if let Err(e) = sim.step().await {
                    eprintln!("target simulator: {e:#}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        env.wait("the moved Machine's nodeRef", T, || async {
            let mm = t_machine_api.get("mv-0").await?;
            Ok(mm.data["status"]["nodeRef"]["name"].as_str().map(|_| ()))
        })
        .await?;
        // Let both controllers settle past a few more passes before counting.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let c2 = t_configs.get("mv-0").await?;
        anyhow::ensure!(ready(&c2) == Some(("True".into(), "Joined".into())), "config left Joined: {:?}", ready(&c2));
        anyhow::Ok((m, c, sim_task))
    }
    .await;
    let (m, c, sim_task) = match result {
        Ok(v) => v,
        Err(e) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- target manager log ----\n{}", lines[lines.len().saturating_sub(60)..].join("\n"));
            for (what, api) in [(kind, &t_machines), ("WindowsKubeadmConfig", &t_configs)] {
                if let Ok(o) = api.get("mv-0").await {
                    eprintln!("---- target {what} status: {}", o.data["status"]);
                }
            }
            panic!("{e:#}");
        }
    };
    // The same instance / VM.
    assert_eq!(m.data["spec"], source_machine.data["spec"], "the machine's spec (instance, providerID) is kept");
    if cloud == Cloud::Azure {
        assert_eq!(
            m.annotations().get("capwin.cluster.x-k8s.io/vm-id"),
            source_machine.annotations().get("capwin.cluster.x-k8s.io/vm-id")
        );
    }
    assert_eq!(m.data["spec"]["providerID"], provider_id.as_str());
    assert_eq!(m.data["status"]["initialization"]["provisioned"], true);
    assert_eq!(c.data["status"]["dataSecretName"], "mv-0");
    let moved: Api<Secret> = Api::namespaced(target.clone(), &ns);
    let moved_data = moved.get("mv-0").await.unwrap();
    assert_eq!(moved_data.data, data.data, "the data Secret is not rewritten");
    assert_eq!(moved_data.annotations(), data.annotations());
    assert_eq!(token_secrets(&workload).await, tokens_before, "no join token minted (or deleted) by the move");
    let during = minus(&cloud.calls(&env), &calls_before);
    eprintln!("move: {kind}: cloud calls after the source stopped: {during:?}; {:?} in all", started.elapsed());
    assert!(cloud.mutating(&during).is_empty(), "created or deleted during the move: {during:?}");
    // Nothing of the cluster is left in the source.
    let left = discover(&env.mgmt, &ns).await.unwrap();
    assert!(left.is_empty(), "left in the source: {:?}", left.values().map(Node::id).collect::<Vec<_>>());

    let _ = manager.kill().await;
    sim_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
