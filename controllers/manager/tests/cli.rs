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
  windows:
    cni: {flavour: flannel-vxlan, vxlan: {vni: 4097}}
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
    assert!(text.contains(r#""kubernetesVersion":"v1.33.5""#) && text.contains(r#""vni":4097"#));
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
    assert_fails_naming(&GOOD.replace("4097", "12"), &[], "spec.windows.cni.vxlan.vni: Windows needs a VNI from 4096");
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

#[test]
fn sandbox_runs_the_example_to_joined_machines() {
    let out_dir = std::env::temp_dir().join(format!("capwin-sandbox-{}", std::process::id()));
    let o = capwin(&["sandbox", "--out", out_dir.to_str().unwrap(), "--timeout", "60s"], None);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{stdout}\n{}", stderr(&o));
    assert!(stdout.contains("all 2 Windows machines joined; join tokens left in the workload cluster: 0"), "{stdout}");
    for m in ["demo-windows-0", "demo-windows-1"] {
        let doc = std::fs::read_to_string(out_dir.join(format!("{m}.cloud-config.yaml"))).unwrap();
        assert!(doc.starts_with("#cloud-config\n") && doc.contains("flannel-vxlan"), "{m}");
        let raw = std::fs::read(out_dir.join(format!("{m}.userdata"))).unwrap();
        assert!(raw.len() <= 16_384, "the AWS payload fits EC2 user data");
    }
    std::fs::remove_dir_all(out_dir).unwrap();
}
