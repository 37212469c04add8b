//! Prometheus metrics of the AWS controller: EC2 calls by operation and outcome (the call
//! budget per machine is read from these), and reconciles by result and blocking reason.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ec2CallLabels {
    /// The EC2 API operation, e.g. `DescribeInstances`.
    pub operation: String,
    /// `ok`, `throttled` or `error` (after the SDK's own retries).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, `blocked` (a named condition, requeued) or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The AWS controller's counters; cheap to clone (every field is a shared handle).
#[derive(Clone, Default)]
pub struct Metrics {
    pub ec2_calls: Family<Ec2CallLabels, Counter>,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub console_reads: Counter,
}

impl Metrics {
    /// Registers every metric under `capwin_aws_` (counters get `_total` when encoded).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("capwin_aws");
        r.register("ec2_calls", "EC2 API calls by operation and result (SDK retries not counted)", m.ec2_calls.clone());
        r.register("reconciles", "AWSWindowsMachine reconciles by result", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "AWSWindowsMachine reconciles that ended blocked or in an error, by reason",
            m.reconcile_errors.clone(),
        );
        r.register(
            "console_reads",
            "GetConsoleOutput reads for bootstrap diagnostics before the Node exists",
            m.console_reads.clone(),
        );
        Arc::new(m)
    }

    pub fn ec2_call(&self, operation: &str, result: &str) {
        self.ec2_calls.get_or_create(&Ec2CallLabels { operation: operation.into(), result: result.into() }).inc();
    }

    pub fn reconciled(&self, result: &str) {
        self.reconciles.get_or_create(&ResultLabels { result: result.into() }).inc();
    }

    pub fn blocked(&self, reason: &str) {
        self.reconcile_errors.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_under_the_documented_names() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.ec2_call("RunInstances", "ok");
        m.ec2_call("RunInstances", "ok");
        m.ec2_call("DescribeInstances", "throttled");
        m.reconciled("blocked");
        m.blocked("AMINotFound");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains(r#"capwin_aws_ec2_calls_total{operation="RunInstances",result="ok"} 2"#), "{out}");
        assert!(out.contains(r#"capwin_aws_ec2_calls_total{operation="DescribeInstances",result="throttled"} 1"#));
        assert!(out.contains(r#"capwin_aws_reconciles_total{result="blocked"} 1"#), "{out}");
        assert!(out.contains(r#"capwin_aws_reconcile_errors_total{reason="AMINotFound"} 1"#), "{out}");
        assert!(out.contains("capwin_aws_console_reads_total 0"), "{out}");
    }
}
