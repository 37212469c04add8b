//! Render time and payload size per CNI flavour and cloud (a benchmark, not a timed test).
//!
//! `cargo bench -p capwin-payload --bench render` prints one line per case: median and p95 render
//! time over many runs, the payload bytes (what the Secret holds), the bytes as sent (base64) and
//! the document size before whole-payload gzip.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capwin_api::bootstrap::{CniFlavour, WindowsKubeadmConfigSpec, WindowsServerVersion};
use capwin_payload::{BootstrapToken, Cloud, ClusterInputs, RenderInput};

const RUNS: usize = 300;

fn main() {
    let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
    let cluster = ClusterInputs {
        api_server_endpoint: "demo-apiserver.example.com:6443".into(),
        ca_cert_hashes: vec![format!("sha256:{}", "ab".repeat(32))],
        kubernetes_version: "v1.35.0".into(),
        pod_cidrs: vec!["192.168.0.0/16".into()],
        service_cidrs: vec!["10.96.0.0/12".into()],
    };
    let secrets = BTreeMap::new();
    println!(
        "{:<16} {:<6} {:>10} {:>10} {:>8} {:>8} {:>9} {:>5}",
        "cni", "cloud", "median", "p95", "bytes", "sent", "document", "gzip"
    );
    for cni in CniFlavour::ALL {
        for cloud in [Cloud::Azure, Cloud::Aws] {
            let mut spec = WindowsKubeadmConfigSpec::default();
            spec.windows.cni.flavour = cni;
            spec.windows.version = WindowsServerVersion::Ws2025;
            let input = RenderInput {
                spec: &spec,
                secret_file_contents: &secrets,
                domain_join_secret: None,
                cluster: &cluster,
                token: &token,
                cloud,
            };
            let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
            let mut last = None;
            for _ in 0..RUNS {
                let start = Instant::now();
                let p = capwin_payload::render(std::hint::black_box(&input)).expect("renders");
                times.push(start.elapsed());
                last = Some(p);
            }
            times.sort();
            let p = last.unwrap();
            println!(
                "{:<16} {:<6} {:>8.1}µs {:>8.1}µs {:>8} {:>8} {:>9} {:>5}",
                cni.as_str(),
                cloud.as_str(),
                times[RUNS / 2].as_secs_f64() * 1e6,
                times[RUNS * 95 / 100].as_secs_f64() * 1e6,
                p.bytes.len(),
                p.sent_bytes(),
                p.document_bytes,
                p.gzipped
            );
        }
    }
}
