//! Configuration reload (SIGHUP, `POST /-/reload`): the request type and the reload gauges,
//! named like Prometheus' own. What is known about targets that stay is carried over by the
//! new scanner's first round ([`crate::snapshot::Snapshot::apply_plan`]).

use prometheus::{Gauge, IntGauge};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::scanner::unix_now;

/// One reload request; `reply` (from `/-/reload`) gets the outcome.
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: Option<oneshot::Sender<Result<(), String>>>,
}

/// `app_tier_cmk_config_last_reload_successful` and `..._success_timestamp_seconds`.
pub struct ReloadMetrics {
    successful: IntGauge,
    success_timestamp: Gauge,
}

impl ReloadMetrics {
    /// Registers the gauges; the configuration loaded at start counts as a successful load.
    pub fn register(metrics: &Metrics) -> ReloadMetrics {
        let successful = IntGauge::new(
            "app_tier_cmk_config_last_reload_successful",
            "1 when the last configuration (re)load succeeded, else 0 (the previous configuration stays in force).",
        )
        .expect("static metric definition is valid");
        let success_timestamp = Gauge::new(
            "app_tier_cmk_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load.",
        )
        .expect("static metric definition is valid");
        metrics.register(Box::new(successful.clone()));
        metrics.register(Box::new(success_timestamp.clone()));
        let gauges = ReloadMetrics {
            successful,
            success_timestamp,
        };
        gauges.succeeded();
        gauges
    }

    pub fn succeeded(&self) {
        self.successful.set(1);
        self.success_timestamp.set(unix_now());
    }

    pub fn failed(&self) {
        self.successful.set(0);
    }
}
