//! Bootstrap controller scenarios: a MachineDeployment of Windows workers from creation to data
//! Secret, token upkeep and deletion on join, pause, deletion, restart, and bad input.

use std::time::Duration;

use capwin_e2e::{Env, Pool, condition};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const B: &str = "bootstrap.cluster.x-k8s.io";
const I: &str = "infrastructure.cluster.x-k8s.io";

async fn cluster(env: &Env, name: &str, replicas: u32, infra_kind: &str, config: Value) {
    create_cluster(env, name, true, json!({})).await;
    workers(env, name, replicas, infra_kind, config).await;
}

async fn create_cluster(env: &Env, name: &str, with_endpoint: bool, annotations: Value) {
    let mut spec = json!({"clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}, "services": {"cidrBlocks": ["10.96.0.0/12"]}}});
    if with_endpoint {
        spec["controlPlaneEndpoint"] = json!({"host": "10.0.0.4", "port": 6443});
    }
    let metadata = json!({"name": name, "annotations": annotations});
    env.create("cluster.x-k8s.io", "v1beta2", "Cluster", json!({"metadata": metadata, "spec": spec})).await.unwrap();
}

async fn workers(env: &Env, name: &str, replicas: u32, infra_kind: &str, config: Value) {
    let infra_spec = if infra_kind.starts_with("AWS") {
        json!({"instanceType": "m6i.xlarge"})
    } else {
        json!({"vmSize": "Standard_D4s_v5"})
    };
    let md = format!("{name}-win");
    let pool = Pool {
        templates: name,
        md: &md,
        cluster: name,
        replicas,
        version: "v1.34.2",
        failure_domain: None,
        infra_kind,
        infra_spec,
        config,
    };
    env.windows_pool(pool).await.unwrap();
}

async fn ready_reason(env: &Env, config: &str, reason: &str) -> kube::api::DynamicObject {
    env.wait_ready_reason(&env.configs(), config, reason, None).await
}

async fn tokens(env: &Env, cluster: &str) -> Vec<k8s_openapi::api::core::v1::Secret> {
    let w = env.workload(cluster).await.unwrap();
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(w, "kube-system");
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.name_any().starts_with("bootstrap-token-"))
        .collect()
}

fn gunzip_if_needed(b: &[u8]) -> String {
    use std::io::Read;
    if b.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(b).read_to_string(&mut s).unwrap();
        s
    } else {
        String::from_utf8(b.to_vec()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_deployment_to_data_secrets_token_upkeep_and_join() {
    let env = Env::start("happy", &["--bootstrap-token-ttl", "30s"]).await.unwrap();
    cluster(&env, "demo", 2, "AWSWindowsMachine", json!({"windows": {"cni": {"flavour": "flannel-vxlan"}}})).await;

    for m in ["demo-win-0", "demo-win-1"] {
        let cfg = ready_reason(&env, m, "DataSecretAvailable").await;
        assert_eq!(cfg.data["status"]["dataSecretName"], m);
        assert_eq!(cfg.data["status"]["initialization"]["dataSecretCreated"], true);
        let s = env.secrets().get(m).await.unwrap();
        assert_eq!(s.type_.as_deref(), Some("cluster.x-k8s.io/secret"));
        assert_eq!(s.labels()["cluster.x-k8s.io/cluster-name"], "demo");
        let owner = &s.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("WindowsKubeadmConfig", m, Some(true))
        );
        let data = s.data.unwrap();
        assert_eq!(data["format"].0, b"cloud-config");
        let doc = gunzip_if_needed(&data["value"].0);
        assert!(doc.starts_with("#cloud-config\n"), "AWS payloads are cloud-config (gzip when large)");
        assert!(
            doc.contains("\\\"flavour\\\":\\\"flannel-vxlan\\\"") || doc.contains("\"flavour\":\"flannel-vxlan\""),
            "the spec reached the payload"
        );
        assert!(doc.contains("\"apiServerEndpoint\": \"10.0.0.4:6443\""));
        // CAPI (the simulator here) copies the name to the Machine.
        env.wait("Machine.spec.bootstrap.dataSecretName", T, || async {
            let mm = env.capi("Machine").get(m).await?;
            Ok((mm.data["spec"]["bootstrap"]["dataSecretName"] == m).then_some(()))
        })
        .await
        .unwrap();
    }
    // One token per machine, as kubeadm expects them.
    let toks = tokens(&env, "demo").await;
    assert_eq!(toks.len(), 2, "exactly one token per machine");
    let d = toks[0].data.clone().unwrap();
    assert_eq!(toks[0].type_.as_deref(), Some("bootstrap.kubernetes.io/token"));
    assert_eq!(d["auth-extra-groups"].0, b"system:bootstrappers:kubeadm:default-node-token");
    assert_eq!(d["usage-bootstrap-authentication"].0, b"true");

    // The token is refreshed while no Node exists (TTL 30 s: refreshed when < 25 s remain).
    let id = String::from_utf8(toks[0].data.as_ref().unwrap()["token-id"].0.clone()).unwrap();
    let first = String::from_utf8(d["expiration"].0.clone()).unwrap();
    env.wait("a token refresh", Duration::from_secs(40), || async {
        let now = tokens(&env, "demo").await;
        let t = now.iter().find(|s| s.name_any() == format!("bootstrap-token-{id}")).cloned();
        Ok(t.filter(|t| t.data.as_ref().unwrap()["expiration"].0 != first.as_bytes()).map(|_| ()))
    })
    .await
    .unwrap();

    // The machine's own token, as its data Secret holds it before the join.
    let held = env.secrets().get("demo-win-0").await.unwrap().data.unwrap();
    let own_token = String::from_utf8(held["bootstrap-token"].0.clone()).unwrap();
    let own_secret = own_token.split_once('.').unwrap().1.to_string();
    assert!(gunzip_if_needed(&held["value"].0).contains(&own_token), "the payload carries the token before the join");

    // The infrastructure provider reports the VM, the Node joins: the token goes at once.
    let infra = env.api(I, "v1alpha1", "AWSWindowsMachine");
    infra
        .patch(
            "demo-win-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"providerID": "aws:///us-east-1a/i-0aaa"}})),
        )
        .await
        .unwrap();
    infra
        .patch_status(
            "demo-win-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"initialization": {"provisioned": true}}})),
        )
        .await
        .unwrap();
    env.join_node("demo", "ip-10-0-1-5.ec2.internal", "aws:///us-east-1a/i-0aaa").await.unwrap();
    ready_reason(&env, "demo-win-0", "Joined").await;
    env.wait("the joined machine's token to be deleted", T, || async {
        Ok((tokens(&env, "demo").await.len() == 1).then_some(()))
    })
    .await
    .unwrap();
    // No copy of it outlives its use: the data Secret holds no token any more, in no key.
    let scrubbed = env
        .wait("the data Secret to be scrubbed", T, || async {
            let d = env.secrets().get("demo-win-0").await?.data.unwrap_or_default();
            Ok((!d.contains_key("bootstrap-token")).then_some(d))
        })
        .await
        .unwrap();
    for (key, v) in &scrubbed {
        let text = gunzip_if_needed(&v.0);
        assert!(!text.contains(&own_secret), "the join token's secret is still in the data Secret's {key}");
    }
    let payload = gunzip_if_needed(&scrubbed["value"].0);
    assert!(
        payload.contains(&format!("{}.0000000000000000", &own_token[..6])),
        "a placeholder names the deleted token"
    );

    // Deleting the other Machine removes its config, data Secret and token.
    env.capi("MachineDeployment")
        .patch("demo-win", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}})))
        .await
        .unwrap();
    env.wait("demo-win-1 and its token to go", T, || async {
        let gone = env.configs().get_opt("demo-win-1").await?.is_none()
            && env.secrets().get_opt("demo-win-1").await?.is_none();
        Ok((gone && tokens(&env, "demo").await.is_empty()).then_some(()))
    })
    .await
    .unwrap();

    // No token secret in the manager's log, events or conditions.
    let log = env.manager_log();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.mgmt.clone(), &env.namespace);
    let events: String = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|e| format!("{:?} {:?}", e.reason, e.note))
        .collect();
    let statuses: String = env
        .configs()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.data["status"].to_string())
        .collect();
    let secret_part = String::from_utf8(d["token-secret"].0.clone()).unwrap();
    for (what, text) in [("log", &log), ("events", &events), ("conditions", &statuses)] {
        assert!(!text.contains(&secret_part), "the token secret leaked into the {what}");
    }
    assert!(events.contains("DataSecretWritten") && events.contains("with bootstrap token"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_restart_converge_without_duplicates() {
    let mut env = Env::start("restart", &[]).await.unwrap();
    cluster(&env, "rs", 1, "AzureWindowsMachine", json!({})).await;
    ready_reason(&env, "rs-win-0", "DataSecretAvailable").await;
    let before = env.secrets().get("rs-win-0").await.unwrap();

    // Kill the manager, scale up, start it again: exactly one token per machine, no rewrite.
    env.kill_manager().await;
    env.capi("MachineDeployment")
        .patch("rs-win", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .unwrap();
    env.start_manager().await.unwrap();
    ready_reason(&env, "rs-win-1", "DataSecretAvailable").await;
    assert_eq!(tokens(&env, "rs").await.len(), 2);
    let after = env.secrets().get("rs-win-0").await.unwrap();
    assert_eq!(after.data, before.data, "a restart does not re-mint or re-render a finished config");

    // Pause: the Paused condition, and nothing produced for a new machine.
    env.capi("Cluster")
        .patch("rs", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": true}})))
        .await
        .unwrap();
    env.capi("MachineDeployment")
        .patch("rs-win", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await
        .unwrap();
    env.wait("rs-win-2 paused", T, || async {
        let o = env.configs().get_opt("rs-win-2").await?;
        Ok(o.filter(|o| condition(o, "Paused").is_some_and(|(s, _, _)| s == "True")))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(env.secrets().get_opt("rs-win-2").await.unwrap().is_none(), "no data while paused");
    env.capi("Cluster")
        .patch("rs", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": false}})))
        .await
        .unwrap();
    ready_reason(&env, "rs-win-2", "DataSecretAvailable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_named_condition_and_no_secret() {
    let env = Env::start("bad", &[]).await.unwrap();

    // No owner.
    env.create(B, "v1alpha1", "WindowsKubeadmConfig", json!({"metadata": {"name": "orphan"}, "spec": {}}))
        .await
        .unwrap();
    let o = ready_reason(&env, "orphan", "WaitingForMachineOwner").await;
    assert_eq!(condition(&o, "Ready").unwrap().0, "False");

    // A spec the schema accepts but the renderer refuses (a kubelet flag removed in 1.34).
    cluster(&env, "inv", 1, "AzureWindowsMachine", json!({"joinConfiguration": {"nodeRegistration": {"kubeletExtraArgs": [{"name": "pod-infra-container-image", "value": "x"}]}}})).await;
    let o = ready_reason(&env, "inv-win-0", "InvalidSpec").await;
    assert!(condition(&o, "Ready").unwrap().2.contains("kubeletExtraArgs[0].name"), "the message names the field");

    // A missing contentFrom Secret.
    cluster(
        &env,
        "cf",
        1,
        "AzureWindowsMachine",
        json!({"files": [{"path": "C:\\k\\x", "contentFrom": {"secret": {"name": "nope", "key": "k"}}}]}),
    )
    .await;
    let o = ready_reason(&env, "cf-win-0", "MissingFileSecret").await;
    assert!(condition(&o, "Ready").unwrap().2.contains("spec.files[0].contentFrom"));

    // A payload over EC2's limit.
    // Incompressible bytes (xorshift), so no compression brings them under 16 KiB.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..30_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let big = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(noise)
    };
    env.secrets()
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "big"}, "data": {"blob": big}})).unwrap(),
        )
        .await
        .unwrap();
    cluster(
        &env,
        "big",
        1,
        "AWSWindowsMachine",
        json!({"files": [{"path": "C:\\k\\blob", "contentFrom": {"secret": {"name": "big", "key": "blob"}}}]}),
    )
    .await;
    let o = ready_reason(&env, "big-win-0", "PayloadTooLarge").await;
    assert!(condition(&o, "Ready").unwrap().2.contains(r"file C:\k\blob"));

    // A malformed CA Secret and a malformed kubeconfig Secret (made before CAPI would make them).
    for (name, key, value) in
        [("ca-ca", "tls.crt", "bm90IGEgY2VydA=="), ("kc-kubeconfig", "value", "bm90OiBhOiBrdWJlY29uZmln")]
    {
        let secret = json!({"metadata": {"name": name}, "data": {key: value}});
        env.secrets().create(&Default::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    }
    cluster(&env, "ca", 1, "AzureWindowsMachine", json!({})).await;
    let o = ready_reason(&env, "ca-win-0", "InvalidCASecret").await;
    assert!(condition(&o, "Ready").unwrap().2.contains("ca-ca"));
    cluster(&env, "kc", 1, "AzureWindowsMachine", json!({})).await;
    ready_reason(&env, "kc-win-0", "InvalidKubeconfigSecret").await;

    // Missing CA and kubeconfig Secrets: a Cluster whose Secrets CAPI has not written.
    // Annotated from creation: a later patch would race the simulator writing them.
    let skip = json!({capwin_testkit::capi::SKIP_SECRETS_ANNOTATION: "true"});
    create_cluster(&env, "nosec", true, skip).await;
    workers(&env, "nosec", 1, "AzureWindowsMachine", json!({})).await;
    ready_reason(&env, "nosec-win-0", "MissingCASecret").await;
    let (crt, key) = capwin_testkit::capi::self_signed_ca("nosec").unwrap();
    let ca = {
        use base64::Engine;
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        json!({"metadata": {"name": "nosec-ca"}, "data": {"tls.crt": b(&crt), "tls.key": b(&key)}})
    };
    env.secrets().create(&Default::default(), &serde_json::from_value(ca).unwrap()).await.unwrap();
    ready_reason(&env, "nosec-win-0", "MissingKubeconfigSecret").await;

    // A Cluster reported ready but without an endpoint.
    create_cluster(&env, "ep", false, json!({})).await;
    let status =
        json!({"status": {"initialization": {"infrastructureProvisioned": true, "controlPlaneInitialized": true}}});
    env.capi("Cluster").patch_status("ep", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    workers(&env, "ep", 1, "AzureWindowsMachine", json!({})).await;
    ready_reason(&env, "ep-win-0", "MissingControlPlaneEndpoint").await;

    for name in ["orphan", "inv-win-0", "cf-win-0", "big-win-0", "ca-win-0", "kc-win-0", "ep-win-0", "nosec-win-0"] {
        assert!(env.secrets().get_opt(name).await.unwrap().is_none(), "{name}: no partial Secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_re_render_before_the_vm_boots_and_never_after() {
    let env = Env::start("rerender", &[]).await.unwrap();
    cluster(&env, "rr", 1, "AzureWindowsMachine", json!({})).await;
    ready_reason(&env, "rr-win-0", "DataSecretAvailable").await;
    let value = |s: k8s_openapi::api::core::v1::Secret| s.data.unwrap()["value"].0.clone();
    let first = value(env.secrets().get("rr-win-0").await.unwrap());

    // Before the VM exists: a spec change reaches the payload.
    env.configs()
        .patch("rr-win-0", &PatchParams::default(), &Patch::Merge(json!({"spec": {"verbosity": 7}})))
        .await
        .unwrap();
    let second = env
        .wait("the payload to follow the spec", T, || async {
            let v = value(env.secrets().get("rr-win-0").await?);
            Ok((v != first).then_some(v))
        })
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&second).contains("\"verbosity\":7"));

    // The VM boots with it; later changes no longer touch the Secret.
    let infra = env.api(I, "v1alpha1", "AzureWindowsMachine");
    let pid = "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/rr-win-0";
    infra
        .patch("rr-win-0", &PatchParams::default(), &Patch::Merge(json!({"spec": {"providerID": pid}})))
        .await
        .unwrap();
    infra
        .patch_status(
            "rr-win-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"initialization": {"provisioned": true}}})),
        )
        .await
        .unwrap();
    env.wait("the Machine to be provisioned", T, || async {
        let m = env.capi("Machine").get("rr-win-0").await?;
        Ok((m.data["spec"]["providerID"] == pid).then_some(()))
    })
    .await
    .unwrap();
    env.configs()
        .patch("rr-win-0", &PatchParams::default(), &Patch::Merge(json!({"spec": {"verbosity": 9}})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(value(env.secrets().get("rr-win-0").await.unwrap()), second, "the booted VM's payload is frozen");
}
