//! Azure Windows machines against the kit's fake ARM (over HTTPS, through azure_core's real
//! pipeline and a client-secret credential from the fake Entra ID): creation to running to a
//! joined Node to deletion of every resource, a manager killed mid-create, boot diagnostics,
//! injected 429/5xx, bad input, and the ARM call budget of one machine's lifecycle.

use std::time::Duration;

use base64::Engine;
use capwin_e2e::azure::{CLIENT_SECRET, RESOURCE_GROUP, SUBSCRIPTION};
use capwin_e2e::{CloudKit, Env, Pool, condition};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
/// One scenario at a time: each starts its own fake ARM and manager on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const I: &str = "infrastructure.cluster.x-k8s.io";
const VM: &str = "Microsoft.Compute/virtualMachines";
const NIC: &str = "Microsoft.Network/networkInterfaces";
const DISK: &str = "Microsoft.Compute/disks";

/// A CAPZ-style cluster (Cluster + AzureCluster on the seed's network) with one Windows
/// MachineDeployment of `replicas` machines.
async fn azure_cluster(env: &Env, name: &str, machine_spec: Value, azure_cluster_extra: Value, replicas: u32) {
    let mut ac = json!({"metadata": {"name": name}, "spec": {
        "subscriptionID": SUBSCRIPTION, "resourceGroup": RESOURCE_GROUP, "location": "westeurope",
        "networkSpec": {"vnet": {"name": "capwin-e2e-vnet"},
            "subnets": [{"name": "capwin-e2e-controlplane-subnet", "role": "control-plane"}, {"name": "capwin-e2e-node-subnet", "role": "node"}]}}});
    if let (Some(spec), Some(extra)) = (ac["spec"].as_object_mut(), azure_cluster_extra.as_object()) {
        spec.extend(extra.clone());
    }
    env.create(I, "v1beta1", "AzureCluster", ac).await.unwrap();
    env.create(
        "cluster.x-k8s.io",
        "v1beta2",
        "Cluster",
        json!({"metadata": {"name": name}, "spec": {"controlPlaneEndpoint": {"host": "10.0.0.4", "port": 6443},
            "infrastructureRef": {"apiGroup": I, "kind": "AzureCluster", "name": name}}}),
    )
    .await
    .unwrap();
    let pool = Pool {
        templates: name,
        md: name,
        cluster: name,
        replicas,
        version: "v1.35.10",
        failure_domain: Some("2"),
        infra_kind: "AzureWindowsMachine",
        infra_spec: machine_spec,
        config: json!({"windows": {"version": "2025"}}),
    };
    env.windows_pool(pool).await.unwrap();
}

fn machine_spec() -> Value {
    json!({"vmSize": "Standard_D4s_v5", "osDisk": {"diskSizeGB": 128, "storageAccountType": "Premium_LRS"}})
}

/// Resources whose ownership tag names this machine.
fn owned(env: &Env, provider_type: &str, machine: &str) -> Vec<Value> {
    let want = format!("{}/{machine}", env.namespace);
    env.arm_resources(provider_type)
        .unwrap()
        .into_iter()
        .filter(|r| r["tags"]["capwin.cluster.x-k8s.io_machine"] == want.as_str())
        .collect()
}

fn counts(env: &Env) -> serde_json::Map<String, Value> {
    env.arm("GET", "counts", None).unwrap()["counts"].as_object().cloned().unwrap_or_default()
}

fn total(c: &serde_json::Map<String, Value>) -> u64 {
    c.values().filter_map(Value::as_u64).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_run_join_and_delete_everything_after_a_crash_mid_create() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::start_with("azure", &["--controllers", "bootstrap,azure"], &[CloudKit::Azure]).await.unwrap();
    // The VM create answers only after 6 s: the manager is killed while it waits, and ARM
    // creates the VM anyway, as a real create that outlives its caller.
    env.arm(
        "POST",
        "faults",
        Some(json!({"method": "PUT", "path": "/virtualMachines/[^/]+$", "delay": 6, "when": "after"})),
    )
    .unwrap();
    azure_cluster(&env, "azure", machine_spec(), json!({}), 1).await;
    let machines = env.api(I, "v1alpha1", "AzureWindowsMachine");
    let vm_id = env
        .wait("the VM name to be chosen", T, || async {
            let m = machines.get_opt("azure-0").await?;
            Ok(m.and_then(|m| m.metadata.annotations?.get("capwin.cluster.x-k8s.io/vm-id").cloned()))
        })
        .await
        .unwrap();
    let vm_name = vm_id.rsplit('/').next().unwrap().to_string();
    assert!(vm_name.len() <= 15 && vm_name.starts_with("azure-"), "{vm_name}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.kill_manager().await;
    env.wait("ARM to finish the VM create the dead manager started", T, || async {
        Ok((!owned(&env, VM, "azure-0").is_empty()).then_some(()))
    })
    .await
    .unwrap();
    let m = machines.get("azure-0").await.unwrap();
    assert!(m.data["spec"]["providerID"].is_null(), "the manager died before recording the VM");
    env.arm("DELETE", "faults", None).unwrap();
    // The payload reports a failed join on the serial port before any Node exists.
    let line = r#"CAPWIN-BOOTSTRAP {"step":"join","status":"failed","message":"kubeadm.exe exited with code 1"}"#;
    env.arm("POST", "serial-log", Some(json!({"vm": vm_name, "text": format!("boot\r\n{line}\r\n")}))).unwrap();
    let before_crash = counts(&env);
    env.arm("DELETE", "counts", None).unwrap();
    env.start_manager().await.unwrap();

    let m = env.wait_ready_reason(&machines, "azure-0", "VMRunning", Some(true)).await;
    assert_eq!(owned(&env, VM, "azure-0").len(), 1, "the dead manager's VM is adopted, not duplicated");
    assert_eq!(owned(&env, NIC, "azure-0").len(), 1, "one NIC");
    let provider_id =
        format!("azure:///subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/{VM}/{vm_name}");
    assert_eq!(m.data["spec"]["providerID"], provider_id.as_str());
    assert_eq!(m.data["status"]["initialization"]["provisioned"], true);
    assert_eq!(m.data["status"]["failureDomain"], "2");
    let addresses = m.data["status"]["addresses"].as_array().unwrap();
    assert!(addresses.iter().any(|a| a["type"] == "InternalIP" && a["address"] == "10.1.0.4"), "{addresses:?}");
    assert!(addresses.iter().any(|a| a["type"] == "Hostname" && a["address"] == vm_name.as_str()));

    // What cloudbase-init receives is the bootstrap Secret, byte for byte.
    let cd = env.arm("GET", &format!("custom-data?vm={vm_name}"), None).unwrap();
    let secret_name = env.capi("Machine").get("azure-0").await.unwrap().data["spec"]["bootstrap"]["dataSecretName"]
        .as_str()
        .unwrap()
        .to_string();
    let payload = env.secrets().get(&secret_name).await.unwrap().data.unwrap()["value"].0.clone();
    assert_eq!(cd["base64"], base64::engine::general_purpose::STANDARD.encode(&payload));
    let vm = &owned(&env, VM, "azure-0")[0];
    let p = &vm["properties"];
    assert_eq!(p["osProfile"]["computerName"], vm_name.as_str());
    assert_eq!(p["osProfile"]["windowsConfiguration"]["enableAutomaticUpdates"], false);
    assert_eq!(p["diagnosticsProfile"]["bootDiagnostics"]["enabled"], true);
    assert_eq!(p["storageProfile"]["osDisk"]["deleteOption"], "Delete");
    assert_eq!(vm["zones"], json!(["2"]));
    assert!(
        p["storageProfile"]["imageReference"]["communityGalleryImageId"]
            .as_str()
            .unwrap()
            .ends_with("/Images/capi-win-2025-containerd/Versions/1.35.10"),
        "the reference image for Windows Server 2025 and the Machine's version"
    );

    // Boot diagnostics: the failed join shows as a condition and an event, Ready untouched.
    let m = env
        .wait("NodeBootstrap BootstrapFailed", T, || async {
            let m = machines.get("azure-0").await?;
            Ok(condition(&m, "NodeBootstrap")
                .is_some_and(|(s, r, _)| s == "False" && r == "BootstrapFailed")
                .then_some(m))
        })
        .await
        .unwrap();
    let (_, _, message) = condition(&m, "NodeBootstrap").unwrap();
    assert!(message.contains("join") && message.contains("kubeadm.exe exited with code 1"), "{message}");
    assert_eq!(condition(&m, "Ready").unwrap().0, "True");

    // The template: capacity for scaling from zero, and azure.json for the node.
    let templates = env.api(I, "v1alpha1", "AzureWindowsMachineTemplate");
    let t = env
        .wait("the template's capacity", T, || async {
            let t = templates.get("azure").await?;
            Ok((!t.data["status"]["capacity"].is_null()).then_some(t))
        })
        .await
        .unwrap();
    assert_eq!(t.data["status"]["nodeInfo"]["operatingSystem"], "windows");
    assert_eq!(t.data["status"]["capacity"], json!({"cpu": "4", "memory": "16384Mi"}), "Standard_D4s_v5");
    let aj =
        env.wait("azure.json", T, || async { Ok(env.secrets().get_opt("azure-azure-json").await?) }).await.unwrap();
    let aj: Value = serde_json::from_slice(&aj.data.unwrap()["worker-node-azure.json"].0).unwrap();
    assert_eq!(aj["subnetName"], "capwin-e2e-node-subnet");
    assert_eq!(aj["subscriptionId"], SUBSCRIPTION);
    assert!(aj.get("aadClientSecret").is_none());

    // CAPI copies the providerID; the node joins; serial reads stop.
    env.wait("Machine.spec.providerID", T, || async {
        let mm = env.capi("Machine").get("azure-0").await?;
        Ok((mm.data["spec"]["providerID"] == provider_id.as_str()).then_some(()))
    })
    .await
    .unwrap();
    env.join_node("azure", &vm_name, &provider_id).await.unwrap();
    env.wait("nodeRef", T, || async {
        let mm = env.capi("Machine").get("azure-0").await?;
        Ok(mm.data["status"]["nodeRef"].is_object().then_some(()))
    })
    .await
    .unwrap();
    let created = counts(&env);

    // Steady state: a running, joined machine costs a handful of reads, nothing more.
    env.arm("DELETE", "counts", None).unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let steady = counts(&env);

    // Scale to zero: the VM, its NIC and its disk are deleted and verified gone first.
    env.arm("DELETE", "counts", None).unwrap();
    env.capi("MachineDeployment")
        .patch("azure", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}})))
        .await
        .unwrap();
    env.wait("the AzureWindowsMachine to be gone", T, || async {
        Ok(machines.get_opt("azure-0").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    let deleted = counts(&env);
    assert!(owned(&env, VM, "azure-0").is_empty(), "VM gone");
    assert!(owned(&env, NIC, "azure-0").is_empty(), "NIC gone");
    assert!(
        env.arm_resources(DISK).unwrap().iter().all(|d| !d["name"].as_str().unwrap_or_default().starts_with(&vm_name)),
        "OS disk gone"
    );

    eprintln!("ARM calls, create until the crash: {} {before_crash:?}", total(&before_crash));
    eprintln!("ARM calls, restart to joined: {} {created:?}", total(&created));
    eprintln!("ARM calls, 20 s steady state: {} {steady:?}", total(&steady));
    eprintln!("ARM calls, deletion: {} {deleted:?}", total(&deleted));
    // After the restart no VM is created: every VM PUT is refused with 412 (it exists) and the
    // VM adopted. (More than one such PUT can happen when a reconcile runs on a cached object
    // from before the providerID was recorded.)
    let vm_puts: Vec<u64> = env.arm("GET", "requests", None).unwrap()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "PUT" && r["type"] == "Microsoft.Compute/virtualMachines")
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(vm_puts.iter().filter(|s| **s == 201).count(), 1, "one VM created in all: {vm_puts:?}");
    assert!(vm_puts.iter().filter(|s| **s == 412).count() >= 1, "the restarted manager adopted it: {vm_puts:?}");
    assert!(total(&created) <= 30, "create budget: {created:?}");
    assert!(total(&steady) <= 2, "steady state must not poll ARM: {steady:?}");
    assert!(total(&deleted) <= 15, "delete budget: {deleted:?}");

    let log = env.manager_log();
    assert!(!log.contains(CLIENT_SECRET), "the client secret leaked into the manager log");
    for e in env.api("events.k8s.io", "v1", "Event").list(&Default::default()).await.unwrap() {
        assert!(!e.data.to_string().contains(CLIENT_SECRET));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_survived() {
    let _serial = SERIAL.lock().await;
    let env = Env::start_with("azthrottle", &["--controllers", "bootstrap,azure"], &[CloudKit::Azure]).await.unwrap();
    let faults = json!([
        {"method": "GET", "path": "/virtualMachines/[^/]+$", "times": 3, "status": 429, "retryAfter": 1},
        {"method": "PUT", "path": "/networkInterfaces/", "times": 2, "status": 500},
        {"method": "PUT", "path": "/virtualMachines/[^/]+$", "times": 1, "status": 503},
        {"method": "POST", "path": "/oauth2/v2.0/token", "times": 1, "status": 503},
    ]);
    env.arm("POST", "faults", Some(faults)).unwrap();
    azure_cluster(&env, "azthrottle", machine_spec(), json!({}), 1).await;
    let machines = env.api(I, "v1alpha1", "AzureWindowsMachine");
    env.wait_ready_reason(&machines, "azthrottle-0", "VMRunning", Some(true)).await;
    assert_eq!(owned(&env, VM, "azthrottle-0").len(), 1, "exactly one VM");
    assert_eq!(owned(&env, NIC, "azthrottle-0").len(), 1, "exactly one NIC");
    let armed = env.arm("GET", "faults", None).unwrap();
    for f in armed["faults"].as_array().unwrap() {
        assert!(f["hits"].as_u64().unwrap_or(0) >= 1, "fault never hit, so nothing was tested: {f}");
    }
    let c = counts(&env);
    assert!(total(&c) <= 60, "retries must back off, not hot-loop: {c:?}");

    // Pausing the Cluster: Paused says so, Ready keeps what it said, nothing is deleted while
    // paused, and unpausing resumes.
    let pause = |p: bool| json!({"spec": {"paused": p}});
    let clusters = env.capi("Cluster");
    clusters.patch("azthrottle", &PatchParams::default(), &Patch::Merge(pause(true))).await.unwrap();
    let paused = env
        .wait("Paused=True", T, || async {
            let m = machines.get("azthrottle-0").await?;
            Ok(condition(&m, "Paused").is_some_and(|(s, r, _)| s == "True" && r == "Paused").then_some(m))
        })
        .await
        .unwrap();
    assert_eq!(condition(&paused, "Ready").unwrap().1, "VMRunning", "a pause does not touch Ready");
    // Operations are followed on deletion (a create is read back through the VM instead):
    // throttled polls of the delete's operation are survived too.
    env.arm("DELETE", "faults", None).unwrap();
    env.arm(
        "POST",
        "faults",
        Some(json!({"method": "GET", "path": "/operations/", "times": 2, "status": 429, "retryAfter": 1})),
    )
    .unwrap();
    machines.delete("azthrottle-0", &Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(owned(&env, VM, "azthrottle-0").len(), 1, "nothing is deleted while paused");
    clusters.patch("azthrottle", &PatchParams::default(), &Patch::Merge(pause(false))).await.unwrap();
    env.wait("the machine's deletion to finish after unpausing", T, || async {
        Ok(machines.get_opt("azthrottle-0").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    assert!(owned(&env, VM, "azthrottle-0").is_empty(), "deleted once unpaused");
    let armed = env.arm("GET", "faults", None).unwrap();
    for f in armed["faults"].as_array().unwrap() {
        assert!(f["hits"].as_u64().unwrap_or(0) >= 1, "fault never hit, so nothing was tested: {f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_a_named_condition_and_nothing_half_created() {
    let _serial = SERIAL.lock().await;
    let env = Env::start_with("azbad", &["--controllers", "bootstrap,azure"], &[CloudKit::Azure]).await.unwrap();
    let machines = env.api(I, "v1alpha1", "AzureWindowsMachine");
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(I, "v1beta1", "AzureClusterIdentity"),
        "azureclusteridentities",
    );
    let ids: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(env.mgmt.clone(), &env.namespace, &ar);
    // An identity whose Secret does not exist, and one this namespace may not use.
    let allowed_here = json!({"list": [env.namespace.clone()]});
    for (name, allowed) in
        [("no-secret", json!({})), ("elsewhere", json!({"list": ["someone-else"]})), ("team", allowed_here)]
    {
        let body = json!({"apiVersion": format!("{I}/v1beta1"), "kind": "AzureClusterIdentity",
            "metadata": {"name": name},
            "spec": {"type": "ServicePrincipal", "tenantID": "t", "clientID": "c",
                "clientSecret": {"name": format!("{name}-secret")}, "allowedNamespaces": allowed}});
        ids.create(&Default::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
    }
    // The one usable identity: its Secret exists and this namespace is listed.
    let team_secret =
        json!({"metadata": {"name": "team-secret"}, "stringData": {"clientSecret": "team-sp-secret-9fQ2"}});
    env.secrets().create(&Default::default(), &serde_json::from_value(team_secret).unwrap()).await.unwrap();
    let mut unknown_image = machine_spec();
    unknown_image["image"] = json!({"marketplace": {"publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "1999-datacenter", "version": "latest"}});
    let mut no_subnet = machine_spec();
    no_subnet["network"] = json!({"subnetName": "no-such-subnet"});
    let cases = [
        ("azimage", unknown_image, json!({}), "ImageNotFound", "1999-datacenter"),
        ("azsubnet", no_subnet, json!({}), "SubnetNotFound", "spec.network.subnetName"),
        (
            "azsecret",
            machine_spec(),
            json!({"identityRef": {"name": "no-secret", "kind": "AzureClusterIdentity"}}),
            "IdentitySecretNotFound",
            "no-secret-secret",
        ),
        (
            "azns",
            machine_spec(),
            json!({"identityRef": {"name": "elsewhere", "kind": "AzureClusterIdentity"}}),
            "IdentityNotAllowed",
            "allowedNamespaces",
        ),
    ];
    for (name, spec, extra, _, _) in &cases {
        azure_cluster(&env, name, spec.clone(), extra.clone(), 1).await;
    }
    // Custom data over Azure's 65,535 bytes: a Machine whose bootstrap data another provider made.
    let big = "x".repeat(70_000);
    let secret = json!({"metadata": {"name": "azbig-data"}, "stringData": {"value": big, "format": "cloud-config"}});
    env.secrets().create(&Default::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    azure_cluster(&env, "azbig", machine_spec(), json!({}), 0).await;
    let machine = env
        .create(
            "cluster.x-k8s.io",
            "v1beta2",
            "Machine",
            json!({"metadata": {"name": "azbig-0"},
            "spec": {"clusterName": "azbig", "version": "v1.35.10", "bootstrap": {"dataSecretName": "azbig-data"},
                "infrastructureRef": {"apiGroup": I, "kind": "AzureWindowsMachine", "name": "azbig-0"}}}),
        )
        .await
        .unwrap();
    let owner = json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": "azbig-0", "uid": machine.metadata.uid, "controller": true});
    env.create(
        I,
        "v1alpha1",
        "AzureWindowsMachine",
        // Labelled as CAPI's Machine controller labels infrastructure machines: the Cluster watch
        // wakes the machine by it when the Cluster's infrastructure is provisioned.
        json!({"metadata": {"name": "azbig-0", "ownerReferences": [owner], "labels": {"cluster.x-k8s.io/cluster-name": "azbig"}},
            "spec": machine_spec()}),
    )
    .await
    .unwrap();

    for (name, _, _, reason, needle) in cases.iter().map(|(n, s, e, r, x)| (*n, s, e, *r, *x)).chain([(
        "azbig",
        &Value::Null,
        &Value::Null,
        "CustomDataTooLarge",
        "65535",
    )]) {
        let m = env.wait_ready_reason(&machines, &format!("{name}-0"), reason, Some(false)).await;
        let (_, _, message) = condition(&m, "Ready").unwrap();
        assert!(message.contains(needle), "{name}: {message:?} should name {needle:?}");
        assert!(m.data["spec"]["providerID"].is_null(), "{name}: no VM recorded");
        assert!(owned(&env, VM, &format!("{name}-0")).is_empty(), "{name}: no VM");
        assert!(owned(&env, NIC, &format!("{name}-0")).is_empty(), "{name}: no half-created NIC");
    }
    let c = counts(&env);
    assert!(c.keys().all(|k| !k.starts_with("PUT")), "bad input never reaches a create: {c:?}");

    // A cluster whose AzureClusterIdentity is allowed here gets its VM with that identity's token.
    azure_cluster(
        &env,
        "azteam",
        machine_spec(),
        json!({"identityRef": {"name": "team", "kind": "AzureClusterIdentity"}}),
        1,
    )
    .await;
    env.wait_ready_reason(&machines, "azteam-0", "VMRunning", Some(true)).await;
    let requests = env.arm("GET", "requests", None).unwrap();
    let token_clients: Vec<&str> = requests["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "oauth2/token")
        .filter_map(|r| r["body"]["client_id"].as_str())
        .collect();
    assert!(token_clients.contains(&"c"), "the identity's client asked for a token: {token_clients:?}");
    assert!(
        !requests.to_string().contains("team-sp-secret-9fQ2"),
        "the fake's log redacts secrets; so must the request"
    );
    assert!(!env.manager_log().contains("team-sp-secret-9fQ2"), "the identity's secret leaked into the manager log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_vanished_vms_are_reported_never_recreated() {
    let _serial = SERIAL.lock().await;
    let env = Env::start_with("azgone", &["--controllers", "bootstrap,azure"], &[CloudKit::Azure]).await.unwrap();
    // Every VM create of cluster azfail is accepted and then fails, as an allocation would.
    env.arm(
        "POST",
        "faults",
        Some(json!({"method": "PUT", "path": "/virtualMachines/azfail-", "times": -1,
            "operationFailure": {"code": "OSProvisioningTimedOut"}})),
    )
    .unwrap();
    azure_cluster(&env, "azfail", machine_spec(), json!({}), 1).await;
    azure_cluster(&env, "azgone", machine_spec(), json!({}), 1).await;
    let machines = env.api(I, "v1alpha1", "AzureWindowsMachine");

    let m = env.wait_ready_reason(&machines, "azfail-0", "VMProvisioningFailed", Some(false)).await;
    let (_, _, message) = condition(&m, "Ready").unwrap();
    assert!(message.contains("OSProvisioningTimedOut"), "ARM's code is in the condition: {message}");
    assert!(m.data["status"]["initialization"]["provisioned"].is_null(), "a failed VM is not provisioned");

    env.wait_ready_reason(&machines, "azgone-0", "VMRunning", Some(true)).await;
    let vm = owned(&env, VM, "azgone-0").pop().unwrap();
    env.arm("POST", "delete", Some(json!({"id": vm["id"]}))).unwrap();
    // Found on the next requeue (a minute before the Node joins); nudge it as an operator's
    // `kubectl annotate` would.
    machines
        .patch(
            "azgone-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"e2e/nudge": "1"}}})),
        )
        .await
        .unwrap();
    let m = env.wait_ready_reason(&machines, "azgone-0", "VMDeleted", Some(false)).await;
    let (_, _, message) = condition(&m, "Ready").unwrap();
    assert!(message.contains("not recreated"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(owned(&env, VM, "azgone-0").is_empty(), "a VM deleted outside capwin is never silently recreated");
    let puts = counts(&env).get("PUT Microsoft.Compute/virtualMachines").and_then(Value::as_u64).unwrap_or(0);
    assert_eq!(puts, 2, "one create per cluster, none after the failure or the deletion");
}
