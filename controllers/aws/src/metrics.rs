//! Prometheus metrics of the AWS controller, under `capwin_aws_`: EC2 calls by operation and
//! result (`ec2_calls_total`; the call budget per machine is read from these), reconciles and
//! blocking reasons, and console reads.

use std::sync::Arc;

pub use capwin_infra::metrics::Metrics;
use capwin_infra::metrics::Names;
use prometheus_client::registry::Registry;

pub const NAMES: Names = Names {
    prefix: "capwin_aws",
    calls: "ec2_calls",
    calls_help: "EC2 API calls by operation and result (SDK retries not counted)",
    reads: "console_reads",
    reads_help: "GetConsoleOutput reads for bootstrap diagnostics before the Node exists",
    kind: "AWSWindowsMachine",
};

pub fn register(registry: &mut Registry) -> Arc<Metrics> {
    Metrics::register(registry, &NAMES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_under_the_documented_names() {
        let mut registry = Registry::default();
        let m = register(&mut registry);
        m.call("RunInstances", "ok");
        m.blocked("AMINotFound");
        m.diagnostics_reads.inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains(r#"capwin_aws_ec2_calls_total{operation="RunInstances",result="ok"} 1"#), "{out}");
        assert!(out.contains(r#"capwin_aws_reconcile_errors_total{reason="AMINotFound"} 1"#), "{out}");
        assert!(out.contains("capwin_aws_console_reads_total 1"), "{out}");
    }
}
