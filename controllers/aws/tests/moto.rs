//! The EC2 seam against moto's EC2 server (started and stopped by PID through the kit), and
//! against the throttling proxy in front of it.

use std::path::PathBuf;
use std::process::Command;

use capwin_api::aws::{AWSWindowsMachineSpec, AmiLookup, AwsAmi, AwsFilter, AwsResourceRef};
use capwin_aws::ec2::{Counting, Ec2, SdkEc2, StaticCredentials};
use capwin_aws::launch::{self, LaunchError, MachineContext};
use capwin_aws::model;

fn kit() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test/kit/aws/moto.sh")
}

/// moto (and optionally the proxy) for one test, stopped by PID when dropped.
struct Moto {
    state: PathBuf,
    url: String,
    proxy: Option<String>,
}

impl Moto {
    fn start(with_proxy: bool) -> Self {
        // A folder of its own per server: a shared one would let one test stop another's moto.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let state = std::env::temp_dir().join(format!("capwin-aws-{}-{n}", std::process::id()));
        let run = |cmd: &str| {
            let out =
                Command::new(kit()).arg(cmd).env("CAPWIN_KIT_STATE", &state).output().expect("the AWS kit script runs");
            assert!(out.status.success(), "moto.sh {cmd}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().lines().last().unwrap_or_default().trim().to_string()
        };
        let url = run("start");
        let proxy = with_proxy.then(|| run("proxy-start"));
        Self { state, url, proxy }
    }

    fn endpoint(&self) -> &str {
        self.proxy.as_deref().unwrap_or(&self.url)
    }

    async fn ec2(&self) -> SdkEc2 {
        let creds = StaticCredentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        };
        SdkEc2::new("us-east-1", Some(self.endpoint()), Some(creds)).await
    }

    fn arm(&self, body: serde_json::Value) {
        let out = Command::new("curl")
            .args(["-sf", "-X", "POST", "-H", "content-type: application/json", "-d", &body.to_string()])
            .arg(format!("{}/_capwin/arm", self.proxy.as_ref().unwrap()))
            .output()
            .unwrap();
        assert!(out.status.success(), "arming the proxy");
    }
}

/// One moto at a time: three starting at once on two cores make their first calls time out.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Drop for Moto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.state.join("moto.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- moto log ----\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
        }
        for cmd in ["proxy-stop", "stop"] {
            let _ = Command::new(kit()).arg(cmd).env("CAPWIN_KIT_STATE", &self.state).output();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn ctx(machine: &str) -> MachineContext {
    MachineContext {
        cluster: "demo".into(),
        namespace: "default".into(),
        machine: machine.into(),
        machine_uid: format!("uid-{machine}"),
        failure_domain: Some("us-east-1b".into()),
        kubernetes_version: "v1.34.13".into(),
        windows_year: "2025".into(),
        cluster_subnets: vec![],
        cluster_node_security_group: None,
    }
}

fn spec() -> AWSWindowsMachineSpec {
    AWSWindowsMachineSpec {
        instance_type: "m6i.xlarge".into(),
        subnet: Some(AwsResourceRef {
            id: None,
            filters: Some(vec![AwsFilter { name: "default-for-az".into(), values: vec!["true".into()] }]),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn lookup_launch_idempotently_report_and_terminate() {
    let _serial = SERIAL.lock().await;
    let moto = Moto::start(false);
    let ec2 = Counting::new(moto.ec2().await);
    let c = ctx("w-0");
    let s = spec();

    // AMI by look-up: the newest build for the Windows and Kubernetes versions.
    let image = launch::resolve_ami(&ec2, &s, &c).await.unwrap();
    assert!(image.name.starts_with("capa-ami-windows-2025-v1.34.13-"), "{}", image.name);
    let all = ec2.find_images(model::DEFAULT_AMI_OWNER, "capa-ami-windows-2025-v1.34.13-*").await.unwrap();
    assert!(all.len() >= 2 && all.iter().all(|i| i.creation_date <= image.creation_date), "newest of several builds");

    // Subnet by filters in the machine's failure domain.
    let (subnet, az) = launch::resolve_subnet(&ec2, &s, &c).await.unwrap();
    assert_eq!(az, "us-east-1b");

    let payload = b"#cloud-config\nruncmd: [\"echo hi\"]\n";
    let req = launch::launch_spec(&s, &c, &image, &subnet, vec![], payload).unwrap();
    let tags = launch::identity_tags(&c);
    let (first, created) = launch::ensure_instance(&ec2, &req, &tags).await.unwrap();
    assert!(created);
    // A second pass (say, after a manager crash before the ID was recorded) finds it by tags.
    let (again, created_again) = launch::ensure_instance(&ec2, &req, &tags).await.unwrap();
    assert!(!created_again && again.id == first.id, "one machine, one instance");
    assert_eq!(ec2.find_by_tags(&tags).await.unwrap().len(), 1);

    let running = ec2.describe(&first.id).await.unwrap().unwrap();
    assert_eq!(running.state, "running");
    assert_eq!(model::provider_id(&running), format!("aws:///us-east-1b/{}", first.id));
    assert!(running.private_ip.is_some() && running.private_dns.as_deref().unwrap_or_default().ends_with(".internal"));

    ec2.terminate(&first.id).await.unwrap();
    assert_eq!(ec2.describe(&first.id).await.unwrap().unwrap().state, "terminated");
    ec2.terminate(&first.id).await.unwrap();
    assert!(ec2.describe("i-0123456789abcdef0").await.unwrap().is_none(), "not-found is None, not an error");
    let (after, recreated) = launch::ensure_instance(&ec2, &req, &tags).await.unwrap();
    assert!(recreated && after.id != first.id, "a terminated instance is not this machine's live one");

    // The call budget of one create: two look-ups, one subnet query, one tag query, one run.
    let counts = ec2.snapshot();
    eprintln!("EC2 calls: {counts:?}");
    assert_eq!(counts.iter().find(|(n, _)| *n == "RunInstances").unwrap().1, 2);
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let _serial = SERIAL.lock().await;
    let moto = Moto::start(false);
    let ec2 = moto.ec2().await;
    let c = ctx("w-bad");
    let mut s = spec();
    s.ami = AwsAmi { id: Some("ami-00000000000000000".into()), lookup: None };
    let e = launch::resolve_ami(&ec2, &s, &c).await.unwrap_err();
    assert!(matches!(e, LaunchError::UnknownAmi(_)) && e.reason() == "AMINotFound", "{e}");
    s.ami = AwsAmi {
        id: None,
        lookup: Some(AmiLookup {
            owner: model::DEFAULT_AMI_OWNER.into(),
            name_pattern: "capa-ami-windows-2016-*".into(),
        }),
    };
    assert!(matches!(launch::resolve_ami(&ec2, &s, &c).await.unwrap_err(), LaunchError::NoAmiMatch { .. }));
    s.subnet = Some(AwsResourceRef { id: Some("subnet-00000000".into()), filters: None });
    let e = launch::resolve_subnet(&ec2, &s, &c).await.unwrap_err();
    assert!(e.to_string().starts_with("spec.subnet:") && e.reason() == "SubnetNotFound", "{e}");
    s.subnet = None;
    assert_eq!(
        launch::resolve_subnet(&ec2, &s, &c).await.unwrap_err().reason(),
        "SubnetNotFound",
        "no AWSCluster subnet either"
    );
    let image = launch::resolve_ami(&ec2, &spec(), &c).await.unwrap();
    let e = launch::launch_spec(&spec(), &c, &image, "subnet-x", vec![], &vec![b'x'; 16_385]).unwrap_err();
    assert_eq!(e.reason(), "UserDataTooLarge");
}

#[tokio::test]
async fn throttling_is_retried_then_surfaced() {
    let _serial = SERIAL.lock().await;
    let moto = Moto::start(true);
    let ec2 = moto.ec2().await;
    let tags = launch::identity_tags(&ctx("w-t"));
    // Two throttles: the SDK's standard retry absorbs them.
    moto.arm(
        serde_json::json!({"action": "DescribeInstances", "times": 2, "code": "RequestLimitExceeded", "status": 503}),
    );
    assert!(ec2.find_by_tags(&tags).await.unwrap().is_empty());
    // Persistent throttling: a clear, classified error for the reconciler's backoff.
    moto.arm(
        serde_json::json!({"action": "DescribeInstances", "times": -1, "code": "RequestLimitExceeded", "status": 503}),
    );
    let e = ec2.find_by_tags(&tags).await.unwrap_err();
    assert!(e.throttled(), "{e}");
    assert_eq!(LaunchError::from(e).reason(), "Throttled");
}
