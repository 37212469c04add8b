//! AWS Windows machines against moto: creation to running to a joined Node to termination, a
//! manager that died mid-create, and bad input.

use std::time::Duration;

use capwin_aws::ec2::{Ec2, LaunchSpec, SdkEc2, StaticCredentials};
use capwin_aws::model;
use capwin_e2e::{CloudKit, Env};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
/// One moto at a time: concurrent moto starts on two cores make first calls slow.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const B: &str = "bootstrap.cluster.x-k8s.io";
const I: &str = "infrastructure.cluster.x-k8s.io";

async fn ec2(env: &Env) -> SdkEc2 {
    let creds =
        StaticCredentials { access_key_id: "testing".into(), secret_access_key: "testing".into(), session_token: None };
    SdkEc2::new("us-east-1", env.manager_env("AWS_ENDPOINT_URL"), Some(creds)).await
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
    env.create(
        B,
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
        json!({"metadata": {"name": name}, "spec": {"template": {"spec": machine_spec}}}),
    )
    .await
    .unwrap();
    env.create(
        "cluster.x-k8s.io",
        "v1beta2",
        "MachineDeployment",
        json!({"metadata": {"name": name},
        "spec": {"clusterName": name, "replicas": 1, "selector": {"matchLabels": {}},
            "template": {"spec": {"clusterName": name, "version": "v1.34.13", "failureDomain": "us-east-1c",
                "bootstrap": {"configRef": {"apiGroup": B, "kind": "WindowsKubeadmConfigTemplate", "name": name}},
                "infrastructureRef": {"apiGroup": I, "kind": "AWSWindowsMachineTemplate", "name": name}}}}}),
    )
    .await
    .unwrap();
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
    let image = ec2.find_images(model::DEFAULT_AMI_OWNER, "capwin-ami-windows-2025-v1.34.13-*").await.unwrap();
    let subnet = ec2.subnets(&[], &[("availability-zone".into(), vec!["us-east-1c".into()])]).await.unwrap();
    let orphan = ec2
        .run(&LaunchSpec {
            image_id: model::newest(image).unwrap().id,
            instance_type: "m6i.xlarge".into(),
            subnet_id: subnet[0].0.clone(),
            user_data: model::encode_user_data(b"#cloud-config\n").unwrap(),
            client_token: "crashed".into(),
            tags: tags.clone(),
            root_device_name: "/dev/sda1".into(),
            root_volume_gib: 128,
            root_volume_type: "gp3".into(),
            root_volume_encrypted: true,
            http_tokens: "optional".into(),
            hop_limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_secrets_only_for_the_namespaces_they_name() {
    let _serial = SERIAL.lock().await;
    let env = Env::start_with(
        "awsid",
        &["--controllers", "bootstrap,aws", "--aws-identity-namespace", "e2e-awsid"],
        &[CloudKit::Aws],
    )
    .await
    .unwrap();
    let secret_value = "s3cr3t-capwin-identity-value";
    let identity = json!({"metadata": {"name": "team-aws", "annotations": {"capwin.cluster.x-k8s.io/allowed-namespaces": "someone-else"}},
        "stringData": {"AccessKeyID": "AKIACAPWINTEST", "SecretAccessKey": secret_value}});
    env.secrets().create(&Default::default(), &serde_json::from_value(identity).unwrap()).await.unwrap();
    let mut spec = machine_spec();
    spec["identityRef"] = json!({"secretName": "team-aws"});
    aws_cluster(&env, "awsid", spec).await;
    let machines = env.api(I, "v1alpha1", "AWSWindowsMachine");
    env.wait_ready_reason(&machines, "awsid-0", "IdentityNotAllowed", None).await;
    let ec2 = ec2(&env).await;
    let tags = model::ownership_tags("awsid", &env.namespace, "awsid-0");
    assert!(ec2.find_by_tags(&tags).await.unwrap().is_empty(), "no instance with a disallowed identity");

    // Allowed now: the machine is created with the identity's credentials.
    let allow =
        json!({"metadata": {"annotations": {"capwin.cluster.x-k8s.io/allowed-namespaces": "someone-else, e2e-awsid"}}});
    env.secrets().patch("team-aws", &PatchParams::default(), &Patch::Merge(allow)).await.unwrap();
    env.wait_ready_reason(&machines, "awsid-0", "InstanceRunning", Some(true)).await;
    assert!(!env.manager_log().contains(secret_value), "the identity's secret never reaches the log");
}
