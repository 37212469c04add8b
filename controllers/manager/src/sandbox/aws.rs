//! AWS in the sandbox: a moto EC2 server (`test/kit/aws/moto.sh`), seeded with what CAPA and
//! `clusterawsadm` would have made, and capwin's real `AWSWindowsMachine` controller against it.
//!
//! Real: every EC2 call of the controller (AMI look-up, subnet, `RunInstances`, describe) goes to
//! moto, and the instance IDs and states the sandbox prints come from moto. Simulated (and
//! labelled so): CAPA's `AWSCluster` controller, whose network the sandbox creates in moto itself
//! and writes into the `AWSCluster` as CAPA would; and CAPI core copying the `AWSCluster`'s
//! endpoint into the `Cluster`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use capwin_aws::ec2::{Ec2, SdkEc2, StaticCredentials};
use capwin_aws::sandbox::Network;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::sandbox::InstanceView;

/// The infrastructure machine kind this cloud serves.
pub const MACHINE_KIND: &str = "AWSWindowsMachine";
/// The moto kit script, in the checkout the binary was built from.
const MOTO_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test/kit/aws/moto.sh");

pub(crate) fn moto_sh() -> PathBuf {
    Path::new(MOTO_SH).canonicalize().unwrap_or_else(|_| MOTO_SH.into())
}

/// CAPA's `AWSCluster` (v1beta2, CAPA v2.11).
pub fn aws_cluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("infrastructure.cluster.x-k8s.io", "v1beta2", "AWSCluster"),
        "awsclusters",
    )
}

fn aws_machine_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("infrastructure.cluster.x-k8s.io", capwin_api::API_VERSION, MACHINE_KIND),
        "awswindowsmachines",
    )
}

/// The region the objects ask for: the first `AWSCluster`'s `spec.region`.
pub fn region_of(objects: &[Value]) -> Option<String> {
    objects
        .iter()
        .filter(|o| o["kind"] == "AWSCluster")
        .find_map(|o| o["spec"]["region"].as_str().filter(|r| !r.is_empty()).map(String::from))
}

/// Every string value of a field named `key`, anywhere in the objects (e.g. each
/// `iamInstanceProfile` of every machine template), so the sandbox seeds exactly those.
pub fn values_of(objects: &[Value], key: &str) -> BTreeSet<String> {
    fn walk(v: &Value, key: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match v.as_str() {
                        Some(s) if k == key && !s.is_empty() => {
                            out.insert(s.to_string());
                        }
                        _ => walk(v, key, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, key, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    objects.iter().for_each(|o| walk(o, key, &mut out));
    out
}

/// The API server endpoint CAPA would publish: its load balancer's DNS name, port 6443.
pub fn control_plane_endpoint(cluster: &str, region: &str) -> (String, u16) {
    (format!("{cluster}-apiserver-0123456789.{region}.elb.amazonaws.com"), 6443)
}

/// What CAPA writes into an `AWSCluster` once the network exists: the subnets, the VPC and the
/// endpoint in `spec` (merge patch: the template's `cni` rules stay), the node security group,
/// the failure domain and `ready` in `status`. CAPA v2.11's `AWSCluster` reports readiness as
/// `status.ready` (it has no `status.initialization` yet; the schema would prune it).
pub fn capa_patches(cluster: &str, region: &str, network: &Network) -> (Value, Value) {
    let subnets: Vec<Value> = network
        .subnets
        .iter()
        .map(|s| {
            let role = if s.is_public { "public" } else { "private" };
            json!({
                "id": format!("{cluster}-subnet-{role}-{}", s.availability_zone),
                "resourceID": s.id,
                "availabilityZone": s.availability_zone,
                "cidrBlock": s.cidr_block,
                "isPublic": s.is_public,
            })
        })
        .collect();
    let (host, port) = control_plane_endpoint(cluster, region);
    let spec = json!({"spec": {
        "network": {"vpc": {"id": network.vpc_id, "cidrBlock": network.vpc_cidr}, "subnets": subnets},
        "controlPlaneEndpoint": {"host": host, "port": port},
    }});
    let zones: BTreeMap<String, Value> = network
        .subnets
        .iter()
        .filter(|s| !s.is_public)
        .map(|s| (s.availability_zone.clone(), json!({"controlPlane": true})))
        .collect();
    let (sg_id, sg_name) = &network.node_security_group;
    let status = json!({"status": {
        "ready": true,
        "networkStatus": {"securityGroups": {"node": {"id": sg_id, "name": sg_name}}},
        "failureDomains": zones,
    }});
    (spec, status)
}

/// moto, started through the kit script with its state under the sandbox's output folder, and
/// stopped (that recorded PID only) when this is dropped: on success, error or Ctrl-C alike.
pub struct Moto {
    state: PathBuf,
    pub url: String,
}

impl Moto {
    pub async fn start(state: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            moto_sh().is_file(),
            "the sandbox runs from a capwin checkout: {} is missing",
            moto_sh().display()
        );
        std::fs::create_dir_all(state)?;
        // The guard exists before the start, so a start interrupted half-way is still stopped.
        let mut moto = Self { state: state.to_path_buf(), url: String::new() };
        let out = moto.script(&["start"]).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
            anyhow::bail!(
                "could not start moto, the local EC2 endpoint of the sandbox ({} start):\n  {}\n\
                 The sandbox needs python3 (3.11 or newer) with the venv and pip modules (Debian/Ubuntu: \
                 apt-get install python3-venv python3-pip), and PyPI the first time: it installs moto into \
                 ~/.cache/capwin/venv/moto (CAPWIN_VENV_DIR). See test/kit/aws/README.md. The server log is \
                 {}/moto.log.",
                moto_sh().display(),
                tail.join("\n  "),
                state.display()
            );
        }
        moto.url = String::from_utf8(out.stdout)?.lines().last().unwrap_or_default().trim().to_string();
        anyhow::ensure!(moto.url.starts_with("http://"), "moto.sh start printed no URL");
        // A server left by an interrupted earlier run in this folder is reused: start clean.
        let reset = moto.script(&["reset"]).await?;
        anyhow::ensure!(reset.status.success(), "moto.sh reset: {}", String::from_utf8_lossy(&reset.stderr));
        Ok(moto)
    }

    async fn script(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        tokio::process::Command::new(moto_sh())
            .args(args)
            .env("CAPWIN_KIT_STATE", &self.state)
            .output()
            .await
            .with_context(|| format!("running {}", moto_sh().display()))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = std::process::Command::new(moto_sh()).arg("stop").env("CAPWIN_KIT_STATE", &self.state).output();
    }
}

/// The AWS cloud of one sandbox run.
pub struct AwsCloud {
    pub moto: Moto,
    pub region: String,
    /// The sandbox's own EC2 client, to show what EC2 says (its calls are not the controller's).
    observer: SdkEc2,
    /// `AWSCluster`s whose network exists in moto.
    networks: BTreeMap<String, Network>,
}

/// (simulated CAPA) What CAPA's `AutoControllerIdentityCreator` (on by default) does: the
/// `default` `AWSClusterControllerIdentity`, usable from every namespace, once an `AWSCluster`
/// names it. capwin then uses its own credentials (moto's test keys) for those clusters.
async fn ensure_controller_identity(mgmt: &Client, say: &dyn Fn(String)) -> anyhow::Result<()> {
    use capwin_aws::identity::{CONTROLLER_KIND, CONTROLLER_NAME, resource};
    let ar = resource(CONTROLLER_KIND).context("the controller identity kind")?;
    let api: Api<DynamicObject> = Api::all_with(mgmt.clone(), &ar);
    if api.get_opt(CONTROLLER_NAME).await?.is_some() {
        return Ok(());
    }
    let body = json!({"apiVersion": ar.api_version, "kind": CONTROLLER_KIND,
        "metadata": {"name": CONTROLLER_NAME}, "spec": {"allowedNamespaces": {}}});
    api.create(&Default::default(), &serde_json::from_value(body)?).await?;
    say(format!("(simulated CAPA) {CONTROLLER_KIND} {CONTROLLER_NAME}: created, usable from every namespace"));
    Ok(())
}

impl AwsCloud {
    /// Starts moto and points this process's AWS SDK configuration at it, before anything else
    /// runs, so the controller is built exactly as `capwin manager` builds it (the standard
    /// `AWS_ENDPOINT_URL` override, credentials from the environment).
    pub async fn start(state: &Path, region: &str) -> anyhow::Result<Self> {
        let moto = Moto::start(state).await?;
        // SAFETY: the sandbox calls this before it starts the API servers and controllers; the
        // only task of its own already running waits for Ctrl-C and reads no environment, so
        // nothing reads the environment concurrently. (`capwin_aws::reconcile::Context::new`
        // takes its endpoint and credentials from the environment, as in `capwin manager`.)
        unsafe {
            std::env::set_var("AWS_ENDPOINT_URL", &moto.url);
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
            std::env::remove_var("AWS_SESSION_TOKEN");
            std::env::remove_var("AWS_PROFILE");
        }
        let creds = StaticCredentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        };
        let observer = SdkEc2::new(region, Some(&moto.url), Some(creds)).await;
        Ok(Self { moto, region: region.to_string(), observer, networks: BTreeMap::new() })
    }

    /// What a user would have made before applying the template: the IAM instance profiles
    /// (`clusterawsadm bootstrap iam`) and SSH key pairs the objects name.
    pub async fn seed_account(&self, objects: &[Value], say: &dyn Fn(String)) -> anyhow::Result<()> {
        for profile in values_of(objects, "iamInstanceProfile") {
            capwin_aws::sandbox::seed_instance_profile(&self.moto.url, &self.region, &profile).await?;
            say(format!("(simulated clusterawsadm) IAM instance profile {profile} created in moto"));
        }
        for key in values_of(objects, "sshKeyName") {
            capwin_aws::sandbox::seed_key_pair(&self.moto.url, &self.region, &key).await?;
            say(format!("EC2 key pair {key} created in moto"));
        }
        Ok(())
    }

    /// The real `AWSWindowsMachine` controller, in-process.
    pub async fn start_controller(&self, mgmt: Client, ns: &str) -> tokio::task::JoinHandle<()> {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = capwin_aws::metrics::register(&mut registry);
        let ctx = capwin_aws::reconcile::Context::new(
            mgmt,
            Some(self.region.clone()),
            Some(ns.to_string()),
            ns.to_string(),
            metrics,
        )
        .await;
        let queue = capwin_runtime::QueueMetrics::register(&mut registry);
        let settings = capwin_infra::watch::RunSettings::new(Some(ns.to_string()));
        tokio::spawn(capwin_aws::reconcile::run(ctx, queue, settings))
    }

    /// Instances of `cluster` (by capwin's ownership tag) that are not terminated.
    pub async fn live_instances(&self, cluster: &str) -> anyhow::Result<usize> {
        let tag = (format!("{}/cluster/{cluster}", capwin_aws::model::TAG_PREFIX), "owned".to_string());
        Ok(self.observer.find_by_tags(&[tag]).await?.iter().filter(|i| i.state != "terminated").count())
    }

    /// (simulated CAPA) Makes each new `AWSCluster`'s network in moto and reports it as CAPA
    /// would; (simulated CAPI core) copies the endpoint into the `Cluster`s that use it.
    pub async fn step(&mut self, mgmt: &Client, ns: &str, say: &dyn Fn(String)) -> anyhow::Result<()> {
        let api: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), ns, &aws_cluster_resource());
        let clusters = api.list(&ListParams::default()).await?;
        if clusters.iter().any(|ac| ac.data["spec"]["identityRef"]["kind"] == capwin_aws::identity::CONTROLLER_KIND) {
            ensure_controller_identity(mgmt, say).await?;
        }
        for ac in clusters {
            let name = ac.name_any();
            if ac.data["status"]["ready"] == true || self.networks.contains_key(&name) {
                continue;
            }
            let az = format!("{}a", self.region);
            let network = capwin_aws::sandbox::seed_network(&self.moto.url, &self.region, &name, &az).await?;
            let (spec, status) = capa_patches(&name, &self.region, &network);
            api.patch(&name, &PatchParams::default(), &Patch::Merge(spec)).await?;
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
            let private = network.subnets.iter().find(|s| !s.is_public).map(|s| s.id.as_str()).unwrap_or("-");
            say(format!(
                "(simulated CAPA) AWSCluster {name}: made in moto VPC {}, private subnet {private} ({az}), node security group {}; ready",
                network.vpc_id, network.node_security_group.0
            ));
            self.networks.insert(name, network);
        }
        crate::sandbox::copy_endpoint(mgmt, ns, "AWSCluster", &aws_cluster_resource(), say).await
    }

    /// The machine's instance as EC2 (moto) reports it, or what the controller waits for.
    pub async fn describe_machine(&self, mgmt: &Client, ns: &str, name: &str) -> anyhow::Result<InstanceView> {
        let api: Api<DynamicObject> = Api::namespaced_with(mgmt.clone(), ns, &aws_machine_resource());
        let Some(m) = api.get_opt(name).await? else {
            return Ok(InstanceView { reason: "NotCreated".into(), ..InstanceView::default() });
        };
        let reason = crate::sandbox::ready_reason(&m);
        let Some(id) = m.data["spec"]["instanceID"].as_str() else {
            return Ok(InstanceView { reason, ..InstanceView::default() });
        };
        let state = match self.observer.describe(id).await {
            Ok(Some(i)) => match &i.private_ip {
                Some(ip) => format!("{} in {} at {ip}", i.state, i.availability_zone),
                None => format!("{} in {}", i.state, i.availability_zone),
            },
            Ok(None) => "not found".into(),
            Err(e) => format!("not readable: {e}"),
        };
        Ok(InstanceView { instance: Some(format!("EC2 instance {id} {state} (moto)")), reason })
    }
}

#[cfg(test)]
mod tests {
    use capwin_aws::sandbox::Subnet;

    use super::*;

    fn network() -> Network {
        Network {
            vpc_id: "vpc-1".into(),
            vpc_cidr: "10.0.0.0/16".into(),
            subnets: vec![
                Subnet {
                    id: "subnet-a".into(),
                    availability_zone: "us-east-1a".into(),
                    cidr_block: "10.0.0.0/19".into(),
                    is_public: false,
                },
                Subnet {
                    id: "subnet-b".into(),
                    availability_zone: "us-east-1a".into(),
                    cidr_block: "10.0.32.0/20".into(),
                    is_public: true,
                },
            ],
            node_security_group: ("sg-1".into(), "demo-node".into()),
        }
    }

    #[test]
    fn capa_patches_give_the_aws_controller_its_subnet_and_security_group() {
        let (spec, status) = capa_patches("demo", "us-east-1", &network());
        let subnets = spec["spec"]["network"]["subnets"].as_array().unwrap();
        // What capwin's AWS controller reads: a private subnet by resourceID, with its zone.
        assert_eq!(subnets[0]["resourceID"], "subnet-a");
        assert_eq!(subnets[0]["id"], "demo-subnet-private-us-east-1a");
        assert_eq!(subnets[0]["isPublic"], false);
        assert_eq!(subnets[1]["isPublic"], true);
        assert_eq!(status["status"]["networkStatus"]["securityGroups"]["node"]["id"], "sg-1");
        assert_eq!(status["status"]["ready"], true);
        assert_eq!(status["status"]["failureDomains"], json!({"us-east-1a": {"controlPlane": true}}));
        assert_eq!(spec["spec"]["controlPlaneEndpoint"]["port"], 6443);
        // A merge patch: the template's network.cni rules are not touched.
        assert!(spec["spec"]["network"].get("cni").is_none());
    }

    #[test]
    fn seeded_names_are_collected_from_every_object() {
        let objects = vec![
            json!({"kind": "AWSMachineTemplate", "spec": {"template": {"spec": {"iamInstanceProfile": "cp", "sshKeyName": "k"}}}}),
            json!({"kind": "AWSWindowsMachineTemplate", "spec": {"template": {"spec": {"iamInstanceProfile": "nodes", "sshKeyName": ""}}}}),
            json!({"kind": "AWSCluster", "spec": {"sshKeyName": "k", "region": "eu-west-1"}}),
        ];
        assert_eq!(values_of(&objects, "iamInstanceProfile"), BTreeSet::from(["cp".into(), "nodes".into()]));
        assert_eq!(values_of(&objects, "sshKeyName"), BTreeSet::from(["k".into()]));
        assert_eq!(region_of(&objects).as_deref(), Some("eu-west-1"));
        assert_eq!(region_of(&objects[..2]), None);
    }
}
