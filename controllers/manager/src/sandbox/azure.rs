//! Azure in the sandbox: the kit's fake ARM (`test/kit/azure/arm.sh`, HTTPS with its own CA, an
//! Entra ID token endpoint beside it) and capwin's real `AzureWindowsMachine` controller against
//! it, built as `capwin manager --controllers azure` builds it.
//!
//! Real: every ARM call of the controller (image and subnet look-ups, NIC and VM creates, the
//! long-running operations, the VM reads, boot diagnostics) and its token requests go to the fake
//! over TLS, and the VM names, provisioning and power states the sandbox prints come from the fake.
//! Simulated (and labelled so): CAPZ's `AzureCluster` controller `(simulated CAPZ)`, which points
//! the `AzureCluster` at the network the fake is seeded with (the fake cannot create networks)
//! and reports it ready as CAPZ v1beta1 does; the projected service-account token the template's
//! `WorkloadIdentity` identity needs `(simulated workload identity)`; and CAPI core copying the
//! endpoint into the `Cluster`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use capwin_azure::arm::{self, Counting, Endpoint, HttpArm};
use capwin_azure::credentials::CredentialSource;
use capwin_azure::reconcile::VM_ID_ANNOTATION;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::sandbox::InstanceView;

/// The infrastructure machine kind this cloud serves.
pub const MACHINE_KIND: &str = "AzureWindowsMachine";
/// The fake ARM kit script, in the checkout the binary was built from.
const ARM_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test/kit/azure/arm.sh");

fn arm_sh() -> PathBuf {
    Path::new(ARM_SH).canonicalize().unwrap_or_else(|_| ARM_SH.into())
}

/// What the fake ARM is seeded with (`test/kit/azure/seed.json`; a unit test keeps the two equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub subscription: &'static str,
    pub resource_group: &'static str,
    pub location: &'static str,
    pub vnet: &'static str,
    pub control_plane_subnet: (&'static str, &'static str),
    pub node_subnet: (&'static str, &'static str),
}

pub const SEED: Seed = Seed {
    subscription: "11111111-2222-3333-4444-555555555555",
    resource_group: "capwin-e2e",
    location: "westeurope",
    vnet: "capwin-e2e-vnet",
    control_plane_subnet: ("capwin-e2e-controlplane-subnet", "10.0.0.0/16"),
    node_subnet: ("capwin-e2e-node-subnet", "10.1.0.0/16"),
};

/// The sandbox's Entra ID tenant and the identity's client ID (the fake accepts any).
pub const TENANT: &str = "22222222-3333-4444-5555-666666666666";
pub const IDENTITY_CLIENT_ID: &str = "33333333-4444-5555-6666-777777777777";

/// CAPZ's `AzureCluster` (v1beta1, CAPZ v1.26).
pub fn azure_cluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("infrastructure.cluster.x-k8s.io", "v1beta1", "AzureCluster"),
        "azureclusters",
    )
}

fn azure_machine_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("infrastructure.cluster.x-k8s.io", capwin_api::API_VERSION, MACHINE_KIND),
        "azurewindowsmachines",
    )
}

/// The endpoint CAPZ would publish: the API server load balancer's public DNS name, port 6443.
pub fn control_plane_endpoint(cluster: &str, location: &str) -> (String, u16) {
    (format!("{cluster}-apiserver.{location}.cloudapp.azure.com"), 6443)
}

/// What the sandbox writes where CAPZ would: a merge patch of the spec that points the
/// `AzureCluster` at the seed (subscription, resource group, location, vnet, and the subnets by
/// role, every other field of each subnet kept) with the endpoint; and the status CAPZ v1beta1
/// reports (`ready`, the region's zones as failure domains, `Ready`). CAPZ v1beta1 has no
/// `status.initialization`; the schema would prune it.
pub fn capz_patches(azure_cluster: &Value, seed: &Seed, now: &str) -> (Value, Value) {
    let name = azure_cluster["metadata"]["name"].as_str().unwrap_or_default();
    let subnets: Vec<Value> = azure_cluster["spec"]["networkSpec"]["subnets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let mut s = s.clone();
            let seeded = match s["role"].as_str() {
                Some("node") => Some(seed.node_subnet),
                Some("control-plane") => Some(seed.control_plane_subnet),
                _ => None,
            };
            if let (Some((subnet, cidr)), Some(o)) = (seeded, s.as_object_mut()) {
                o.insert("name".into(), json!(subnet));
                o.insert("cidrBlocks".into(), json!([cidr]));
            }
            s
        })
        .collect();
    let (host, port) = control_plane_endpoint(name, seed.location);
    let spec = json!({"spec": {
        "subscriptionID": seed.subscription,
        "resourceGroup": seed.resource_group,
        "location": seed.location,
        "networkSpec": {"vnet": {"name": seed.vnet, "resourceGroup": seed.resource_group}, "subnets": subnets},
        "controlPlaneEndpoint": {"host": host, "port": port},
    }});
    let zones: serde_json::Map<String, Value> =
        ["1", "2", "3"].iter().map(|z| (z.to_string(), json!({"controlPlane": true}))).collect();
    let status = json!({"status": {
        "ready": true,
        "failureDomains": zones,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
    }});
    (spec, status)
}

/// One VM as the fake renders it in `/_capwin/state`: `(provisioningState, private IP)`.
pub fn vm_in_state(state: &Value, vm_id: &str) -> Option<(String, Option<String>)> {
    let resources = state["resources"].as_array()?;
    // ARM IDs compare case-insensitively (the fake upper-cases some on purpose).
    let by_id = |id: &str| resources.iter().find(|r| r["id"].as_str().is_some_and(|i| i.eq_ignore_ascii_case(id)));
    let vm = by_id(vm_id)?;
    let p = &vm["properties"];
    let nic_id = p["networkProfile"]["networkInterfaces"][0]["id"].as_str().unwrap_or_default();
    let ip = by_id(nic_id).and_then(|nic| {
        nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"].as_str().map(String::from)
    });
    Some((p["provisioningState"].as_str().unwrap_or("-").to_string(), ip))
}

/// The `PowerState/…` of a VM read with `$expand=instanceView`, without the prefix.
pub fn power_state(vm: &Value) -> Option<String> {
    vm["properties"]["instanceView"]["statuses"]
        .as_array()?
        .iter()
        .filter_map(|s| s["code"].as_str())
        .find_map(|c| c.strip_prefix("PowerState/"))
        .map(String::from)
}

/// How many resources of each type the fake holds, `Microsoft.Compute/virtualMachines` → n.
pub fn resource_counts(state: &Value) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for r in state["resources"].as_array().into_iter().flatten() {
        *counts.entry(r["type"].as_str().unwrap_or("-").to_string()).or_default() += 1;
    }
    counts
}

/// The line on the requests the fake answered (`/_capwin/counts`): ARM requests, `own` of them
/// the sandbox's reads and the rest the controller's, those that are not reads by name, and the
/// Entra ID token requests (the sandbox's and the controller's credentials each ask for one).
pub fn arm_requests(counts: &Value, own: u64) -> String {
    let counts = counts["counts"].as_object().cloned().unwrap_or_default();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let is_token = |k: &str| k.contains("oauth2/");
    let tokens: u64 = counts.iter().filter(|(k, _)| is_token(k)).map(|(_, v)| n(v)).sum();
    let total: u64 = counts.iter().filter(|(k, _)| !is_token(k)).map(|(_, v)| n(v)).sum();
    let others: Vec<String> = counts
        .iter()
        .filter(|(k, _)| !k.starts_with("GET ") && !is_token(k))
        .map(|(k, v)| format!("{k} {}", n(v)))
        .collect();
    format!(
        "fake ARM answered {total} ARM requests, {} from the Azure controller and {own} the sandbox's own VM reads \
         (besides GETs: {}), and {tokens} Entra ID token requests",
        total.saturating_sub(own),
        if others.is_empty() { "none".to_string() } else { others.join(", ") }
    )
}

/// The fake ARM, started through the kit script with its state under the sandbox's output
/// folder, and stopped (that recorded PID only) when this is dropped: on success, error or
/// Ctrl-C alike.
pub struct FakeArm {
    state: PathBuf,
    pub url: String,
    pub ca_pem: Vec<u8>,
}

impl FakeArm {
    pub async fn start(state: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            arm_sh().is_file(),
            "the sandbox runs from a capwin checkout: {} is missing",
            arm_sh().display()
        );
        std::fs::create_dir_all(state)?;
        // The guard exists before the start, so a start interrupted half-way is still stopped.
        let mut fake = Self { state: state.to_path_buf(), url: String::new(), ca_pem: Vec::new() };
        let out = fake.script(&["start"]).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
            anyhow::bail!(
                "could not start the fake ARM, the local Azure endpoint of the sandbox ({} start):\n  {}\n\
                 It needs python3 (3.11 or newer, standard library only) and the openssl CLI. See \
                 test/kit/azure/README.md. The server log is {}/arm.log.",
                arm_sh().display(),
                tail.join("\n  "),
                state.display()
            );
        }
        fake.url = String::from_utf8(out.stdout)?.lines().last().unwrap_or_default().trim().to_string();
        anyhow::ensure!(fake.url.starts_with("https://"), "arm.sh start printed no URL");
        // A server left by an interrupted earlier run in this folder is reused: start clean.
        let reset = fake.script(&["reset"]).await?;
        anyhow::ensure!(reset.status.success(), "arm.sh reset: {}", String::from_utf8_lossy(&reset.stderr));
        let ca = fake.script(&["ca"]).await?;
        anyhow::ensure!(ca.status.success(), "arm.sh ca: {}", String::from_utf8_lossy(&ca.stderr));
        let ca_path = String::from_utf8(ca.stdout)?.trim().to_string();
        fake.ca_pem = std::fs::read(&ca_path).with_context(|| format!("reading the fake ARM's CA {ca_path}"))?;
        Ok(fake)
    }

    async fn script(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        tokio::process::Command::new(arm_sh())
            .args(args)
            .env("CAPWIN_KIT_STATE", &self.state)
            .output()
            .await
            .with_context(|| format!("running {}", arm_sh().display()))
    }
}

impl Drop for FakeArm {
    fn drop(&mut self) {
        let _ = std::process::Command::new(arm_sh()).arg("stop").env("CAPWIN_KIT_STATE", &self.state).output();
    }
}

/// The Azure cloud of one sandbox run.
pub struct AzureCloud {
    pub arm: FakeArm,
    endpoint: Endpoint,
    /// The projected service-account token file the `WorkloadIdentity` identity reads.
    token_file: PathBuf,
    /// The sandbox's own ARM client (its own service principal), to show what ARM says; counted,
    /// so the summary can tell its reads from the controller's calls.
    observer: Counting<HttpArm>,
    /// `AzureCluster`s already reported ready.
    ready: std::collections::BTreeSet<String>,
}

/// The manager's own credential in the sandbox: a service principal of the fake Entra ID (its
/// token endpoint accepts any secret). Machines of the templates use their identity instead.
fn manager_credential() -> CredentialSource {
    CredentialSource::ClientSecret {
        tenant: TENANT.into(),
        client_id: "capwin-sandbox".into(),
        secret: "sandbox-secret-not-checked-by-the-fake".into(),
    }
}

impl AzureCloud {
    pub async fn start(state: &Path) -> anyhow::Result<Self> {
        let arm = FakeArm::start(state).await?;
        let endpoint = Endpoint {
            arm: arm.url.parse().with_context(|| format!("the fake ARM's URL {}", arm.url))?,
            ca_pem: Some(arm.ca_pem.clone()),
        };
        let http = arm::http_client(Some(&arm.ca_pem)).map_err(anyhow::Error::msg)?;
        let credential = capwin_azure::credentials::build(&manager_credential(), Some(&arm.url), &http)
            .map_err(anyhow::Error::msg)?;
        let observer = Counting::new(HttpArm::new(&endpoint, credential).map_err(anyhow::Error::msg)?);
        Ok(Self { arm, endpoint, token_file: state.join("service-account-token"), observer, ready: Default::default() })
    }

    /// What the manager's Deployment would have: the projected service-account token that
    /// workload identity exchanges at Entra ID (the fake accepts any assertion).
    pub async fn seed_account(&self, _objects: &[Value], say: &dyn Fn(String)) -> anyhow::Result<()> {
        std::fs::write(
            &self.token_file,
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6Y2Fwd2luIn0.sandbox\n",
        )?;
        say(format!("(simulated workload identity) projected service-account token at {}", self.token_file.display()));
        Ok(())
    }

    /// The projected service-account token file (`AZURE_FEDERATED_TOKEN_FILE`).
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// VMs the fake ARM holds.
    pub async fn live_vms(&self) -> anyhow::Result<usize> {
        Ok(resource_counts(&self.control("state").await?)
            .get("Microsoft.Compute/virtualMachines")
            .copied()
            .unwrap_or(0))
    }

    /// The real `AzureWindowsMachine` (and template) controller, in-process, with the settings
    /// `capwin manager --azure-arm-endpoint URL --azure-authority-host URL --azure-ca-bundle CA`
    /// and `AZURE_FEDERATED_TOKEN_FILE` would give it.
    pub async fn start_controller(&self, mgmt: Client, ns: &str) -> tokio::task::JoinHandle<()> {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = capwin_azure::metrics::register(&mut registry);
        let settings = capwin_azure::reconcile::Settings {
            endpoint: self.endpoint.clone(),
            authority: Some(self.arm.url.clone()),
            namespace: Some(ns.to_string()),
            federated_token_file: Some(self.token_file.display().to_string()),
            tenant: Some(TENANT.into()),
        };
        let ctx = capwin_azure::reconcile::Context::new(mgmt, settings, manager_credential(), metrics);
        let queue = capwin_runtime::QueueMetrics::register(&mut registry);
        let settings = capwin_infra::watch::RunSettings::new(Some(ns.to_string()));
        tokio::spawn(capwin_azure::reconcile::run(ctx, queue, settings))
    }

    /// (simulated CAPZ) Points each new `AzureCluster` at the seeded network and reports it
    /// ready; (simulated CAPI core) copies the endpoint into the `Cluster`s that use it.
    pub async fn step(&mut self, mgmt: &Client, ns: &str, say: &dyn Fn(String)) -> anyhow::Result<()> {
        let api: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), ns, &azure_cluster_resource());
        for ac in api.list(&ListParams::default()).await? {
            let name = ac.name_any();
            if ac.data["status"]["ready"] == true || self.ready.contains(&name) {
                continue;
            }
            let (spec, status) = capz_patches(&serde_json::to_value(&ac)?, &SEED, &capwin_api::common::now_rfc3339());
            api.patch(&name, &PatchParams::default(), &Patch::Merge(spec)).await?;
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
            say(format!(
                "(simulated CAPZ) AzureCluster {name}: resource group {}, vnet {}, node subnet {} in {} (seeded in the fake ARM); ready",
                SEED.resource_group, SEED.vnet, SEED.node_subnet.0, SEED.location
            ));
            self.ready.insert(name);
        }
        crate::sandbox::copy_endpoint(mgmt, ns, "AzureCluster", &azure_cluster_resource(), say).await
    }

    /// The machine's VM as the fake ARM reports it, or what the controller waits for.
    pub async fn describe_machine(&self, mgmt: &Client, ns: &str, name: &str) -> anyhow::Result<InstanceView> {
        let api: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), ns, &azure_machine_resource());
        let Some(m) = api.get_opt(name).await? else {
            return Ok(InstanceView { reason: "NotCreated".into(), ..InstanceView::default() });
        };
        let reason = crate::sandbox::ready_reason(&m);
        let Some(vm_id) = m.annotations().get(VM_ID_ANNOTATION).cloned() else {
            return Ok(InstanceView { reason, ..InstanceView::default() });
        };
        let vm_name = vm_id.rsplit('/').next().unwrap_or_default();
        let state = self.control("state").await?;
        let text = match vm_in_state(&state, &vm_id) {
            None => format!("VM {vm_name} chosen, not in ARM yet"),
            Some((prov, ip)) if prov == "Succeeded" => {
                // Read with the instance view only once the create is done: on the fake a VM GET
                // also advances its create operation, and the sandbox must not hurry the controller.
                let target = format!("{vm_id}?api-version={}&$expand=instanceView", capwin_azure::model::api::COMPUTE);
                let power = match arm::get_path(&self.observer, &target).await {
                    Ok(Some(vm)) => power_state(&vm).unwrap_or_else(|| "unknown".into()),
                    Ok(None) => "gone".into(),
                    Err(e) => format!("not readable: {e}"),
                };
                let at = ip.map(|ip| format!(" at {ip}")).unwrap_or_default();
                format!("VM {vm_name} provisioningState Succeeded, power state {power}{at} (fake ARM)")
            }
            Some((prov, _)) => format!("VM {vm_name} provisioningState {prov} (fake ARM)"),
        };
        Ok(InstanceView { instance: Some(text), reason })
    }

    /// A control API document of the fake (`/_capwin/state`, `/_capwin/counts`: no token, not
    /// ARM calls).
    pub(crate) async fn control(&self, call: &str) -> anyhow::Result<Value> {
        let url = format!("{}/_capwin/{call}", self.arm.url);
        // `blob` is the client's token-less GET; the control API wants no ARM token either.
        let text = arm::Arm::blob(&self.observer, &url)
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
            .with_context(|| format!("{url}: not found"))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// What the fake ARM holds now, and the ARM requests it answered.
    pub async fn summary(&self, say: &dyn Fn(String)) -> anyhow::Result<()> {
        let counts = resource_counts(&self.control("state").await?);
        let n = |t: &str| counts.get(t).copied().unwrap_or(0);
        say(format!(
            "fake ARM holds {} VMs, {} NICs, {} OS disks in resource group {}",
            n("Microsoft.Compute/virtualMachines"),
            n("Microsoft.Network/networkInterfaces"),
            n("Microsoft.Compute/disks"),
            SEED.resource_group
        ));
        // The fake's count, not the controller's own counter: it is what ARM would bill.
        let own: u64 = self.observer.counts().iter().filter(|(k, _)| *k != "GET blob").map(|(_, v)| v).sum();
        say(arm_requests(&self.control("counts").await?, own));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_the_kits() {
        let seed: Value = serde_json::from_str(include_str!("../../../../test/kit/azure/seed.json")).unwrap();
        assert_eq!(seed["subscription"], SEED.subscription);
        assert_eq!(seed["resourceGroups"][0]["name"], SEED.resource_group);
        assert_eq!(seed["resourceGroups"][0]["location"], SEED.location);
        let vnet = &seed["virtualNetworks"][0];
        assert_eq!(vnet["name"], SEED.vnet);
        assert_eq!(vnet["resourceGroup"], SEED.resource_group);
        let subnets = vnet["subnets"].as_array().unwrap();
        for (name, prefix) in [SEED.node_subnet, SEED.control_plane_subnet] {
            assert!(subnets.iter().any(|s| s["name"] == name && s["addressPrefix"] == prefix), "{name}");
        }
        // The image capwin picks for the sandbox's Machines (Windows Server 2025, v1.35.10).
        assert!(seed["images"].as_array().unwrap().iter().any(|i| {
            i["communityGalleryImageId"]
                .as_str()
                .is_some_and(|id| id.ends_with("/Images/capi-win-2025-containerd/Versions/1.35.10"))
        }));
    }

    #[test]
    fn capz_patches_point_the_cluster_at_the_seed_and_keep_the_rest() {
        let ac = json!({"metadata": {"name": "demo"}, "spec": {"location": "x", "networkSpec": {
        "vnet": {"name": "demo-vnet"},
        "subnets": [
            {"name": "control-plane-subnet", "role": "control-plane", "cidrBlocks": ["10.0.0.0/16"]},
            {"name": "node-subnet", "role": "node", "cidrBlocks": ["10.1.0.0/16"], "natGateway": {"name": "gw"}},
        ]}}});
        let (spec, status) = capz_patches(&ac, &SEED, "2026-01-01T00:00:00Z");
        let s = &spec["spec"];
        assert_eq!(s["subscriptionID"], SEED.subscription);
        assert_eq!(s["resourceGroup"], "capwin-e2e");
        assert_eq!(s["location"], "westeurope");
        assert_eq!(s["networkSpec"]["vnet"]["name"], "capwin-e2e-vnet");
        let subnets = s["networkSpec"]["subnets"].as_array().unwrap();
        assert_eq!(subnets[0]["name"], "capwin-e2e-controlplane-subnet");
        assert_eq!(subnets[1]["name"], "capwin-e2e-node-subnet");
        assert_eq!(subnets[1]["role"], "node");
        assert_eq!(subnets[1]["natGateway"]["name"], "gw", "other subnet fields stay");
        assert_eq!(
            s["controlPlaneEndpoint"],
            json!({"host": "demo-apiserver.westeurope.cloudapp.azure.com", "port": 6443})
        );
        // What capwin's controller then reads from it is the seed.
        let placed = capwin_azure::model::placement(&spec, None).unwrap();
        assert_eq!((placed.subnet.as_str(), placed.vnet.as_str()), ("capwin-e2e-node-subnet", "capwin-e2e-vnet"));
        // CAPZ v1beta1 readiness: status.ready, failure domains per zone, a Ready condition.
        assert_eq!(status["status"]["ready"], true);
        assert_eq!(status["status"]["failureDomains"]["2"]["controlPlane"], true);
        assert_eq!(status["status"]["conditions"][0]["type"], "Ready");
        assert!(status["status"].get("initialization").is_none(), "not in CAPZ v1beta1's schema");
    }

    #[test]
    fn vms_are_read_from_the_fakes_state() {
        let vm_id =
            "/subscriptions/s/resourceGroups/capwin-e2e/providers/Microsoft.Compute/virtualMachines/demo-md-win-0";
        let nic_id = "/subscriptions/s/resourceGroups/capwin-e2e/providers/Microsoft.Network/networkInterfaces/n";
        let state = json!({"resources": [
            {"id": nic_id.to_uppercase(), "type": "Microsoft.Network/networkInterfaces",
             "properties": {"ipConfigurations": [{"properties": {"privateIPAddress": "10.1.0.4"}}]}},
            {"id": vm_id, "type": "Microsoft.Compute/virtualMachines", "properties": {"provisioningState": "Creating",
             "networkProfile": {"networkInterfaces": [{"id": nic_id}]}}},
        ]});
        assert_eq!(vm_in_state(&state, &vm_id.to_lowercase()), Some(("Creating".into(), Some("10.1.0.4".into()))));
        assert_eq!(vm_in_state(&state, "/other"), None);
        assert_eq!(resource_counts(&state)["Microsoft.Compute/virtualMachines"], 1);
        let vm = json!({"properties": {"instanceView": {"statuses": [
            {"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}]}}});
        assert_eq!(power_state(&vm).as_deref(), Some("running"));
        assert_eq!(power_state(&json!({})), None);
    }

    #[test]
    fn arm_requests_tell_the_controllers_from_the_sandboxs() {
        let counts = json!({"counts": {"GET Microsoft.Compute/virtualMachines": 7, "PUT Microsoft.Compute/virtualMachines": 2,
            "PUT Microsoft.Network/networkInterfaces": 2, "POST oauth2/token": 2}});
        assert_eq!(
            arm_requests(&counts, 3),
            "fake ARM answered 11 ARM requests, 8 from the Azure controller and 3 the sandbox's own VM reads \
             (besides GETs: PUT Microsoft.Compute/virtualMachines 2, PUT Microsoft.Network/networkInterfaces 2), \
             and 2 Entra ID token requests"
        );
        assert!(arm_requests(&json!({}), 0).contains("(besides GETs: none)"));
    }
}
