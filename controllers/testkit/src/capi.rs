//! A CAPI-core simulator: plays, plainly, the parts of Cluster API core that capwin's providers
//! rely on, against a management API server (normally the in-memory one) and a workload API
//! server (a second one).
//!
//! What it does, each [`CapiSim::step`]:
//! - **Cluster**: once `spec.controlPlaneEndpoint` is set, marks the infrastructure provisioned
//!   and the control plane initialized (`status.initialization.*` and the
//!   `InfrastructureReady`/`ControlPlaneInitialized` conditions), and writes `<cluster>-ca`
//!   (`tls.crt`, `tls.key`, a real self-signed CA) and `<cluster>-kubeconfig` (`value`: a
//!   kubeconfig for the workload API server) with the cluster-name label and an owner reference
//!   to the Cluster (unless the Cluster carries [`SKIP_SECRETS_ANNOTATION`]). Paused clusters
//!   are left alone.
//! - **MachineDeployment**: keeps `spec.replicas` Machines (name `<md>-<n>`), each with a
//!   bootstrap config and an infrastructure machine cloned from the templates the deployment
//!   references (`spec.template.metadata` labels/annotations included), labelled with the
//!   cluster name and controller-owned by the Machine. Scaling down deletes the newest Machines.
//! - **Machine**: copies the bootstrap config's `status.dataSecretName` to
//!   `spec.bootstrap.dataSecretName` once `status.initialization.dataSecretCreated` is true;
//!   copies the infrastructure machine's `spec.providerID`, `status.addresses` and
//!   `status.failureDomain` once `status.initialization.provisioned` is true; mirrors their
//!   `Ready` conditions as `BootstrapConfigReady`/`InfrastructureReady`; sets `status.nodeRef`
//!   once a Node with the Machine's providerID exists in the workload cluster (with
//!   [`SimConfig::join_nodes`] on, it creates that Node itself: the VM "boots and joins").
//!
//! Simplifications (real CAPI differs): no MachineSets (Machines belong to the deployment
//! directly), no rollouts, no MachineHealthChecks, no drain, the Machine is the clone's owner
//! from the start, no webhooks or defaulting, the kubeconfig talks plain HTTP without
//! credentials, and conditions carry only type, status, reason and a timestamp.

use std::collections::BTreeMap;

use anyhow::Context;
use base64::Engine;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// The CAPI core version the simulator reads and writes.
pub const CAPI_VERSION: &str = "v1beta2";
/// Label CAPI puts on everything that belongs to a cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Annotation on a Cluster that keeps the simulator from writing its `-ca`/`-kubeconfig` Secrets.
pub const SKIP_SECRETS_ANNOTATION: &str = "testkit.capwin.io/skip-cluster-secrets";
/// Label linking Machines to their MachineDeployment.
pub const DEPLOYMENT_NAME_LABEL: &str = "cluster.x-k8s.io/deployment-name";

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Namespace to reconcile.
    pub namespace: String,
    /// URL of the workload cluster's API server, written into `<cluster>-kubeconfig`.
    pub workload_url: String,
    /// Create a Node for each provisioned machine (the VM "boots and joins").
    pub join_nodes: bool,
}

/// The simulator.
pub struct CapiSim {
    mgmt: Client,
    workload: Client,
    cfg: SimConfig,
    /// Discovery results by (group, kind): one discovery per kind, not one per reference.
    resolved: std::sync::Mutex<BTreeMap<(String, String), ApiResource>>,
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A CAPI core kind's resource.
pub fn capi(kind: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_lowercase());
    resource("cluster.x-k8s.io", CAPI_VERSION, kind, &plural)
}

/// The resource behind a v1beta2 reference (`apiGroup`, `kind`): capwin's and CAPI's own kinds
/// are served at the version their CRD stores, looked up by discovery.
async fn resolve(client: &Client, api_group: &str, kind: &str) -> anyhow::Result<ApiResource> {
    let discovery = kube::discovery::Discovery::new(client.clone()).filter(&[api_group]).run().await?;
    for group in discovery.groups() {
        for (ar, _) in group.resources_by_stability() {
            if ar.kind == kind {
                return Ok(ar);
            }
        }
    }
    anyhow::bail!("no resource for {kind}.{api_group}")
}

fn now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    crate::apiserver::format_unix(secs)
}

fn condition(type_: &str, status: bool, reason: &str) -> Value {
    json!({"type": type_, "status": if status { "True" } else { "False" }, "reason": reason, "message": "", "lastTransitionTime": now()})
}

fn controller_ref(o: &DynamicObject, ar: &ApiResource) -> Value {
    json!({"apiVersion": ar.api_version, "kind": ar.kind, "name": o.name_any(), "uid": o.uid().unwrap_or_default(), "controller": true, "blockOwnerDeletion": true})
}

impl CapiSim {
    pub fn new(mgmt: Client, workload: Client, cfg: SimConfig) -> Self {
        Self { mgmt, workload, cfg, resolved: std::sync::Mutex::default() }
    }

    /// The resource behind a reference, through the discovery cache.
    async fn resolve(&self, api_group: &str, kind: &str) -> anyhow::Result<ApiResource> {
        let key = (api_group.to_string(), kind.to_string());
        if let Some(ar) = self.resolved.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(ar.clone());
        }
        let ar = resolve(&self.mgmt, api_group, kind).await?;
        self.resolved.lock().unwrap_or_else(|p| p.into_inner()).insert(key, ar.clone());
        Ok(ar)
    }

    fn api(&self, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.mgmt.clone(), &self.cfg.namespace, ar)
    }

    /// One pass over Clusters, MachineDeployments and Machines.
    pub async fn step(&self) -> anyhow::Result<()> {
        self.clusters().await.context("clusters")?;
        self.deployments().await.context("machine deployments")?;
        self.machines().await.context("machines")?;
        Ok(())
    }

    async fn clusters(&self) -> anyhow::Result<()> {
        let ar = capi("Cluster");
        let api = self.api(&ar);
        for c in api.list(&ListParams::default()).await? {
            let name = c.name_any();
            if c.data["spec"]["paused"] == true
                || c.data["spec"]["controlPlaneEndpoint"]["host"].as_str().unwrap_or_default().is_empty()
            {
                continue;
            }
            // Tests of a provider's handling of missing Secrets opt out per Cluster.
            if c.annotations().get(SKIP_SECRETS_ANNOTATION).map(String::as_str) != Some("true") {
                self.cluster_secrets(&c, &ar).await?;
            }
            if c.data["status"]["initialization"]["controlPlaneInitialized"] != true {
                let status = json!({"status": {
                    "initialization": {"infrastructureProvisioned": true, "controlPlaneInitialized": true},
                    "conditions": [condition("InfrastructureReady", true, "Ready"), condition("ControlPlaneInitialized", true, "Initialized")],
                }});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
            }
        }
        Ok(())
    }

    async fn cluster_secrets(&self, c: &DynamicObject, ar: &ApiResource) -> anyhow::Result<()> {
        let name = c.name_any();
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.mgmt.clone(), &self.cfg.namespace);
        let owner = controller_ref(c, ar);
        if secrets.get_opt(&format!("{name}-ca")).await?.is_none() {
            let (crt, key) = self_signed_ca(&name)?;
            let s = json!({"apiVersion": "v1", "kind": "Secret", "type": "cluster.x-k8s.io/secret",
                "metadata": {"name": format!("{name}-ca"), "labels": {CLUSTER_NAME_LABEL: name}, "ownerReferences": [owner]},
                "data": {"tls.crt": b64(crt.as_bytes()), "tls.key": b64(key.as_bytes())}});
            secrets.create(&PostParams::default(), &serde_json::from_value(s)?).await?;
        }
        if secrets.get_opt(&format!("{name}-kubeconfig")).await?.is_none() {
            let kubeconfig = workload_kubeconfig(&name, &self.cfg.workload_url);
            let s = json!({"apiVersion": "v1", "kind": "Secret", "type": "cluster.x-k8s.io/secret",
                "metadata": {"name": format!("{name}-kubeconfig"), "labels": {CLUSTER_NAME_LABEL: name}, "ownerReferences": [owner]},
                "data": {"value": b64(kubeconfig.as_bytes())}});
            secrets.create(&PostParams::default(), &serde_json::from_value(s)?).await?;
        }
        Ok(())
    }

    async fn deployments(&self) -> anyhow::Result<()> {
        let md_ar = capi("MachineDeployment");
        let m_ar = capi("Machine");
        let machines = self.api(&m_ar);
        for md in self.api(&md_ar).list(&ListParams::default()).await? {
            let md_name = md.name_any();
            let cluster = md.data["spec"]["clusterName"].as_str().unwrap_or_default().to_string();
            let want = md.data["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
            let mine =
                machines.list(&ListParams::default().labels(&format!("{DEPLOYMENT_NAME_LABEL}={md_name}"))).await?;
            let mut have: Vec<DynamicObject> = mine.items;
            have.sort_by_key(|m| m.name_any());
            for idx in 0.. {
                if have.len() >= want {
                    break;
                }
                let name = format!("{md_name}-{idx}");
                if have.iter().any(|m| m.name_any() == name) {
                    continue;
                }
                let m = self.stamp_machine(&md, &md_ar, &name, &cluster).await?;
                have.push(m);
            }
            while have.len() > want {
                let newest = have.pop().expect("more than wanted");
                machines.delete(&newest.name_any(), &DeleteParams::background()).await?;
            }
        }
        Ok(())
    }

    async fn stamp_machine(
        &self,
        md: &DynamicObject,
        md_ar: &ApiResource,
        name: &str,
        cluster: &str,
    ) -> anyhow::Result<DynamicObject> {
        let tmpl = &md.data["spec"]["template"];
        let mut labels: BTreeMap<String, String> =
            serde_json::from_value(tmpl["metadata"]["labels"].clone()).unwrap_or_default();
        labels.insert(CLUSTER_NAME_LABEL.into(), cluster.into());
        labels.insert(DEPLOYMENT_NAME_LABEL.into(), md.name_any());
        let spec = &tmpl["spec"];
        let m_ar = capi("Machine");
        let machine = json!({
            "apiVersion": m_ar.api_version, "kind": "Machine",
            "metadata": {"name": name, "labels": labels, "ownerReferences": [controller_ref(md, md_ar)]},
            "spec": {
                "clusterName": cluster,
                "version": spec["version"],
                "failureDomain": spec["failureDomain"],
                "bootstrap": {"configRef": {"apiGroup": spec["bootstrap"]["configRef"]["apiGroup"], "kind": clone_kind(&spec["bootstrap"]["configRef"]["kind"]), "name": name}},
                "infrastructureRef": {"apiGroup": spec["infrastructureRef"]["apiGroup"], "kind": clone_kind(&spec["infrastructureRef"]["kind"]), "name": name},
            }
        });
        let mut machine = machine;
        if machine["spec"]["failureDomain"].is_null() {
            machine["spec"].as_object_mut().expect("object").remove("failureDomain");
        }
        let created = self.api(&m_ar).create(&PostParams::default(), &serde_json::from_value(machine)?).await?;
        for r in [&spec["bootstrap"]["configRef"], &spec["infrastructureRef"]] {
            self.clone_template(r, &created, &m_ar, name, cluster).await?;
        }
        Ok(created)
    }

    async fn clone_template(
        &self,
        r: &Value,
        machine: &DynamicObject,
        m_ar: &ApiResource,
        name: &str,
        cluster: &str,
    ) -> anyhow::Result<()> {
        let group = r["apiGroup"].as_str().unwrap_or_default();
        let tkind = r["kind"].as_str().unwrap_or_default();
        let tar = self.resolve(group, tkind).await?;
        let tmpl = self.api(&tar).get(r["name"].as_str().unwrap_or_default()).await?;
        let kind = tkind.strip_suffix("Template").unwrap_or(tkind);
        let ar = self.resolve(group, kind).await?;
        let mut labels: BTreeMap<String, String> =
            serde_json::from_value(tmpl.data["spec"]["template"]["metadata"]["labels"].clone()).unwrap_or_default();
        labels.insert(CLUSTER_NAME_LABEL.into(), cluster.into());
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(tmpl.data["spec"]["template"]["metadata"]["annotations"].clone())
                .unwrap_or_default();
        let obj = json!({
            "apiVersion": ar.api_version, "kind": kind,
            "metadata": {"name": name, "labels": labels, "annotations": annotations, "ownerReferences": [controller_ref(machine, m_ar)]},
            "spec": tmpl.data["spec"]["template"]["spec"],
        });
        self.api(&ar).create(&PostParams::default(), &serde_json::from_value(obj)?).await?;
        Ok(())
    }

    /// Every object of the kind a reference names, listed once per step and looked up by name
    /// (a step over N Machines makes a few lists, not N GETs).
    async fn referenced(
        &self,
        listed: &mut BTreeMap<(String, String), BTreeMap<String, DynamicObject>>,
        r: &Value,
    ) -> anyhow::Result<Option<DynamicObject>> {
        let (group, kind) = (r["apiGroup"].as_str().unwrap_or_default(), r["kind"].as_str().unwrap_or_default());
        let key = (group.to_string(), kind.to_string());
        if !listed.contains_key(&key) {
            let Ok(ar) = self.resolve(group, kind).await else { return Ok(None) };
            let items = self.api(&ar).list(&ListParams::default()).await?.items;
            listed.insert(key.clone(), items.into_iter().map(|o| (o.name_any(), o)).collect());
        }
        Ok(listed[&key].get(r["name"].as_str().unwrap_or_default()).cloned())
    }

    async fn machines(&self) -> anyhow::Result<()> {
        let m_ar = capi("Machine");
        let machines = self.api(&m_ar);
        let mut listed = BTreeMap::new();
        let mut nodes = None;
        for m in machines.list(&ListParams::default()).await? {
            let name = m.name_any();
            let spec = &m.data["spec"];
            let mut spec_patch = json!({});
            let mut status = json!({"initialization": {}, "conditions": []});
            if let Some(cfg) = self.referenced(&mut listed, &spec["bootstrap"]["configRef"]).await? {
                let created = cfg.data["status"]["initialization"]["dataSecretCreated"] == true;
                if created && spec["bootstrap"]["dataSecretName"].is_null() {
                    spec_patch["bootstrap"] = json!({"dataSecretName": cfg.data["status"]["dataSecretName"]});
                }
                status["initialization"]["bootstrapDataSecretCreated"] = json!(created);
                status["conditions"].as_array_mut().expect("array").push(mirror(&cfg, "BootstrapConfigReady", &m));
            }
            let mut provider_id = spec["providerID"].as_str().map(String::from);
            if let Some(inf) = self.referenced(&mut listed, &spec["infrastructureRef"]).await? {
                let provisioned = inf.data["status"]["initialization"]["provisioned"] == true;
                let pid = inf.data["spec"]["providerID"].as_str().filter(|p| !p.is_empty());
                if provisioned && pid.is_some() {
                    if provider_id.is_none() {
                        spec_patch["providerID"] = json!(pid);
                        provider_id = pid.map(String::from);
                    }
                    status["addresses"] = inf.data["status"]["addresses"].clone();
                    if inf.data["status"]["failureDomain"].is_string() {
                        status["failureDomain"] = inf.data["status"]["failureDomain"].clone();
                    }
                }
                status["initialization"]["infrastructureProvisioned"] = json!(provisioned && pid.is_some());
                status["conditions"].as_array_mut().expect("array").push(mirror(&inf, "InfrastructureReady", &m));
            }
            // The kubelet registers the host's name: the infra machine's Hostname (Azure: the
            // computer name) or InternalDNS (AWS: ip-….ec2.internal) address, else the Machine's.
            let addresses = status["addresses"].as_array().cloned().unwrap_or_default();
            let host = ["Hostname", "InternalDNS"]
                .iter()
                .find_map(|t| addresses.iter().find(|a| a["type"] == *t).and_then(|a| a["address"].as_str()))
                .map(str::to_ascii_lowercase)
                .unwrap_or_else(|| name.clone());
            if let Some(pid) = &provider_id {
                if nodes.is_none() {
                    nodes = Some(self.nodes_by_provider_id().await?);
                }
                let known = nodes.as_mut().expect("listed");
                if let Some(node_name) = self.node_for(known, &host, pid).await? {
                    status["nodeRef"] = json!({"name": node_name});
                }
            }
            if spec_patch != json!({}) {
                machines.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": spec_patch}))).await?;
            }
            if status["addresses"].is_null() {
                status.as_object_mut().expect("object").remove("addresses");
            }
            // CAPI's schema wants at least one property in `initialization` (a Machine whose
            // config and infrastructure do not exist yet has none).
            if status["initialization"].as_object().is_some_and(|o| o.is_empty()) {
                status.as_object_mut().expect("object").remove("initialization");
            }
            // Like CAPI, no write when nothing changed.
            let current = &m.data["status"];
            let unchanged = status.as_object().expect("object").iter().all(|(k, v)| &current[k] == v);
            if !unchanged {
                machines.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
            }
        }
        Ok(())
    }

    /// The workload cluster's Nodes by providerID, listed once per step.
    async fn nodes_by_provider_id(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.workload.clone());
        Ok(nodes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| Some((n.spec.as_ref()?.provider_id.clone()?, n.name_any())))
            .collect())
    }

    /// The Node with this providerID in the workload cluster; with [`SimConfig::join_nodes`] the
    /// VM "boots and joins" and the Node is created when missing.
    async fn node_for(
        &self,
        known: &mut BTreeMap<String, String>,
        machine: &str,
        provider_id: &str,
    ) -> anyhow::Result<Option<String>> {
        if let Some(n) = known.get(provider_id) {
            return Ok(Some(n.clone()));
        }
        if !self.cfg.join_nodes {
            return Ok(None);
        }
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.workload.clone());
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": machine, "labels": {"kubernetes.io/os": "windows", "kubernetes.io/arch": "amd64"}},
            "spec": {"providerID": provider_id}});
        nodes.create(&PostParams::default(), &serde_json::from_value(node)?).await?;
        known.insert(provider_id.to_string(), machine.to_string());
        Ok(Some(machine.to_string()))
    }
}

/// The kind a template clones into (`FooTemplate` → `Foo`).
fn clone_kind(template_kind: &Value) -> Value {
    let k = template_kind.as_str().unwrap_or_default();
    json!(k.strip_suffix("Template").unwrap_or(k))
}

/// A condition of `o` copied onto the Machine `m` as `as_type`. Like CAPI, the
/// `lastTransitionTime` moves only when the status does, so an unchanged Machine is not
/// rewritten (and its watchers are not woken) on every step.
fn mirror(o: &DynamicObject, as_type: &str, m: &DynamicObject) -> Value {
    let ready = o.data["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    let mut c = match ready {
        Some(c) => {
            json!({"type": as_type, "status": c["status"], "reason": c["reason"], "message": c["message"].as_str().unwrap_or_default()})
        }
        None => json!({"type": as_type, "status": "Unknown", "reason": "NotReported", "message": ""}),
    };
    let previous = m.data["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|p| p["type"] == as_type));
    c["lastTransitionTime"] = match previous {
        Some(p) if p["status"] == c["status"] && p["lastTransitionTime"].is_string() => p["lastTransitionTime"].clone(),
        _ => json!(now()),
    };
    c
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A real self-signed CA certificate and key (PEM), as `<cluster>-ca` holds them.
pub fn self_signed_ca(cluster: &str) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{cluster}-ca"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A kubeconfig for the workload API server (plain HTTP, no credentials: the in-memory server
/// has no authentication).
pub fn workload_kubeconfig(cluster: &str, url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {url}\nusers:\n- name: {cluster}-admin\n  user: {{}}\ncontexts:\n- name: {cluster}-admin@{cluster}\n  context:\n    cluster: {cluster}\n    user: {cluster}-admin\ncurrent-context: {cluster}-admin@{cluster}\n"
    )
}
