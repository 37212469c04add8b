//! Prometheus metrics of the Azure controller, under `capwin_azure_`: ARM calls by operation and
//! result (`arm_calls_total`), reconciles and blocking reasons, and boot diagnostics reads.

use std::sync::Arc;

pub use capwin_infra::metrics::Metrics;
use capwin_infra::metrics::Names;
use prometheus_client::registry::Registry;

pub const NAMES: Names = Names {
    prefix: "capwin_azure",
    calls: "arm_calls",
    calls_help: "ARM calls by operation (METHOD type) and result (pipeline retries not counted)",
    reads: "boot_diagnostics_reads",
    reads_help: "Serial log reads for bootstrap diagnostics before the Node exists",
    kind: "AzureWindowsMachine",
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
        m.call("PUT virtualMachines", "ok");
        m.diagnostics_reads.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"capwin_azure_arm_calls_total{operation="PUT virtualMachines",result="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains("capwin_azure_boot_diagnostics_reads_total 1"), "{text}");
    }
}
