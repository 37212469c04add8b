//! Prometheus metrics of the bootstrap controller.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub controller: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub controller: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub action: String,
}

/// Counters and histograms; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub errors: Family<ReasonLabels, Counter>,
    pub duration: Histogram,
    pub tokens: Family<TokenLabels, Counter>,
    pub payload_bytes: Histogram,
}

impl Metrics {
    /// Registers every metric under `capwin_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            tokens: Family::default(),
            payload_bytes: Histogram::new(exponential_buckets(1024.0, 2.0, 8)),
        };
        let r = registry.sub_registry_with_prefix("capwin");
        r.register("reconciles", "Reconciles by controller and result", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconciles that ended in an error or a blocking condition, by reason",
            m.errors.clone(),
        );
        r.register("reconcile_duration_seconds", "Time spent in one reconcile", m.duration.clone());
        r.register("bootstrap_tokens", "Bootstrap tokens minted, refreshed, recreated and deleted", m.tokens.clone());
        r.register(
            "payload_bytes",
            "Size of rendered bootstrap payloads as stored in the data Secret",
            m.payload_bytes.clone(),
        );
        Arc::new(m)
    }

    pub fn token(&self, action: &str) {
        self.tokens.get_or_create(&TokenLabels { action: action.into() }).inc();
    }
}
