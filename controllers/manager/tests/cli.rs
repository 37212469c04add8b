//! The `capwin` binary as a user runs it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn capwin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_capwin"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.unwrap_or("").to_string();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const GOOD: &str = r#"
apiVersion: bootstrap.cluster.x-k8s.io/v1alpha1
kind: WindowsKubeadmConfig
metadata: {name: w}
spec:
  verbosity: 7
  windows:
    cni: {flavour: flannel-vxlan}
"#;

#[test]
fn crds_prints_every_crd() {
    let o = capwin(&["crds"], None);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    let docs: Vec<serde_yaml_ng::Value> =
        serde_yaml_ng::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    assert_eq!(docs.len(), 6);
    assert!(docs.iter().all(|d| d["kind"] == "CustomResourceDefinition"));
}

#[test]
fn render_runs_on_the_embedded_example() {
    let o = capwin(&["render"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.starts_with(b"#cloud-config\n"));
    assert!(stderr(&o).contains("placeholder values for: endpoint, token, ca-cert-hash"), "{}", stderr(&o));
    let aws = capwin(&["render", "--cloud", "aws", "--report"], None);
    assert!(aws.status.success());
    assert_eq!(&aws.stdout[..2], &[0x1f, 0x8b], "EC2 payloads are gzipped when they need to be");
    assert!(stderr(&aws).contains("bootstrap script"), "--report lists the parts");
}

#[test]
fn render_uses_the_given_cluster_values() {
    let o = capwin(
        &[
            "render",
            "--config",
            "-",
            "--endpoint",
            "10.0.0.4:6443",
            "--token",
            "qwerty.0123456789qwerty",
            "--ca-cert-hash",
            "sha256:1111111111111111111111111111111111111111111111111111111111111111",
            "--kubernetes-version",
            "v1.33.5",
        ],
        Some(GOOD),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(text.contains(r#""apiServerEndpoint": "10.0.0.4:6443""#), "{text}");
    assert!(text.contains(r#""token": "qwerty.0123456789qwerty""#));
    assert!(text.contains(r#""kubernetesVersion":"v1.33.5""#) && text.contains(r#""verbosity":7"#));
    assert!(!stderr(&o).contains("placeholder"));
}

fn assert_fails_naming(config: &str, args: &[&str], needle: &str) {
    let mut all = vec!["render", "--config", "-"];
    all.extend_from_slice(args);
    let o = capwin(&all, Some(config));
    assert!(!o.status.success(), "should fail: {config}");
    assert!(o.stdout.is_empty(), "no partial payload on failure");
    assert!(stderr(&o).contains(needle), "expected `{needle}` in: {}", stderr(&o));
}

#[test]
fn bad_input_names_the_field() {
    assert_fails_naming(&GOOD.replace("cni:", "cnii:"), &[], "unknown field: spec.windows.cnii");
    assert_fails_naming(&GOOD.replace("flannel-vxlan", "flannel"), &[], "spec.windows.cni.flavour");
    assert_fails_naming(
        &GOOD.replace("verbosity: 7", "verbosity: 12"),
        &[],
        "spec.verbosity: must be between 0 and 10",
    );
    assert_fails_naming(
        &GOOD.replace("kind: WindowsKubeadmConfig", "kind: KubeadmConfig"),
        &[],
        "WindowsKubeadmConfig",
    );
    assert_fails_naming(GOOD, &["--token", "nope"], "--token");
    assert_fails_naming(
        GOOD,
        &["--kubernetes-version", "v1.29.0"],
        "kubernetesVersion: Kubernetes 1.29 is not supported",
    );
    let secret_file = r#"
apiVersion: bootstrap.cluster.x-k8s.io/v1alpha1
kind: WindowsKubeadmConfig
metadata: {name: w}
spec:
  files:
  - path: C:\k\ca.pem
    contentFrom: {secret: {name: my-secret, key: ca.pem}}
"#;
    assert_fails_naming(secret_file, &[], "spec.files[0].contentFrom: Secret my-secret/ca.pem needs --secret-dir");
}

/// Issue 15 item 7, second line of defence: the same hostile table the admission test uses
/// (`test/hostile/windowskubeadmconfigs.yaml`) fails `capwin render`, i.e. the controller's own
/// checks, each naming its field; the valid config renders.
#[test]
fn hostile_configs_fail_to_render() {
    let dir = std::env::temp_dir().join(format!("capwin-cli-hostile-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("join")).unwrap();
    std::fs::write(dir.join("join/username"), r"CORP\joiner").unwrap();
    std::fs::write(dir.join("join/password"), "p4ss").unwrap();
    let secret_dir = dir.to_str().unwrap();
    let render = |spec: &serde_json::Value| {
        let config = capwin_testkit::hostile::object("w", spec).to_string();
        capwin(&["render", "--config", "-", "--secret-dir", secret_dir], Some(&config))
    };
    let (valid, cases) = capwin_testkit::hostile::windows_kubeadm_configs();
    let o = render(&valid);
    assert!(o.status.success(), "the valid config renders: {}", stderr(&o));
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for c in &cases {
        let o = render(&c.spec);
        let err = stderr(&o);
        if o.status.success() || !o.stdout.is_empty() {
            failures.push(format!("{}: rendered", c.name));
        } else if !err.contains(&format!("{}: ", c.render)) && !err.contains(&format!("{} (", c.render)) {
            failures.push(format!("{}: expected an error naming {}, got: {err}", c.name, c.render));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn content_from_reads_a_secret_folder() {
    let dir = std::env::temp_dir().join(format!("capwin-cli-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("my-secret")).unwrap();
    std::fs::write(dir.join("my-secret/ca.pem"), "-----BEGIN CERTIFICATE-----\nabc\n").unwrap();
    let config = r#"
apiVersion: bootstrap.cluster.x-k8s.io/v1alpha1
kind: WindowsKubeadmConfig
metadata: {name: w}
spec:
  files:
  - path: C:\k\ca.pem
    contentFrom: {secret: {name: my-secret, key: ca.pem}}
"#;
    let o = capwin(&["render", "--config", "-", "--secret-dir", dir.to_str().unwrap()], Some(config));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8(o.stdout).unwrap().contains("BEGIN CERTIFICATE-----\n    abc"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Sandbox runs start moto or the fake ARM each; one at a time keeps two cores from timing each
/// other out.
static SANDBOX: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sandbox(out_dir: &std::path::Path, extra: &[&str]) -> (Output, String) {
    let _one = SANDBOX.lock().unwrap_or_else(|p| p.into_inner());
    let mut args = vec!["sandbox", "--out", out_dir.to_str().unwrap(), "--timeout", "90s"];
    args.extend(extra);
    let o = capwin(&args, None);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    (o, stdout)
}

#[test]
fn sandbox_runs_the_aws_template_to_joined_machines() {
    let out_dir = std::env::temp_dir().join(format!("capwin-sandbox-{}", std::process::id()));
    let (o, stdout) = sandbox(&out_dir, &[]);
    assert!(o.status.success(), "{stdout}\n{}", stderr(&o));
    assert!(stdout.contains("applying templates/cluster-template-aws-windows-calico.yaml"), "{stdout}");
    assert!(stdout.contains("(simulated CAPA) AWSCluster demo: made in moto VPC vpc-"), "{stdout}");
    // The template's AWSCluster names CAPA's controller identity; the machines run with it.
    assert!(stdout.contains("(simulated CAPA) AWSClusterControllerIdentity default: created"), "{stdout}");
    assert!(stdout.contains("all 2 Windows machines joined; join tokens left in the workload cluster: 0"), "{stdout}");
    for m in ["demo-md-win-0", "demo-md-win-1"] {
        // The instance is moto's, and the providerID names it.
        let instance = stdout
            .lines()
            .find_map(|l| l.split(&format!("{m}: EC2 instance ")).nth(1))
            .unwrap_or_else(|| panic!("no EC2 instance line for {m}: {stdout}"));
        let id = instance.split_whitespace().next().unwrap();
        assert!(id.starts_with("i-") && instance.contains(" running in us-east-1a "), "{instance}");
        assert!(stdout.contains(&format!("{m}: providerID aws:///us-east-1a/{id}")), "{stdout}");
        // The node is named as the AWS cloud provider expects: the instance's private DNS name.
        let node = stdout
            .lines()
            .find_map(|l| l.split(&format!("{m}: Node ")).nth(1))
            .unwrap_or_else(|| panic!("no Node line for {m}: {stdout}"));
        assert!(node.starts_with("ip-10-0-") && node.contains(".internal joined"), "{node}");
        let doc = std::fs::read_to_string(out_dir.join(format!("{m}.cloud-config.yaml"))).unwrap();
        assert!(doc.starts_with("#cloud-config\n") && doc.contains("calico-vxlan"), "{m}");
        let raw = std::fs::read(out_dir.join(format!("{m}.userdata"))).unwrap();
        assert!(raw.len() <= 16_384, "the AWS payload fits EC2 user data");
    }
    // moto is stopped: its recorded PID is gone with the state files.
    assert!(stdout.contains("cloud endpoints stopped"), "{stdout}");
    assert!(!out_dir.join("kit/aws/moto.pid").exists(), "moto.sh stop clears the PID file");
    std::fs::remove_dir_all(out_dir).unwrap();
}

#[test]
fn sandbox_runs_the_azure_template_against_the_fake_arm() {
    let out_dir = std::env::temp_dir().join(format!("capwin-sandbox-azure-{}", std::process::id()));
    let (o, stdout) = sandbox(&out_dir, &["--template", "azure-windows-calico"]);
    assert!(o.status.success(), "{stdout}\n{}", stderr(&o));
    assert!(stdout.contains("applying templates/cluster-template-azure-windows-calico.yaml"), "{stdout}");
    assert!(stdout.contains("fake ARM (and Entra ID) at https://127.0.0.1:"), "{stdout}");
    assert!(
        stdout.contains("(simulated CAPZ) AzureCluster demo: resource group capwin-e2e, vnet capwin-e2e-vnet, node subnet capwin-e2e-node-subnet in westeurope"),
        "{stdout}"
    );
    assert!(!stdout.contains("(simulated CAPA)") && !stdout.contains("moto"), "no AWS in an Azure run: {stdout}");
    assert!(stdout.contains("all 2 Windows machines joined; join tokens left in the workload cluster: 0"), "{stdout}");
    let mut vms = Vec::new();
    for m in ["demo-md-win-0", "demo-md-win-1"] {
        // The VM is the fake ARM's: its name, states and address are read from it.
        let running = stdout
            .lines()
            .find_map(|l| l.split(&format!("{m}: VM ")).nth(1).filter(|v| v.contains("provisioningState Succeeded")))
            .unwrap_or_else(|| panic!("no running VM line for {m}: {stdout}"));
        let vm = running.split_whitespace().next().unwrap().to_string();
        assert!(vm.len() <= 15 && vm.starts_with("demo-md-"), "a Windows computer name: {vm}");
        assert!(running.contains("power state running at 10.1.0."), "{running}");
        assert!(
            stdout.contains(&format!(
                "{m}: providerID azure:///subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/capwin-e2e/providers/Microsoft.Compute/virtualMachines/{vm}"
            )),
            "{stdout}"
        );
        // The node is named after the computer name, which is the VM name.
        assert!(stdout.contains(&format!("{m}: Node {vm} joined")), "{stdout}");
        assert!(stdout.contains(&format!("{m}: bootstrap Joined: the join token is deleted")), "{stdout}");
        let doc = std::fs::read_to_string(out_dir.join(format!("{m}.cloud-config.yaml"))).unwrap();
        assert!(doc.starts_with("#cloud-config\n") && doc.contains("calico-vxlan"), "{m}");
        // The azure.json Secret capwin's template controller writes reaches the node.
        assert!(doc.contains(r#"- path: "C:\\k\\azure.json""#), "{m}: {doc}");
        vms.push(vm);
    }
    assert_ne!(vms[0], vms[1]);
    // What the fake ARM held before it stopped: exactly the two VMs, one create each.
    assert!(stdout.contains("fake ARM holds 2 VMs, 2 NICs, 2 OS disks in resource group capwin-e2e"), "{stdout}");
    assert!(stdout.contains("PUT Microsoft.Compute/virtualMachines 2,"), "{stdout}");
    assert!(stdout.contains("cloud endpoints stopped"), "{stdout}");
    assert!(!out_dir.join("kit/azure/arm.pid").exists(), "arm.sh stop clears the PID file");
    std::fs::remove_dir_all(out_dir).unwrap();
}

#[test]
fn sandbox_applies_a_file_with_variables() {
    let out_dir = std::env::temp_dir().join(format!("capwin-sandbox-file-{}", std::process::id()));
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../../templates/cluster-template-aws-windows-calico.yaml");
    let extra = ["--cluster", template, "--var", "CLUSTER_NAME=w1", "--var", "CAPWIN_WINDOWS_WORKER_MACHINE_COUNT=1"];
    let (o, stdout) = sandbox(&out_dir, &extra);
    assert!(o.status.success(), "{stdout}\n{}", stderr(&o));
    assert!(stdout.contains("all 1 Windows machines joined"), "{stdout}");
    assert!(stdout.contains("w1-md-win-0: EC2 instance i-"), "{stdout}");
    assert!(out_dir.join("w1-md-win-0.userdata").is_file());
    std::fs::remove_dir_all(out_dir).unwrap();
}

#[test]
fn sandbox_names_unset_variables_and_unknown_templates() {
    let out_dir = std::env::temp_dir().join(format!("capwin-sandbox-bad-{}", std::process::id()));
    let file = out_dir.join("objects.yaml");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(&file, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: '${A}-${B:=b}-${C}'}\n").unwrap();
    let o = capwin(&["sandbox", "--out", out_dir.to_str().unwrap(), "--cluster", file.to_str().unwrap()], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("value for variables [A, C] is not set"), "{}", stderr(&o));
    let o = capwin(&["sandbox", "--out", out_dir.to_str().unwrap(), "--template", "gcp-windows"], None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no template \"gcp-windows\"; the sandbox has aws-windows-calico, azure-windows-calico"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(out_dir).unwrap();
}

#[test]
fn sandbox_without_python_says_how_to_fix_it() {
    let out_dir = std::env::temp_dir().join(format!("capwin-sandbox-nopy-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_capwin"))
        .args(["sandbox", "--out", out_dir.to_str().unwrap()])
        // A venv folder that does not exist yet and a Python that does not exist at all.
        .env("CAPWIN_VENV_DIR", out_dir.join("venv"))
        .env("PYTHON", out_dir.join("no-such-python3"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("could not start moto") && err.contains("python3 (3.11 or newer)"), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("joined"), "no silent fallback to simulation");
    std::fs::remove_dir_all(out_dir).unwrap();
}
