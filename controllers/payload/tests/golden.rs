//! Golden payloads for every CNI flavour x Windows Server version on Azure, plus AWS cases. The
//! `.yaml` files are the documents (AWS ones gunzipped) with the static bootstrap script folded
//! to one line naming its size and SHA-256, so a review sees what differs between flavours;
//! `index.json` pins the exact payload bytes by SHA-256. Each payload also goes through
//! cloudbase-init's own parser.
//!
//! Regenerate after a deliberate change with `CAPWIN_UPDATE_GOLDEN=1 cargo test -p capwin-payload --test golden`
//! and review the diff like code.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use capwin_api::bootstrap::{
    CcgPlugin, CniFlavour, DomainJoin, DomainJoinSecretRef, Gmsa, WindowsKubeadmConfigSpec, WindowsServerVersion,
};
use capwin_payload::Cloud;
use capwin_payload::serial::{WrittenPort, console_watch, written_port};
use sha2::{Digest, Sha256};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Hyper-V isolation, gMSA with a CCG plugin and an AD domain join on top of a base spec.
fn with_everything(mut s: WindowsKubeadmConfigSpec) -> WindowsKubeadmConfigSpec {
    s.windows.hyper_v.enabled = true;
    s.windows.gmsa = Gmsa {
        enabled: true,
        ccg_plugin: Some(CcgPlugin {
            url: "https://example.com/ccg/CCGAKVPlugin.dll".into(),
            sha256: "5f".repeat(32),
            clsid: "{CCC2A336-D7F3-4818-A213-272B7924213E}".into(),
            app_id: None,
        }),
    };
    s.windows.domain_join = Some(DomainJoin {
        domain: "corp.example.com".into(),
        organizational_unit: Some("OU=Kubernetes,DC=corp,DC=example,DC=com".into()),
        credentials_secret: DomainJoinSecretRef { name: "ad-join".into(), ..Default::default() },
    });
    s
}

fn cases() -> Vec<(String, Cloud, WindowsKubeadmConfigSpec)> {
    let mut out = Vec::new();
    for cni in CniFlavour::ALL {
        for v in WindowsServerVersion::ALL {
            out.push((format!("azure-{}-ws{}", cni.as_str(), v.year()), Cloud::Azure, support::spec(cni, v)));
        }
    }
    let spec = support::spec;
    out.push((
        "aws-calico-vxlan-ws2025".into(),
        Cloud::Aws,
        spec(CniFlavour::CalicoVxlan, WindowsServerVersion::Ws2025),
    ));
    out.push((
        "aws-flannel-vxlan-ws2022".into(),
        Cloud::Aws,
        spec(CniFlavour::FlannelVxlan, WindowsServerVersion::Ws2022),
    ));
    out.push((
        "azure-calico-vxlan-ws2025-hyperv-gmsa-ad".into(),
        Cloud::Azure,
        with_everything(spec(CniFlavour::CalicoVxlan, WindowsServerVersion::Ws2025)),
    ));
    out.push((
        "aws-flannel-host-gw-ws2022-hyperv-gmsa-ad".into(),
        Cloud::Aws,
        with_everything(spec(CniFlavour::FlannelHostGw, WindowsServerVersion::Ws2022)),
    ));
    out
}

#[test]
fn golden_payloads_match_and_pass_cloudbase_init() {
    let update = std::env::var_os("CAPWIN_UPDATE_GOLDEN").is_some();
    let mut index = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (name, cloud, spec) in cases() {
        let account = support::ad_secret();
        let account = spec.windows.domain_join.as_ref().map(|_| &account);
        let payload = support::render_joined(&spec, &Default::default(), account, cloud).expect("renders");
        let doc = fold_script(&support::document(&payload));
        let path = golden_dir().join(format!("{name}.yaml"));
        if update {
            std::fs::write(&path, &doc).unwrap();
        } else {
            let want = std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("{} missing; run with CAPWIN_UPDATE_GOLDEN=1", path.display()));
            if want != doc {
                mismatches.push(name.clone());
            }
        }
        index.insert(
            name.clone(),
            serde_json::json!({
                "bytes": payload.bytes.len(),
                "sentBase64": payload.sent_bytes(),
                "documentBytes": payload.document_bytes,
                "gzipped": payload.gzipped,
                "sha256": format!("{:x}", Sha256::digest(&payload.bytes)),
            }),
        );
        assert!(payload.bytes.len() <= cloud.limit(), "{name} over the {cloud} limit");
        let report = support::assert_cbi_accepts(&payload.bytes, &name);
        let files = support::cbi_files(&report);
        let params = support::params(&files);
        assert_eq!(params["cni"]["flavour"], spec.windows.cni.flavour.as_str(), "{name}");
        assert_eq!(params["windows"]["acceptedBuilds"][0], spec.windows.version.build(), "{name}");
        // The parameters carry no secret; the join account travels only in its own file.
        let params_text = String::from_utf8(files[capwin_payload::PARAMS_PATH].clone()).unwrap();
        for secret in [support::TOKEN, "0123456789abcdef", support::AD_PASSWORD] {
            assert!(!params_text.contains(secret), "{name}: bootstrap.json holds a secret");
        }
        // The infrastructure side finds the port in the payload, and the cloud's console shows it.
        assert_eq!(
            written_port(&payload.bytes),
            WrittenPort::Port(capwin_payload::node::console_port(cloud).into()),
            "{name}"
        );
        assert_eq!(console_watch(cloud, &written_port(&payload.bytes)), Ok(()), "{name}");
    }
    let index_path = golden_dir().join("index.json");
    let index_text = serde_json::to_string_pretty(&index).unwrap() + "\n";
    if update {
        std::fs::write(&index_path, &index_text).unwrap();
    } else {
        assert_eq!(std::fs::read_to_string(&index_path).unwrap(), index_text, "golden index (sizes/sha256) changed");
    }
    assert!(mismatches.is_empty(), "payloads differ from their golden files: {mismatches:?}");
}

/// Replaces the bootstrap script's block in a document with one line naming it: its first line
/// (which lists the optional parts it carries), size and SHA-256.
fn fold_script(doc: &str) -> String {
    let mut out = Vec::new();
    let mut folded = false;
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        out.push(line.to_string());
        if line == format!("- path: \"{}\"", capwin_payload::SCRIPT_PATH.replace('\\', "\\\\")) {
            let content = lines.next().expect("content follows the path");
            assert_eq!(content, "  content: |2", "the script is carried as a literal block");
            out.push(content.to_string());
            let mut script = String::new();
            while lines.peek().is_some_and(|l| l.starts_with("    ") || l.is_empty()) {
                let l = lines.next().unwrap();
                script.push_str(l.strip_prefix("    ").unwrap_or(l));
                script.push('\n');
            }
            let first = script.lines().next().unwrap_or_default().to_string();
            out.push(format!(
                "    <bootstrap.ps1: {} bytes, sha256 {:x}; {first}>",
                script.len(),
                Sha256::digest(script.as_bytes())
            ));
            folded = true;
        }
    }
    assert!(folded, "the script block was not found to fold");
    out.join("\n") + "\n"
}

#[test]
fn azure_goldens_are_exact_bytes_and_aws_is_compressed_only_when_needed() {
    let azure = support::render(&support::spec(CniFlavour::CalicoVxlan, WindowsServerVersion::Ws2025), Cloud::Azure);
    assert!(!azure.gzipped);
    assert!(azure.bytes.starts_with(b"#cloud-config\n"));
    let aws = support::render(&support::spec(CniFlavour::CalicoVxlan, WindowsServerVersion::Ws2025), Cloud::Aws);
    assert!(
        aws.document_bytes > capwin_payload::AWS_USER_DATA_LIMIT,
        "the plain document should not fit EC2, or this test proves nothing"
    );
    assert!(aws.gzipped && aws.bytes.starts_with(&[0x1f, 0x8b]));
}
