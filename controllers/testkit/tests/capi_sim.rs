//! The CAPI-core simulator against two in-memory API servers (management and workload).

use std::time::Duration;

use capwin_testkit::apiserver::{ApiServer, Config};
use capwin_testkit::capi::{CapiSim, SimConfig, capi};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn client(url: &str) -> Client {
    let mut cfg = kube::Config::new(url.parse().unwrap());
    cfg.default_namespace = "default".into();
    Client::try_from(cfg).unwrap()
}

fn ours(kind: &str, plural: &str, group: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1alpha1", kind), plural)
}

async fn create(c: &Client, ar: &ApiResource, v: serde_json::Value) -> DynamicObject {
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", ar);
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap()).await.unwrap()
}

#[tokio::test]
async fn a_machine_deployment_becomes_joined_windows_machines() {
    let mgmt_server = ApiServer::start(Config {
        crd_paths: vec![
            repo().join("crds/bootstrap"),
            repo().join("crds/infrastructure"),
            repo().join("../shared/capi-crds"),
        ],
        bookmark_interval: Duration::from_millis(500),
        ..Config::default()
    })
    .await
    .unwrap();
    let workload_server = ApiServer::start(Config::default()).await.unwrap();
    let mgmt = client(mgmt_server.url());
    let workload = client(workload_server.url());
    let sim = CapiSim::new(
        mgmt.clone(),
        workload.clone(),
        SimConfig { namespace: "default".into(), workload_url: workload_server.url().into(), join_nodes: true },
    );

    create(
        &mgmt,
        &capi("Cluster"),
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": "demo"},
        "spec": {"controlPlaneEndpoint": {"host": "10.0.0.4", "port": 6443}}}),
    )
    .await;
    let wkct = ours("WindowsKubeadmConfigTemplate", "windowskubeadmconfigtemplates", "bootstrap.cluster.x-k8s.io");
    create(&mgmt, &wkct, json!({"apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha1", "kind": "WindowsKubeadmConfigTemplate", "metadata": {"name": "win"},
        "spec": {"template": {"metadata": {"labels": {"pool": "win"}}, "spec": {"windows": {"cni": {"flavour": "flannel-vxlan"}}}}}})).await;
    let awsmt = ours("AWSWindowsMachineTemplate", "awswindowsmachinetemplates", "infrastructure.cluster.x-k8s.io");
    create(&mgmt, &awsmt, json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "AWSWindowsMachineTemplate", "metadata": {"name": "win"},
        "spec": {"template": {"spec": {"instanceType": "m6i.xlarge"}}}})).await;
    create(&mgmt, &capi("MachineDeployment"), json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment", "metadata": {"name": "demo-win"},
        "spec": {"clusterName": "demo", "replicas": 2, "selector": {"matchLabels": {}},
            "template": {"spec": {"clusterName": "demo", "version": "v1.34.2",
                "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "WindowsKubeadmConfigTemplate", "name": "win"}},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "AWSWindowsMachineTemplate", "name": "win"}}}}})).await;

    sim.step().await.unwrap();

    // The cluster is ready for joins and has its secrets.
    let clusters: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), "default", &capi("Cluster"));
    let c = clusters.get("demo").await.unwrap();
    assert_eq!(
        c.data["status"]["initialization"],
        json!({"controlPlaneInitialized": true, "infrastructureProvisioned": true})
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::default_namespaced(mgmt.clone());
    let ca = secrets.get("demo-ca").await.unwrap();
    assert!(
        String::from_utf8(ca.data.unwrap()["tls.crt"].0.clone()).unwrap().starts_with("-----BEGIN CERTIFICATE-----")
    );
    let kc = secrets.get("demo-kubeconfig").await.unwrap();
    let kc_text = String::from_utf8(kc.data.unwrap()["value"].0.clone()).unwrap();
    let parsed = kube::config::Kubeconfig::from_yaml(&kc_text).unwrap();
    let from_secret =
        Client::try_from(kube::Config::from_custom_kubeconfig(parsed, &Default::default()).await.unwrap()).unwrap();
    from_secret.apiserver_version().await.expect("the kubeconfig Secret reaches the workload API server");

    // Two machines, each with a cloned config and infra machine owned by it.
    let machines: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), "default", &capi("Machine"));
    let ms = machines.list(&ListParams::default()).await.unwrap();
    assert_eq!(ms.items.iter().map(|m| m.name_any()).collect::<Vec<_>>(), ["demo-win-0", "demo-win-1"]);
    let wkc_ar = ours("WindowsKubeadmConfig", "windowskubeadmconfigs", "bootstrap.cluster.x-k8s.io");
    let configs: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), "default", &wkc_ar);
    let cfg = configs.get("demo-win-0").await.unwrap();
    assert_eq!(cfg.data["spec"]["windows"]["cni"]["flavour"], "flannel-vxlan");
    assert_eq!(cfg.labels()["pool"], "win");
    assert_eq!(cfg.labels()["cluster.x-k8s.io/cluster-name"], "demo");
    let owner = &cfg.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Machine", "demo-win-0", Some(true)));
    let awsm_ar = ours("AWSWindowsMachine", "awswindowsmachines", "infrastructure.cluster.x-k8s.io");
    let infra: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), "default", &awsm_ar);
    assert_eq!(infra.get("demo-win-1").await.unwrap().data["spec"]["instanceType"], "m6i.xlarge");

    // A bootstrap provider publishes the data secret; CAPI copies its name to the Machine.
    configs
        .patch_status("demo-win-0", &PatchParams::default(), &Patch::Merge(json!({"status": {"dataSecretName": "demo-win-0", "initialization": {"dataSecretCreated": true},
            "conditions": [{"type": "Ready", "status": "True", "reason": "DataSecretAvailable", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})))
        .await
        .unwrap();
    // An infrastructure provider reports the VM; CAPI copies providerID and addresses, and the node joins.
    infra
        .patch(
            "demo-win-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"providerID": "aws:///us-east-1a/i-0123456789abcdef0"}})),
        )
        .await
        .unwrap();
    infra
        .patch_status("demo-win-0", &PatchParams::default(), &Patch::Merge(json!({"status": {"initialization": {"provisioned": true}, "addresses": [{"type": "InternalIP", "address": "10.0.1.5"}]}})))
        .await
        .unwrap();
    sim.step().await.unwrap();
    let m0 = machines.get("demo-win-0").await.unwrap();
    assert_eq!(m0.data["spec"]["bootstrap"]["dataSecretName"], "demo-win-0");
    assert_eq!(m0.data["spec"]["providerID"], "aws:///us-east-1a/i-0123456789abcdef0");
    assert_eq!(m0.data["status"]["addresses"][0]["address"], "10.0.1.5");
    assert_eq!(m0.data["status"]["nodeRef"]["name"], "demo-win-0");
    let conds = m0.data["status"]["conditions"].as_array().unwrap();
    assert!(conds.iter().any(|c| c["type"] == "BootstrapConfigReady" && c["status"] == "True"));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(workload.clone());
    let node = nodes.get("demo-win-0").await.unwrap();
    assert_eq!(node.spec.unwrap().provider_id.as_deref(), Some("aws:///us-east-1a/i-0123456789abcdef0"));
    let m1 = machines.get("demo-win-1").await.unwrap();
    assert!(
        m1.data["spec"]["bootstrap"]["dataSecretName"].is_null() && m1.data["status"]["nodeRef"].is_null(),
        "nothing copied before providers report"
    );

    // Scale down: the newest machine goes, and garbage collection takes its clones.
    let mds: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), "default", &capi("MachineDeployment"));
    mds.patch("demo-win", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await.unwrap();
    sim.step().await.unwrap();
    assert!(machines.get_opt("demo-win-1").await.unwrap().is_none());
    assert!(
        configs.get_opt("demo-win-1").await.unwrap().is_none() && infra.get_opt("demo-win-1").await.unwrap().is_none()
    );
}
