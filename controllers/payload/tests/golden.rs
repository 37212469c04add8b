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

use capwin_api::bootstrap::{CniFlavour, WindowsServerVersion};
use capwin_payload::Cloud;
use sha2::{Digest, Sha256};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn cases() -> Vec<(String, Cloud, CniFlavour, WindowsServerVersion)> {
    let mut out = Vec::new();
    for cni in CniFlavour::ALL {
        for v in WindowsServerVersion::ALL {
            out.push((format!("azure-{}-ws{}", cni.as_str(), v.year()), Cloud::Azure, cni, v));
        }
    }
    out.push(("aws-calico-vxlan-ws2025".into(), Cloud::Aws, CniFlavour::CalicoVxlan, WindowsServerVersion::Ws2025));
    out.push(("aws-flannel-vxlan-ws2022".into(), Cloud::Aws, CniFlavour::FlannelVxlan, WindowsServerVersion::Ws2022));
    out
}

#[test]
fn golden_payloads_match_and_pass_cloudbase_init() {
    let update = std::env::var_os("CAPWIN_UPDATE_GOLDEN").is_some();
    let mut index = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (name, cloud, cni, version) in cases() {
        let payload = support::render(&support::spec(cni, version), cloud);
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
        assert_eq!(params["cni"]["flavour"], cni.as_str(), "{name}");
        assert_eq!(params["windowsBuild"], version.build(), "{name}");
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

/// Replaces the bootstrap script's block in a document with one line naming it.
fn fold_script(doc: &str) -> String {
    let script = capwin_payload::BOOTSTRAP_SCRIPT;
    let marker = format!("    <bootstrap.ps1: {} bytes, sha256 {:x}>", script.len(), Sha256::digest(script.as_bytes()));
    let mut out = Vec::new();
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        out.push(line.to_string());
        if line == format!("- path: \"{}\"", capwin_payload::SCRIPT_PATH.replace('\\', "\\\\")) {
            let content = lines.next().expect("content follows the path");
            assert_eq!(content, "  content: |2", "the script is carried as a literal block");
            out.push(content.to_string());
            out.push(marker.clone());
            while lines.peek().is_some_and(|l| l.starts_with("    ") || l.is_empty()) {
                lines.next();
            }
        }
    }
    assert!(out.contains(&marker), "the script block was not found to fold");
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
