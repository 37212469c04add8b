//! Shared test helpers: inputs, decoding a payload back, and the cloudbase-init oracle.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use capwin_api::bootstrap::{CniFlavour, WindowsKubeadmConfigSpec, WindowsServerVersion};
use capwin_payload::{BootstrapToken, Cloud, ClusterInputs, DomainJoinSecret, Payload, RenderError, RenderInput};

pub const TOKEN: &str = "abcdef.0123456789abcdef";
pub const CA_HASH: &str = "sha256:3b5e0a4a3b1f2a9c6d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c";

pub fn cluster() -> ClusterInputs {
    ClusterInputs {
        api_server_endpoint: "demo-apiserver.example.com:6443".into(),
        ca_cert_hashes: vec![CA_HASH.into()],
        kubernetes_version: "v1.34.2".into(),
        pod_cidrs: vec!["192.168.0.0/16".into()],
        service_cidrs: vec!["10.96.0.0/12".into()],
    }
}

pub fn spec(cni: CniFlavour, version: WindowsServerVersion) -> WindowsKubeadmConfigSpec {
    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.cni.flavour = cni;
    s.windows.version = version;
    s
}

pub fn render_with(
    spec: &WindowsKubeadmConfigSpec,
    secrets: &BTreeMap<usize, Vec<u8>>,
    cloud: Cloud,
) -> Result<Payload, RenderError> {
    render_joined(spec, secrets, None, cloud)
}

/// The AD join account the tests use.
pub const AD_USER: &str = "CORP\\capwin-join";
pub const AD_PASSWORD: &str = "S3cret-P@ss w0rd!";

pub fn ad_secret() -> DomainJoinSecret {
    DomainJoinSecret { username: AD_USER.as_bytes().to_vec(), password: AD_PASSWORD.as_bytes().to_vec() }
}

pub fn render_joined(
    spec: &WindowsKubeadmConfigSpec,
    secrets: &BTreeMap<usize, Vec<u8>>,
    domain_join: Option<&DomainJoinSecret>,
    cloud: Cloud,
) -> Result<Payload, RenderError> {
    let token = BootstrapToken::parse(TOKEN).unwrap();
    let cluster = cluster();
    capwin_payload::render(&RenderInput {
        spec,
        secret_file_contents: secrets,
        domain_join_secret: domain_join,
        cluster: &cluster,
        token: &token,
        cloud,
    })
}

pub fn render(spec: &WindowsKubeadmConfigSpec, cloud: Cloud) -> Payload {
    render_with(spec, &BTreeMap::new(), cloud).expect("renders")
}

/// The `#cloud-config` text of a payload (gunzipped when needed).
pub fn document(p: &Payload) -> String {
    if p.gzipped {
        let mut out = String::new();
        flate2::read::GzDecoder::new(&p.bytes[..]).read_to_string(&mut out).unwrap();
        out
    } else {
        String::from_utf8(p.bytes.clone()).unwrap()
    }
}

/// `write_files` decoded by our own reading of the document: path -> bytes.
pub fn files(p: &Payload) -> BTreeMap<String, Vec<u8>> {
    let doc = document(p);
    let body = doc.strip_prefix("#cloud-config\n").expect("header");
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(body).unwrap();
    let mut out = BTreeMap::new();
    for f in v["write_files"].as_sequence().unwrap() {
        let content = f["content"].as_str().unwrap();
        let bytes = match f.get("encoding").and_then(|e| e.as_str()) {
            None => content.as_bytes().to_vec(),
            Some("b64") => base64::engine::general_purpose::STANDARD.decode(content).unwrap(),
            Some("gz+b64") => {
                let z = base64::engine::general_purpose::STANDARD.decode(content).unwrap();
                let mut o = Vec::new();
                flate2::read::GzDecoder::new(&z[..]).read_to_end(&mut o).unwrap();
                o
            }
            Some(other) => panic!("unexpected encoding {other}"),
        };
        out.insert(f["path"].as_str().unwrap().to_string(), bytes);
    }
    out
}

pub fn params(files: &BTreeMap<String, Vec<u8>>) -> serde_json::Value {
    serde_json::from_slice(&files[capwin_payload::PARAMS_PATH]).unwrap()
}

pub fn join_config(files: &BTreeMap<String, Vec<u8>>) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_slice(&files[capwin_payload::JOIN_CONFIG_PATH]).unwrap()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python of the cloudbase-init venv made by `test/cbi/setup.sh`. Missing is a failure,
/// not a skip: every payload must pass cloudbase-init's own parser.
pub fn cbi_python() -> PathBuf {
    let path = std::env::var_os("CAPWIN_CBI_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let base = std::env::var_os("CAPWIN_VENV_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/capwin/venv"));
        base.join("cbi/bin/python")
    });
    assert!(
        path.exists(),
        "cloudbase-init venv missing at {}: run test/cbi/setup.sh (the README's test command does)",
        path.display()
    );
    path
}

/// Runs cloudbase-init's parser on a payload; returns its report and exit code.
pub fn cbi_report(payload: &[u8]) -> (serde_json::Value, i32) {
    let driver = repo_root().join("test/cbi/cbi_driver.py");
    let mut child = Command::new(cbi_python())
        .arg(&driver)
        .arg("-")
        .args(["--instance-id", "i-0123456789abcdef0", "--hostname", "win-node-0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the cloudbase-init driver");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let out = child.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("driver output is not JSON ({e}); stderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    (report, out.status.code().unwrap_or(-1))
}

/// Files as cloudbase-init wrote them: path -> bytes.
pub fn cbi_files(report: &serde_json::Value) -> BTreeMap<String, Vec<u8>> {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let bytes = match (f.get("text").and_then(|t| t.as_str()), f.get("base64").and_then(|t| t.as_str())) {
                (Some(t), _) => t.as_bytes().to_vec(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
                _ => panic!("file without content in report: {f}"),
            };
            (f["path"].as_str().unwrap().to_string(), bytes)
        })
        .collect()
}

/// Asserts what every capwin payload must look like to cloudbase-init.
pub fn assert_cbi_accepts(payload: &[u8], what: &str) -> serde_json::Value {
    let (r, code) = cbi_report(payload);
    assert_eq!(code, 0, "{what}: cloudbase-init reported problems: {}", r["problems"]);
    assert_eq!(r["plugin_status"], "EXECUTION_DONE", "{what}");
    assert_eq!(r["reboot"], false, "{what}: must never ask for a reboot");
    assert_eq!(r["format"], "cloud-config", "{what}");
    assert!(r["hostname"].is_null(), "{what}: set_hostname must not be used");
    let commands = r["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 1, "{what}: exactly one runcmd script");
    assert_eq!(commands[0]["kind"], "cmd", "{what}");
    assert_eq!(commands[0]["script"], format!("rem cmd\r\n{}\r\n", capwin_payload::RUNCMD), "{what}");
    for f in r["files"].as_array().unwrap() {
        if !f["path"].as_str().unwrap().contains(r"\.ssh\") {
            assert!(!f["permissions"].is_null(), "{what}: {} has no permissions", f["path"]);
        }
    }
    let files = cbi_files(&r);
    for p in [capwin_payload::SCRIPT_PATH, capwin_payload::PARAMS_PATH, capwin_payload::JOIN_CONFIG_PATH] {
        assert!(files.contains_key(p), "{what}: {p} not written");
    }
    let script = &files[capwin_payload::SCRIPT_PATH];
    assert!(
        capwin_payload::script::Features::combinations()
            .into_iter()
            .any(|f| capwin_payload::script::shipped(f).as_bytes() == &script[..]),
        "{what}: script altered"
    );
    r
}

/// Parses YAML with PyYAML, a YAML 1.1 parser like the go-yaml v2 that kubeadm decodes with:
/// what a YAML 1.1 consumer sees, as JSON.
pub fn yaml11(bytes: &[u8]) -> serde_json::Value {
    let mut child = Command::new(cbi_python())
        .args(["-c", "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin.buffer.read())))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
