//! Prometheus metrics of a machine controller: cloud calls by operation and result (the call
//! budget per machine is read from these), reconciles by result and blocking reason, and serial
//! diagnostics reads. Each controller registers under its own prefix.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The cloud operation, e.g. `DescribeInstances` or `PUT virtualMachines`.
    pub operation: String,
    /// `ok`, `throttled`, `not_found` or `error` (after the SDK's or pipeline's own retries).
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

/// Names and help texts of one controller's metrics.
pub struct Names {
    /// e.g. `capwin_aws`.
    pub prefix: &'static str,
    /// e.g. `ec2_calls`.
    pub calls: &'static str,
    pub calls_help: &'static str,
    /// e.g. `console_reads`.
    pub reads: &'static str,
    pub reads_help: &'static str,
    /// e.g. `AWSWindowsMachine`.
    pub kind: &'static str,
}

/// One controller's counters; cheap to clone (every field is a shared handle).
#[derive(Clone, Default)]
pub struct Metrics {
    pub calls: Family<CallLabels, Counter>,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub diagnostics_reads: Counter,
}

impl Metrics {
    /// Registers every metric under `names.prefix` (counters get `_total` when encoded).
    pub fn register(registry: &mut Registry, names: &Names) -> Arc<Self> {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix(names.prefix);
        r.register(names.calls, names.calls_help, m.calls.clone());
        r.register("reconciles", format!("{} reconciles by result", names.kind), m.reconciles.clone());
        r.register(
            "reconcile_errors",
            format!("{} reconciles that ended blocked or in an error, by reason", names.kind),
            m.reconcile_errors.clone(),
        );
        r.register(names.reads, names.reads_help, m.diagnostics_reads.clone());
        Arc::new(m)
    }

    pub fn call(&self, operation: &str, result: &str) {
        self.calls.get_or_create(&CallLabels { operation: operation.into(), result: result.into() }).inc();
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
    fn encodes_under_the_given_names() {
        let mut registry = Registry::default();
        let m = Metrics::register(
            &mut registry,
            &Names {
                prefix: "capwin_x",
                calls: "api_calls",
                calls_help: "calls",
                reads: "console_reads",
                reads_help: "reads",
                kind: "XMachine",
            },
        );
        m.call("Run", "ok");
        m.reconciled("ok");
        m.blocked("ImageNotFound");
        m.diagnostics_reads.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            r#"capwin_x_api_calls_total{operation="Run",result="ok"} 1"#,
            r#"capwin_x_reconciles_total{result="ok"} 1"#,
            r#"capwin_x_reconcile_errors_total{reason="ImageNotFound"} 1"#,
            "capwin_x_console_reads_total 1",
            "# HELP capwin_x_reconciles XMachine reconciles by result",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
