//! AWS Windows machines against moto: creation to running to a joined Node to termination, a
//! manager that died mid-create, bad input, CAPA identities (controller, static, role, a role
//! chained from a static source, a namespace not allowed; moto's STS, one EC2 world per account),
//! EC2 throttling and 5xx injected by the kit's proxy, and the EC2 call budget of one machine's
//! lifecycle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capwin_aws::ec2::{Ec2, LaunchSpec, SdkEc2, StaticCredentials};
use capwin_aws::model;
use capwin_e2e::{CloudKit, Env, Pool};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
/// One moto at a time: concurrent moto starts on two cores make first calls slow.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const I: &str = "infrastructure.cluster.x-k8s.io";

/// EC2 for the test's own checks: moto itself, never the proxy, so checks neither count as the
/// manager's calls nor use up injected faults.
async fn ec2(env: &Env) -> SdkEc2 {
    let creds =
        StaticCredentials { access_key_id: "testing".into(), secret_access_key: "testing".into(), session_token: None };
    let url = env.kit_url(CloudKit::Aws).or(env.manager_env("AWS_ENDPOINT_URL"));
    SdkEc2::new("us-east-1", url, Some(creds)).await
}

async fn aws_cluster(env: &Env, name: &str, machine_spec: Value) {
    env.create(
        "cluster.x-k8s.io",
        "v1beta2",
        "Cluster",
        json!({"metadata": {"name": name},
        "spec": {"controlPlaneEndpoint": {"host": "10.0.0.4", "port": 6443}}}),
    )
    .await
    .unwrap();
    let pool = Pool {
        templates: name,
        md: name,
        cluster: name,
        replicas: 1,
        version: "v1.34.13",
        failure_domain: Some("us-east-1c"),
        infra_kind: "AWSWindowsMachine",
        infra_spec: machine_spec,
        config: json!({}),
    };
    env.windows_pool(pool).await.unwrap();
}

fn machine_spec() -> Value {
    json!({"instanceType": "m6i.xlarge",
        "subnet": {"filters": [{"name": "default-for-az", "values": ["true"]}]},
        "securityGroups": [{"filters": [{"name": "group-name", "values": ["default"]}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_run_join_and_terminate_after_a_crash_mid_create() {
    let _serial = SERIAL.lock().await;
    let env = Env::start_with("aws", &["--controllers", "bootstrap,aws"], &[CloudKit::Aws]).await.unwrap();
    let ec2 = ec2(&env).await;
    // A previous manager sent RunInstances for this machine and died before recording it.
    let tags = model::ownership_tags("aws", &env.namespace, "aws-0");
    let orphan = tagged_instance(&env, "aws", "aws-0").await;

    aws_cluster(&env, "aws", machine_spec()).await;
    let machines = env.api(I, "v1alpha1", "AWSWindowsMachine");
    let m = env.wait_ready_reason(&machines, "aws-0", "InstanceRunning", Some(true)).await;
    assert_eq!(
        m.data["spec"]["instanceID"],
        orphan.id.as_str(),
        "the instance of the crashed create is adopted, not duplicated"
    );
    let live: Vec<_> = ec2.find_by_tags(&tags).await.unwrap().into_iter().filter(|i| i.state != "terminated").collect();
    assert_eq!(live.len(), 1, "exactly one instance for the machine");
    let provider_id = format!("aws:///us-east-1c/{}", orphan.id);
    assert_eq!(m.data["spec"]["providerID"], provider_id.as_str());
    assert_eq!(m.data["status"]["initialization"]["provisioned"], true);
    assert_eq!(m.data["status"]["failureDomain"], "us-east-1c");
    assert!(m.data["status"]["addresses"].as_array().unwrap().iter().any(|a| a["type"] == "InternalIP"));

    // The template reports what the autoscaler needs to scale Windows workers from zero.
    let templates = env.api(I, "v1alpha1", "AWSWindowsMachineTemplate");
    let t = env
        .wait("the template's capacity", T, || async {
            let t = templates.get("aws").await?;
            Ok((!t.data["status"]["capacity"].is_null()).then_some(t))
        })
        .await
        .unwrap();
    assert_eq!(t.data["status"]["nodeInfo"]["operatingSystem"], "windows");
    assert_eq!(t.data["status"]["capacity"], json!({"cpu": "4", "memory": "16384Mi"}), "m6i.xlarge");

    // CAPI copies the providerID; the Windows node joins; its token goes.
    env.wait("Machine.spec.providerID", T, || async {
        let mm = env.capi("Machine").get("aws-0").await?;
        Ok((mm.data["spec"]["providerID"] == provider_id.as_str()).then_some(()))
    })
    .await
    .unwrap();
    // Before the join, IMDSv1 stays open: cloudbase-init reads the user data with it.
    let imds = |o: &kube::api::DynamicObject| capwin_e2e::condition(o, "InstanceMetadataLockedDown");
    let before = machines.get("aws-0").await.unwrap();
    assert_eq!(imds(&before).map(|c| (c.0, c.1)), Some(("False".into(), "WaitingForNodeJoin".into())));
    assert_eq!(ec2.describe(&orphan.id).await.unwrap().unwrap().http_tokens.as_deref(), Some("optional"));
    let dns = m.data["status"]["addresses"].as_array().unwrap().iter().find(|a| a["type"] == "InternalDNS").unwrap()["address"].as_str().unwrap().to_string();
    env.join_node("aws", &dns, &provider_id).await.unwrap();
    env.wait("the config to report Joined", T, || async {
        let c = env.configs().get("aws-0").await?;
        let joined = c.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["reason"] == "Joined"));
        Ok(joined.then_some(()))
    })
    .await
    .unwrap();

    // After the join: IMDSv2 only (pods can no longer GET the role's credentials with IMDSv1).
    let locked = || async {
        let o = machines.get("aws-0").await?;
        let tokens = ec2.describe(&orphan.id).await?.and_then(|i| i.http_tokens);
        Ok((imds(&o).is_some_and(|c| c.0 == "True") && tokens.as_deref() == Some("required")).then_some(()))
    };
    env.wait("IMDS locked down after the join", T, locked).await.unwrap();
    // Someone reverts it: the next reconcile locks it down again and says so.
    ec2.allow_imds_v1(&orphan.id).await.unwrap();
    machines
        .patch("aws-0", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})))
        .await
        .unwrap();
    env.wait("IMDS locked down again", T, locked).await.unwrap();
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.mgmt.clone(), &env.namespace);
    let reasons: Vec<String> =
        events.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    assert!(
        reasons.iter().any(|r| r == "InstanceMetadataReverted")
            && !reasons.iter().any(|r| r == "InstanceMetadataLockedDown"),
        "{reasons:?}"
    );

    // Scale to zero: the instance is terminated before the object goes.
    env.capi("MachineDeployment")
        .patch("aws", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}})))
        .await
        .unwrap();
    env.wait("the AWSWindowsMachine to be gone", T, || async {
        Ok(machines.get_opt("aws-0").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(ec2.describe(&orphan.id).await.unwrap().unwrap().state, "terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_a_named_condition_and_no_instance() {
    let _serial = SERIAL.lock().await;
    let env = Env::start_with("awsbad", &["--controllers", "bootstrap,aws"], &[CloudKit::Aws]).await.unwrap();
    let mut spec = machine_spec();
    spec["ami"] = json!({"id": "ami-0000000000000000a"});
    aws_cluster(&env, "awsbad", spec).await;
    let machines = env.api(I, "v1alpha1", "AWSWindowsMachine");
    let m = env.wait_ready_reason(&machines, "awsbad-0", "AMINotFound", None).await;
    assert!(m.data["spec"]["instanceID"].is_null());
    let ec2 = ec2(&env).await;
    assert!(
        ec2.find_by_tags(&model::ownership_tags("awsbad", &env.namespace, "awsbad-0")).await.unwrap().is_empty(),
        "no instance"
    );
    let _ = m.name_any();
}

/// A cluster as the CAPA templates make one: a `Cluster` whose infrastructure is an `AWSCluster`
/// naming `identity`, and a Windows pool whose template carries the cluster-name label (CAPA's
/// template controller finds the cluster through it or an owner reference).
async fn capa_cluster(env: &Env, name: &str, identity: Option<Value>) {
    let mut spec = json!({"region": "us-east-1"});
    if let Some(i) = identity {
        spec["identityRef"] = i;
    }
    env.create(I, "v1beta2", "AWSCluster", json!({"metadata": {"name": name}, "spec": spec})).await.unwrap();
    env.create(
        "cluster.x-k8s.io",
        "v1beta2",
        "Cluster",
        json!({"metadata": {"name": name},
        "spec": {"controlPlaneEndpoint": {"host": "10.0.0.4", "port": 6443},
            "infrastructureRef": {"apiGroup": I, "kind": "AWSCluster", "name": name}}}),
    )
    .await
    .unwrap();
    let label = json!({"cluster.x-k8s.io/cluster-name": name});
    env.create(
        "bootstrap.cluster.x-k8s.io",
        "v1alpha1",
        "WindowsKubeadmConfigTemplate",
        json!({"metadata": {"name": name}, "spec": {"template": {"spec": {}}}}),
    )
    .await
    .unwrap();
    env.create(
        I,
        "v1alpha1",
        "AWSWindowsMachineTemplate",
        json!({"metadata": {"name": name, "labels": label}, "spec": {"template": {"spec": shared_ami_spec()}}}),
    )
    .await
    .unwrap();
    let pool = Pool {
        templates: name,
        md: name,
        cluster: name,
        replicas: 1,
        version: "v1.34.13",
        failure_domain: Some("us-east-1c"),
        infra_kind: "AWSWindowsMachine",
        infra_spec: json!({}),
        config: json!({}),
    };
    env.machine_deployment(&pool).await.unwrap();
}

/// The machine spec with the AMIs shared from the kit's image account (123456789012), so that
/// machines whose credentials live in other accounts find them.
fn shared_ami_spec() -> Value {
    let mut spec = machine_spec();
    spec["ami"] = json!({"lookup": {"owner": "123456789012",
        "namePattern": "capa-ami-windows-{{.WindowsVersion}}-?{{.K8sVersion}}-*"}});
    spec
}

/// Creates a cluster-scoped CAPA identity (replacing a leftover `e2e-*` of an earlier run; on a
/// real cluster an existing `default` controller identity is left as it is).
async fn capa_identity(env: &Env, kind: &str, name: &str, spec: Value) {
    let ar = capwin_aws::identity::resource(kind).unwrap();
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(env.mgmt.clone(), &ar);
    if name == "default" && api.get_opt(name).await.unwrap().is_some() {
        return;
    }
    let _ = api.delete(name, &Default::default()).await;
    let body = json!({"apiVersion": format!("{I}/v1beta2"), "kind": kind, "metadata": {"name": name}, "spec": spec});
    api.create(&Default::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
}

/// EC2 in the account of `arn:aws:iam::<account>:role/...`: moto keeps one EC2 world per account
/// and puts the callers with an assumed role's keys in the role's account.
async fn ec2_in(env: &Env, account: &str) -> SdkEc2 {
    let url = env.kit_url(CloudKit::Aws).unwrap();
    let testing =
        StaticCredentials { access_key_id: "testing".into(), secret_access_key: "testing".into(), session_token: None };
    let role = format!("arn:aws:iam::{account}:role/capwin-e2e-check");
    let keys = capwin_aws::identity::assume_role_keys("us-east-1", Some(url), Some(testing), &role).await.unwrap();
    SdkEc2::new("us-east-1", Some(url), Some(keys)).await
}

/// The live instances with a machine's ownership tags, as `ec2` sees them.
async fn tagged(env: &Env, ec2: &SdkEc2, cluster: &str) -> Vec<String> {
    let tags = model::ownership_tags(cluster, &env.namespace, &format!("{cluster}-0"));
    ec2.find_by_tags(&tags).await.unwrap().into_iter().filter(|i| i.state != "terminated").map(|i| i.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capa_identities_controller_static_role_chained_and_a_namespace_not_allowed() {
    let _serial = SERIAL.lock().await;
    let env = Env::start_with(
        "awsid",
        &["--controllers", "bootstrap,aws", "--aws-identity-namespace", "e2e-awsid"],
        &[CloudKit::Aws],
    )
    .await
    .unwrap();
    let ns = env.namespace.clone();
    let only_here = json!({"list": [ns]});
    let url = env.kit_url(CloudKit::Aws).unwrap().to_string();

    // Static keys that moto places in account 222222222222 (an assumed role's temporary keys,
    // with their session token), in a Secret in the manager's namespace.
    let testing =
        StaticCredentials { access_key_id: "testing".into(), secret_access_key: "testing".into(), session_token: None };
    let keys = capwin_aws::identity::assume_role_keys(
        "us-east-1",
        Some(&url),
        Some(testing),
        "arn:aws:iam::222222222222:role/static-keys",
    )
    .await
    .unwrap();
    let secret_value = keys.secret_access_key.clone();

    capa_identity(&env, "AWSClusterControllerIdentity", "default", json!({"allowedNamespaces": {}})).await;
    capa_identity(
        &env,
        "AWSClusterStaticIdentity",
        "e2e-static",
        json!({"secretRef": "e2e-static-keys", "allowedNamespaces": only_here}),
    )
    .await;
    capa_identity(
        &env,
        "AWSClusterRoleIdentity",
        "e2e-role",
        json!({"roleARN": "arn:aws:iam::333333333333:role/capwin", "sessionName": "capwin-e2e", "durationSeconds": 900,
            "externalID": "e2e", "allowedNamespaces": {"selector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}),
    )
    .await;
    capa_identity(
        &env,
        "AWSClusterRoleIdentity",
        "e2e-chained",
        json!({"roleARN": "arn:aws:iam::444444444444:role/capwin", "allowedNamespaces": only_here,
            "sourceIdentityRef": {"kind": "AWSClusterStaticIdentity", "name": "e2e-static"}}),
    )
    .await;
    capa_identity(
        &env,
        "AWSClusterRoleIdentity",
        "e2e-elsewhere",
        json!({"roleARN": "arn:aws:iam::555555555555:role/capwin", "allowedNamespaces": {"list": ["someone-else"]}}),
    )
    .await;
    // The namespace label the role identity's selector matches (a real API server sets it).
    let nss: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(env.mgmt.clone());
    let label = json!({"metadata": {"labels": {"kubernetes.io/metadata.name": ns}}});
    nss.patch(&ns, &PatchParams::default(), &Patch::Merge(label)).await.unwrap();

    let cases = [
        ("idctl", Some(json!({"kind": "AWSClusterControllerIdentity", "name": "default"})), "123456789012"),
        ("idstatic", Some(json!({"kind": "AWSClusterStaticIdentity", "name": "e2e-static"})), "222222222222"),
        ("idrole", Some(json!({"kind": "AWSClusterRoleIdentity", "name": "e2e-role"})), "333333333333"),
        ("idchain", Some(json!({"kind": "AWSClusterRoleIdentity", "name": "e2e-chained"})), "444444444444"),
    ];
    for (name, identity, _) in &cases {
        capa_cluster(&env, name, identity.clone()).await;
    }
    capa_cluster(&env, "idno", Some(json!({"kind": "AWSClusterRoleIdentity", "name": "e2e-elsewhere"}))).await;

    let machines = env.api(I, "v1alpha1", "AWSWindowsMachine");
    // The static identity's Secret is missing at first: its machine (and the chained one) say so.
    let m = env.wait_ready_reason(&machines, "idstatic-0", "IdentitySecretNotFound", Some(false)).await;
    let msg = capwin_e2e::condition(&m, "Ready").unwrap().2;
    assert!(msg.contains("AWSClusterStaticIdentity e2e-static") && msg.contains("e2e-static-keys"), "{msg}");
    let mut data = json!({"AccessKeyID": keys.access_key_id, "SecretAccessKey": keys.secret_access_key});
    data["SessionToken"] = json!(keys.session_token.clone().unwrap());
    let secret = json!({"metadata": {"name": "e2e-static-keys"}, "stringData": data});
    env.secrets().create(&Default::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    poke(&machines, "idstatic-0", 1).await;
    poke(&machines, "idchain-0", 1).await;

    // Every allowed kind runs its machine, in the account its credentials belong to.
    let default_account = ec2(&env).await;
    for (name, _, account) in &cases {
        let m = env.wait_ready_reason(&machines, &format!("{name}-0"), "InstanceRunning", Some(true)).await;
        let id = m.data["spec"]["instanceID"].as_str().unwrap().to_string();
        let there = ec2_in(&env, account).await;
        assert_eq!(tagged(&env, &there, name).await, vec![id.clone()], "{name}: its instance in account {account}");
        if *account != "123456789012" {
            assert!(tagged(&env, &default_account, name).await.is_empty(), "{name}: nothing in the manager's account");
        }
    }

    // Not allowed: Ready=False naming the identity and the namespace, and no instance anywhere.
    let m = env.wait_ready_reason(&machines, "idno-0", "IdentityNotAllowed", Some(false)).await;
    let msg = capwin_e2e::condition(&m, "Ready").unwrap().2;
    assert!(msg.contains("AWSClusterRoleIdentity e2e-elsewhere") && msg.contains(&format!("namespace {ns}")), "{msg}");
    assert!(m.data["spec"]["instanceID"].is_null());
    assert!(tagged(&env, &default_account, "idno").await.is_empty());
    assert!(tagged(&env, &ec2_in(&env, "555555555555").await, "idno").await.is_empty());

    // Templates look capacity up with their cluster's identity: the role's works, the
    // disallowed one is named.
    let templates = env.api(I, "v1alpha1", "AWSWindowsMachineTemplate");
    let t = env.wait_ready_reason(&templates, "idrole", "CapacityKnown", Some(true)).await;
    assert_eq!(t.data["status"]["capacity"], json!({"cpu": "4", "memory": "16384Mi"}));
    let t = env.wait_ready_reason(&templates, "idno", "IdentityNotAllowed", Some(false)).await;
    assert!(t.data["status"]["capacity"].is_null());

    // Allowing the namespace lets the blocked machine go on.
    let ar = capwin_aws::identity::resource("AWSClusterRoleIdentity").unwrap();
    let roles: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(env.mgmt.clone(), &ar);
    let allow = json!({"spec": {"allowedNamespaces": {"list": ["someone-else", ns]}}});
    roles.patch("e2e-elsewhere", &PatchParams::default(), &Patch::Merge(allow)).await.unwrap();
    poke(&machines, "idno-0", 1).await;
    env.wait_ready_reason(&machines, "idno-0", "InstanceRunning", Some(true)).await;
    assert_eq!(tagged(&env, &ec2_in(&env, "555555555555").await, "idno").await.len(), 1);

    assert!(!env.manager_log().contains(&secret_value), "the static identity's secret never reaches the log");
    for kind in ["AWSClusterStaticIdentity", "AWSClusterRoleIdentity"] {
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::all_with(env.mgmt.clone(), &capwin_aws::identity::resource(kind).unwrap());
        for o in api.list(&Default::default()).await.unwrap() {
            if o.name_any().starts_with("e2e-") {
                let _ = api.delete(&o.name_any(), &Default::default()).await;
            }
        }
    }
}

/// Makes the controller look at a machine now (identities are not watched; blocked machines
/// look again on their own within 20–30 s).
async fn poke(machines: &kube::Api<kube::api::DynamicObject>, name: &str, n: u32) {
    let p = json!({"metadata": {"annotations": {"e2e-poke": n.to_string()}}});
    machines.patch(name, &PatchParams::default(), &Patch::Merge(p)).await.unwrap();
}

/// Per-Action counts of one proxy stats section (`requests`, `injected`, `forwarded`).
fn section(stats: &Value, key: &str) -> BTreeMap<String, u64> {
    stats[key]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

fn minus(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
}

fn total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

fn of(m: &BTreeMap<String, u64>, action: &str) -> u64 {
    m.get(action).copied().unwrap_or(0)
}

/// The manager's `/metrics`.
fn scrape(addr: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .unwrap();
    assert!(out.status.success(), "scraping {addr}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Sum of a counter family's samples whose labels contain every `label="value"` given, by the
/// value of `by` (e.g. `capwin_aws_ec2_calls_total` by `operation`).
fn metric(text: &str, name: &str, by: &str, having: &[&str]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
        let (labels, value) = line.rsplit_once(' ').unwrap();
        if !having.iter().all(|h| labels.contains(h)) {
            continue;
        }
        let key = labels.split(&format!("{by}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or_default();
        *out.entry(key.to_string()).or_insert(0) += value.parse::<f64>().unwrap() as u64;
    }
    out
}

async fn live_instances(env: &Env, cluster: &str, machine: &str) -> Vec<model::Instance> {
    let tags = model::ownership_tags(cluster, &env.namespace, machine);
    ec2(env).await.find_by_tags(&tags).await.unwrap().into_iter().filter(|i| i.state != "terminated").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_survived_with_one_instance_and_no_hot_loop() {
    let _serial = SERIAL.lock().await;
    let metrics_addr = format!("127.0.0.1:{}", capwin_e2e::free_port());
    let env = Env::start_with(
        "awsthr",
        &["--controllers", "bootstrap,aws", "--metrics-bind-address", &metrics_addr],
        &[CloudKit::AwsThrottled],
    )
    .await
    .unwrap();
    // Armed before any machine exists. RunInstances fails more often than the SDK tries (5
    // attempts), so one reconcile gives up and the controller's own requeue has to recover;
    // every rule is "before": moto never sees a failed call (moto ignores ClientToken, so a
    // call that took effect and was then retried would duplicate the instance in moto, not EC2).
    let faults = [
        ("RunInstances", 6, "RequestLimitExceeded", 503),
        ("DescribeInstances", 4, "RequestLimitExceeded", 503),
        ("DescribeImages", 2, "InternalError", 500),
        ("DescribeSubnets", 1, "Unavailable", 503),
    ];
    for (action, times, code, status) in faults {
        env.aws_proxy("arm", Some(json!({"action": action, "times": times, "code": code, "status": status}))).unwrap();
    }
    let started = Instant::now();
    aws_cluster(&env, "awsthr", machine_spec()).await;
    let machines = env.api(I, "v1alpha1", "AWSWindowsMachine");
    let m = env
        .wait("awsthr-0 running despite the faults", Duration::from_secs(180), || async {
            let m = machines.get_opt("awsthr-0").await?;
            Ok(m.filter(|m| {
                capwin_e2e::condition(m, "Ready").is_some_and(|(s, r, _)| s == "True" && r == "InstanceRunning")
            }))
        })
        .await
        .unwrap();
    let took = started.elapsed();

    let live = live_instances(&env, "awsthr", "awsthr-0").await;
    assert_eq!(live.len(), 1, "exactly one instance for the machine: {live:?}");
    assert_eq!(live[0].state, "running");
    assert_eq!(m.data["spec"]["instanceID"], live[0].id.as_str());
    assert_eq!(m.data["spec"]["providerID"], format!("aws:///us-east-1c/{}", live[0].id).as_str());

    // Every injected fault was hit: the test exercised what it claims to.
    let stats = env.aws_proxy("stats", None).unwrap();
    let (requests, injected, forwarded) =
        (section(&stats, "requests"), section(&stats, "injected"), section(&stats, "forwarded"));
    eprintln!(
        "throttling: Ready after {took:?}; requests {requests:?}; injected {injected:?}; forwarded {forwarded:?}"
    );
    for (action, times, _, _) in faults {
        assert_eq!(of(&injected, action), times, "{action}: every armed fault was used: {stats}");
    }
    assert_eq!(stats["rules"], json!([]), "no rule left armed");
    assert_eq!(of(&forwarded, "RunInstances"), 1, "exactly one RunInstances reached EC2");
    // RunInstances is never retried by the SDK: capwin tried again itself, each time after a
    // look-up by the machine's tags (6 throttled attempts, then the one that reached EC2).
    assert_eq!(of(&requests, "RunInstances"), 7, "{requests:?}");
    assert!(of(&requests, "DescribeInstances") >= 7, "a tag look-up before every attempt: {requests:?}");
    let text = scrape(&metrics_addr);
    let calls = metric(&text, "capwin_aws_ec2_calls_total", "operation", &["result=\"throttled\""]);
    assert!(of(&calls, "RunInstances") >= 6, "the controller saw the throttling: {calls:?}\n{text}");
    // No hot loop: 13 injected faults and a create take a bounded number of requests.
    assert!(total(&requests) <= 60, "requests until Ready: {requests:?}");
    assert!(total(&forwarded) <= 30, "forwarded until Ready: {forwarded:?}");

    // And once running, it stays quiet.
    let before = section(&env.aws_proxy("stats", None).unwrap(), "requests");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let quiet = minus(&section(&env.aws_proxy("stats", None).unwrap(), "requests"), &before);
    eprintln!("throttling: 20 s after Ready: {quiet:?}");
    assert!(total(&quiet) <= 6, "a running machine makes few EC2 calls: {quiet:?}");
    assert_eq!(live_instances(&env, "awsthr", "awsthr-0").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_calls_per_machine_lifecycle_and_at_steady_state() {
    let _serial = SERIAL.lock().await;
    let metrics_addr = format!("127.0.0.1:{}", capwin_e2e::free_port());
    let env = Env::start_with(
        "awscalls",
        &["--controllers", "bootstrap,aws", "--metrics-bind-address", &metrics_addr],
        &[CloudKit::AwsThrottled],
    )
    .await
    .unwrap();
    let requests = || section(&env.aws_proxy("stats", None).unwrap(), "requests");
    // Longer than the console-read interval (60 s), so the cadence itself is measured.
    const BOOT_WINDOW: Duration = Duration::from_secs(70);
    const WINDOW: Duration = Duration::from_secs(30);
    let per_minute = |m: &BTreeMap<String, u64>, d: Duration| total(m) as f64 * 60.0 / d.as_secs_f64();

    // Create: objects to a running instance.
    aws_cluster(&env, "awscalls", machine_spec()).await;
    let machines = env.api(I, "v1alpha1", "AWSWindowsMachine");
    let m = env.wait_ready_reason(&machines, "awscalls-0", "InstanceRunning", Some(true)).await;
    let ready_at = Instant::now();
    let create = requests();
    eprintln!("EC2 calls, create -> running: {create:?} (total {})", total(&create));

    // Steady state while the Windows node bootstraps (no Node yet): the console is read once a
    // minute (the first read was at Ready, before this window).
    assert_eq!(of(&create, "GetConsoleOutput"), 1, "{create:?}");
    tokio::time::sleep(BOOT_WINDOW).await;
    let after_boot = requests();
    let booting = minus(&after_boot, &create);
    eprintln!(
        "EC2 calls, {BOOT_WINDOW:?} running without a Node: {booting:?} ({:.1}/min)",
        per_minute(&booting, BOOT_WINDOW)
    );
    assert_eq!(of(&booting, "GetConsoleOutput"), 1, "read again after a minute, not more: {booting:?}");
    let m2 = machines.get("awscalls-0").await.unwrap();
    // moto's console is fixed Linux text without our records: no condition, nothing broken.
    assert!(capwin_e2e::condition(&m2, "NodeBootstrap").is_none(), "{}", m2.data["status"]);
    assert_eq!(capwin_e2e::condition(&m2, "Ready").unwrap().1, "InstanceRunning");
    let allowed = 1 + ready_at.elapsed().as_secs() / 60;
    assert!(of(&after_boot, "GetConsoleOutput") <= allowed, "at most once a minute: {after_boot:?}");

    // The node joins: NodeBootstrap says so, and the console is no longer read.
    let provider_id = m.data["spec"]["providerID"].as_str().unwrap().to_string();
    let dns = m.data["status"]["addresses"].as_array().unwrap().iter().find(|a| a["type"] == "InternalDNS").unwrap()
        ["address"]
        .as_str()
        .unwrap()
        .to_string();
    env.join_node("awscalls", &dns, &provider_id).await.unwrap();
    env.wait("NodeBootstrap NodeJoined", T, || async {
        let m = machines.get("awscalls-0").await?;
        Ok(capwin_e2e::condition(&m, "NodeBootstrap").filter(|(s, r, _)| s == "True" && r == "NodeJoined"))
    })
    .await
    .unwrap();
    let joined_at = requests();
    tokio::time::sleep(WINDOW).await;
    let after_join = requests();
    let joined = minus(&after_join, &joined_at);
    eprintln!("EC2 calls, {WINDOW:?} with the Node joined: {joined:?} ({:.1}/min)", per_minute(&joined, WINDOW));
    assert_eq!(of(&joined, "GetConsoleOutput"), 0, "no console reads once the Node exists");

    // Delete: scale to zero; terminated before the object goes.
    env.capi("MachineDeployment")
        .patch("awscalls", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}})))
        .await
        .unwrap();
    env.wait("the AWSWindowsMachine to be gone", T, || async {
        Ok(machines.get_opt("awscalls-0").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    let end = requests();
    let delete = minus(&end, &after_join);
    eprintln!("EC2 calls, delete -> terminated: {delete:?} (total {})", total(&delete));
    eprintln!("EC2 calls, whole lifecycle: {end:?} (total {})", total(&end));
    assert!(live_instances(&env, "awscalls", "awscalls-0").await.is_empty());

    // Budgets (generous enough for timing, tight enough to catch a loop or a repeated create).
    assert_eq!(of(&create, "RunInstances"), 1, "{create:?}");
    for once in ["DescribeImages", "DescribeSubnets", "DescribeSecurityGroups"] {
        assert_eq!(of(&create, once), 1, "{once} once per create: {create:?}");
    }
    assert!(of(&create, "DescribeInstances") <= 6, "{create:?}");
    assert!(total(&create) <= 12, "create: {create:?}");
    assert!(total(&booting) <= 4, "while booting: {booting:?}");
    assert!(total(&joined) <= 2, "with the Node joined: {joined:?}");
    assert_eq!(of(&delete, "TerminateInstances"), 1, "{delete:?}");
    assert_eq!(of(&end, "RunInstances"), 1);
    assert!(total(&delete) <= 8, "delete: {delete:?}");

    // The manager's own counters agree with what the proxy saw (no faults: one request per call).
    let text = scrape(&metrics_addr);
    let calls = metric(&text, "capwin_aws_ec2_calls_total", "operation", &[]);
    eprintln!("capwin_aws_ec2_calls_total by operation: {calls:?}");
    assert_eq!(calls, end, "metrics vs proxy\n{text}");
    let reconciles = metric(&text, "capwin_aws_reconciles_total", "result", &[]);
    eprintln!("capwin_aws_reconciles_total by result: {reconciles:?}");
    assert!(of(&reconciles, "ok") >= 3, "{reconciles:?}");
}

/// The infrastructure Deployment runs the aws controller with `AWS_REGION` from a clusterctl
/// variable that is empty by default: the manager must stay up and say why, not crash-loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_region_machines_wait_with_a_named_condition_and_the_manager_stays_up() {
    let _serial = SERIAL.lock().await;
    // An empty flag counts as unset, whatever AWS_REGION this test process inherited.
    let env =
        Env::start_with("awsnoregion", &["--controllers", "bootstrap,aws", "--aws-region", ""], &[]).await.unwrap();
    aws_cluster(&env, "awsnoregion", machine_spec()).await;
    let machines = env.api(I, "v1alpha1", "AWSWindowsMachine");
    let m = env.wait_ready_reason(&machines, "awsnoregion-0", "RegionNotSet", Some(false)).await;
    assert!(capwin_e2e::condition(&m, "Ready").unwrap().2.contains("AWS_REGION"));
    assert!(m.data["spec"]["instanceID"].is_null());
    let templates = env.api(I, "v1alpha1", "AWSWindowsMachineTemplate");
    env.wait_ready_reason(&templates, "awsnoregion", "RegionNotSet", Some(false)).await;
    let log = env.manager_log();
    assert!(log.contains("aws controller started"), "{log}");
    assert!(!log.contains("stopped unexpectedly") && !log.contains("needs a region"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_terminated_outside_capwin_is_reported_never_replaced() {
    let _serial = SERIAL.lock().await;
    let env = Env::start_with("awsgone", &["--controllers", "bootstrap,aws"], &[CloudKit::Aws]).await.unwrap();
    aws_cluster(&env, "awsgone", machine_spec()).await;
    let machines = env.api(I, "v1alpha1", "AWSWindowsMachine");
    let m = env.wait_ready_reason(&machines, "awsgone-0", "InstanceRunning", Some(true)).await;
    let id = m.data["spec"]["instanceID"].as_str().unwrap().to_string();
    ec2(&env).await.terminate(&id).await.unwrap();
    // The machine is woken by its own requeue (300 s when running) or by any change; nudge it
    // with an annotation, as an operator's `kubectl annotate` would.
    machines
        .patch(
            "awsgone-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"e2e/nudge": "1"}}})),
        )
        .await
        .unwrap();
    let m = env.wait_ready_reason(&machines, "awsgone-0", "InstanceTerminated", Some(false)).await;
    let (_, _, message) = capwin_e2e::condition(&m, "Ready").unwrap();
    assert!(message.contains(&id) && message.contains("not recreated"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(live_instances(&env, "awsgone", "awsgone-0").await.is_empty(), "no replacement instance");
    assert_eq!(machines.get("awsgone-0").await.unwrap().data["spec"]["instanceID"], id.as_str(), "the record stays");
}

/// An instance with a machine's ownership tags, made outside the controller (as a manager that
/// died mid-create, or a lost RunInstances answer, leaves one).
async fn tagged_instance(env: &Env, cluster: &str, machine: &str) -> model::Instance {
    let ec2 = ec2(env).await;
    let image = ec2.find_images(model::DEFAULT_AMI_OWNER, "capa-ami-windows-2025-v1.34.13-*").await.unwrap();
    let subnet = ec2.subnets(&[], &[("availability-zone".into(), vec!["us-east-1c".into()])]).await.unwrap();
    ec2.run(&LaunchSpec {
        image_id: model::newest(image).unwrap().id,
        instance_type: "m6i.xlarge".into(),
        subnet_id: subnet[0].0.clone(),
        user_data: model::encode_user_data(b"#cloud-config\n").unwrap(),
        client_token: format!("stray-{machine}-{}", capwin_e2e::free_port()),
        tags: model::ownership_tags(cluster, &env.namespace, machine),
        root_device_name: "/dev/sda1".into(),
        root_volume_gib: 128,
        root_volume_type: "gp3".into(),
        root_volume_encrypted: true,
        http_tokens: "optional".into(),
        hop_limit: 1,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Lost RunInstances answers (EC2 made the instance, the manager saw the connection drop) and
/// duplicates left by earlier lives: every machine ends with exactly one instance, and deleting
/// the machines leaves none running (issue 14, "no stranded machines"; moto ignores ClientToken,
/// so only capwin's own tag look-up and sweep can make this hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_and_duplicates_leave_one_instance_per_machine_and_none_after_delete() {
    let _serial = SERIAL.lock().await;
    let env = Env::start_with("awslost", &["--controllers", "bootstrap,aws"], &[CloudKit::AwsThrottled]).await.unwrap();
    // Two instances from an earlier life of machine awslost-0.
    let first = tagged_instance(&env, "awslost", "awslost-0").await;
    let second = tagged_instance(&env, "awslost", "awslost-0").await;
    // The next two RunInstances take effect, and their answers are lost.
    env.aws_proxy("arm", Some(json!({"action": "RunInstances", "times": 2, "when": "after", "drop": true}))).unwrap();
    env.create(
        "cluster.x-k8s.io",
        "v1beta2",
        "Cluster",
        json!({"metadata": {"name": "awslost"}, "spec": {"controlPlaneEndpoint": {"host": "10.0.0.4", "port": 6443}}}),
    )
    .await
    .unwrap();
    let pool = Pool {
        templates: "awslost",
        md: "awslost",
        cluster: "awslost",
        replicas: 3,
        version: "v1.34.13",
        failure_domain: Some("us-east-1c"),
        infra_kind: "AWSWindowsMachine",
        infra_spec: machine_spec(),
        config: json!({}),
    };
    env.windows_pool(pool).await.unwrap();
    let machines = env.api(I, "v1alpha1", "AWSWindowsMachine");
    for name in ["awslost-0", "awslost-1", "awslost-2"] {
        env.wait_ready_reason(&machines, name, "InstanceRunning", Some(true)).await;
    }
    let stats = env.aws_proxy("stats", None).unwrap();
    assert_eq!(of(&section(&stats, "injected"), "RunInstances"), 2, "both lost answers were used: {stats}");
    assert_eq!(
        of(&section(&stats, "forwarded"), "RunInstances"),
        2,
        "each lost answer's instance was adopted, never launched again: {stats}"
    );
    for name in ["awslost-0", "awslost-1", "awslost-2"] {
        let recorded = machines.get(name).await.unwrap().data["spec"]["instanceID"].as_str().unwrap().to_string();
        let live = env
            .wait(&format!("{name}: one live instance"), T, || async {
                let live: Vec<_> = live_instances(&env, "awslost", name)
                    .await
                    .into_iter()
                    .filter(|i| i.state != "shutting-down")
                    .collect();
                Ok((live.len() == 1).then_some(live))
            })
            .await
            .unwrap();
        assert_eq!(live[0].id, recorded, "{name}: the recorded instance is the one kept");
    }
    let kept = machines.get("awslost-0").await.unwrap().data["spec"]["instanceID"].as_str().unwrap().to_string();
    assert!(kept == first.id || kept == second.id, "awslost-0 adopted one of its earlier instances");
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.mgmt.clone(), &env.namespace);
    let notes: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("DuplicateInstanceTerminated"))
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");

    // A late stray with awslost-1's tags: deletion terminates it with the recorded one.
    let stray = tagged_instance(&env, "awslost", "awslost-1").await;
    env.capi("MachineDeployment")
        .patch("awslost", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}})))
        .await
        .unwrap();
    env.wait("every AWSWindowsMachine to be gone", Duration::from_secs(120), || async {
        let left = machines.list(&Default::default()).await?.items.len();
        Ok((left == 0).then_some(()))
    })
    .await
    .unwrap();
    for name in ["awslost-0", "awslost-1", "awslost-2"] {
        let live = live_instances(&env, "awslost", name).await;
        assert!(live.iter().all(|i| i.state == "shutting-down"), "{name}: instances left running: {live:?}");
    }
    let s = ec2(&env).await.describe(&stray.id).await.unwrap().unwrap();
    assert!(matches!(s.state.as_str(), "terminated" | "shutting-down"), "the stray was terminated: {}", s.state);
}
