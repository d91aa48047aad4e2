//! Prometheus output: the snapshot rendered as metric families, plus the live registry
//! (AWS request counter, build info, process metrics).
//!
//! The snapshot part is rendered once per snapshot generation and cached, so a scrape costs
//! a copy of bytes and a render of the small live registry, never an AWS call.

use std::sync::Mutex;

use bytes::Bytes;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::snapshot::{SharedSnapshot, Snapshot};

/// Version and git revision baked in at build time.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = match option_env!("BUILD_GIT_REVISION") {
    Some(r) => r,
    None => "unknown",
};

/// Live metrics and the cache of the rendered snapshot.
pub struct Metrics {
    registry: Registry,
    pub aws_requests_total: IntCounterVec,
    cache: Mutex<Option<(u64, Bytes)>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let aws_requests_total = IntCounterVec::new(
            Opts::new(
                "app_tier_cmk_aws_requests_total",
                "AWS API requests sent (each HTTP attempt, retries included), by operation and outcome.",
            ),
            &["operation", "outcome"],
        )
        .expect("static metric definition is valid");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "app_tier_cmk_build_info",
                "Build of the exporter: version and git revision; always 1.",
            ),
            &["version", "revision"],
        )
        .expect("static metric definition is valid");
        build_info.with_label_values(&[VERSION, REVISION]).set(1);
        // Registration of distinct, valid static names cannot fail.
        let _ = registry.register(Box::new(aws_requests_total.clone()));
        let _ = registry.register(Box::new(build_info));
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        Metrics {
            registry,
            aws_requests_total,
            cache: Mutex::new(None),
        }
    }

    /// Adds a live collector (e.g. the reload gauges) to the registry.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        // Only static, distinct names are registered; a clash would be a programming error
        // that the unit tests catch through the rendered output.
        let _ = self.registry.register(collector);
    }

    /// The full `/metrics` body in the Prometheus text format.
    pub fn render(&self, snapshot: &SharedSnapshot) -> Vec<u8> {
        let snapshot_text = self.snapshot_text(snapshot);
        let mut body = Vec::with_capacity(snapshot_text.len() + 4096);
        body.extend_from_slice(&snapshot_text);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut body);
        body
    }

    fn snapshot_text(&self, snapshot: &SharedSnapshot) -> Bytes {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = snapshot.read();
        if let Some((generation, text)) = cache.as_ref()
            && *generation == snapshot.generation
        {
            return text.clone();
        }
        let text = Bytes::from(render_snapshot(&snapshot));
        *cache = Some((snapshot.generation, text.clone()));
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Builds one metric family.
struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut mf = MetricFamily::new();
        mf.set_name(name.to_owned());
        mf.set_help(help.to_owned());
        mf.set_field_type(kind);
        Family(mf)
    }

    fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let pairs = labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::new();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        let mut metric = Metric::new();
        metric.set_label(pairs);
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut counter = Counter::new();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = Gauge::new();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        self.0.mut_metric().push(metric);
    }
}

const CACHED: &str = "Cached from the last successful scan of the target.";

/// Renders every per-target and per-account series of the snapshot.
pub fn render_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let mut present = Family::gauge(
        "app_tier_cmk_present",
        &format!(
            "1 when the account and region hold a customer-managed KMS key with the App-Tier tag in a counted state, else 0. {CACHED}"
        ),
    );
    let mut keys = Family::gauge(
        "app_tier_cmk_keys",
        &format!(
            "Customer-managed KMS keys with the App-Tier tag, by KeyState (Unknown: DescribeKey refused). {CACHED}"
        ),
    );
    let mut key_info = Family::gauge(
        "app_tier_cmk_key_info",
        &format!(
            "One series per customer-managed KMS key with the App-Tier tag; always 1. {CACHED}"
        ),
    );
    let mut deletion = Family::gauge(
        "app_tier_cmk_key_deletion_timestamp_seconds",
        &format!("Unix time at which an App-Tier key pending deletion will be deleted. {CACHED}"),
    );
    let mut rotation = Family::gauge(
        "app_tier_cmk_key_rotation_enabled",
        &format!(
            "1 when automatic rotation is enabled on a symmetric App-Tier key, else 0. {CACHED}"
        ),
    );
    let mut success = Family::gauge(
        "app_tier_cmk_scan_success",
        "1 when the last scan of the account and region succeeded, else 0.",
    );
    let mut duration = Family::gauge(
        "app_tier_cmk_scan_duration_seconds",
        "Duration of the last scan of the account and region.",
    );
    let mut last_success = Family::gauge(
        "app_tier_cmk_last_success_timestamp_seconds",
        "Unix time of the last successful scan of the account and region.",
    );
    let mut errors = Family::new(
        "app_tier_cmk_scan_errors_total",
        "Failed AWS calls while scanning the account and region, by kind (throttled, access_denied, timeout, network, assume_role, other).",
        MetricType::COUNTER,
    );
    let mut tag_in_use = Family::gauge(
        "app_tier_cmk_tag_in_use",
        &format!(
            "1 when some resource of the account and region carries the App-Tier tag key (tag:GetTagKeys), else 0; absent when not read. {CACHED}"
        ),
    );
    let mut required = Family::gauge(
        "app_tier_cmk_required",
        &format!(
            "1 when the account and region must hold an App-Tier key (match.require), else 0; absent when unknown. {CACHED}"
        ),
    );
    let mut org_success = Family::gauge(
        "app_tier_cmk_organization_refresh_success",
        "1 when the last read of the organization's account list (organizations:ListAccounts) succeeded, else 0.",
    );
    let mut org_accounts = Family::gauge(
        "app_tier_cmk_organization_accounts",
        "Accounts of the organization being scanned (ACTIVE, after include/exclude and static accounts), from the last successful read.",
    );
    let mut org_last_success = Family::gauge(
        "app_tier_cmk_organization_last_refresh_timestamp_seconds",
        "Unix time of the last successful read of the organization's account list.",
    );
    if let Some(org) = &snapshot.organization {
        if let Some(ok) = org.refresh_ok {
            org_success.add(&[], if ok { 1.0 } else { 0.0 });
            org_accounts.add(&[], org.accounts as f64);
        }
        if let Some(ts) = org.last_success_timestamp {
            org_last_success.add(&[], ts);
        }
    }
    let mut account_info = Family::gauge(
        "app_tier_cmk_account_info",
        "One series per configured account with its name (the account ID when unnamed); always 1.",
    );

    for account in &snapshot.accounts {
        let label = account.label();
        let name = account.name.as_deref().unwrap_or(label);
        account_info.add(&[("account", label), ("account_name", name)], 1.0);
    }

    for target in &snapshot.targets {
        let Some(account) = snapshot.accounts.get(target.account) else {
            continue;
        };
        let account_label = account.label();
        let region = target.region.as_str();
        let target_labels = [("account", account_label), ("region", region)];
        if target.scanned {
            success.add(&target_labels, if target.last_scan_ok { 1.0 } else { 0.0 });
            duration.add(&target_labels, target.last_duration_seconds);
        } else {
            // Not scanned yet: the target exists but has not succeeded.
            success.add(&target_labels, 0.0);
        }
        if let Some(ts) = target.last_success_timestamp {
            last_success.add(&target_labels, ts);
        }
        for (kind, count) in &target.errors_total {
            errors.add(
                &[
                    ("account", account_label),
                    ("region", region),
                    ("error", kind.as_str()),
                ],
                *count as f64,
            );
        }
        let Some(verdict) = &target.verdict else {
            continue;
        };
        present.add(&target_labels, if verdict.present() { 1.0 } else { 0.0 });
        if let Some(in_use) = verdict.tag_in_use {
            tag_in_use.add(&target_labels, if in_use { 1.0 } else { 0.0 });
        }
        if let Some(needed) = verdict.required {
            required.add(&target_labels, if needed { 1.0 } else { 0.0 });
        }
        for (state, count) in &verdict.state_counts {
            keys.add(
                &[
                    ("account", account_label),
                    ("region", region),
                    ("state", state.as_str()),
                ],
                *count as f64,
            );
        }
        for key in &verdict.keys {
            let key_labels = [
                ("account", account_label),
                ("region", region),
                ("key_id", key.key_id.as_str()),
            ];
            key_info.add(
                &[
                    ("account", account_label),
                    ("region", region),
                    ("key_id", key.key_id.as_str()),
                    ("key_state", key.state.as_str()),
                ],
                1.0,
            );
            if let Some(ts) = key.deletion_timestamp {
                deletion.add(&key_labels, ts);
            }
            if let Some(enabled) = key.rotation_enabled {
                rotation.add(&key_labels, if enabled { 1.0 } else { 0.0 });
            }
        }
    }

    let families: Vec<MetricFamily> = [
        present,
        keys,
        key_info,
        deletion,
        rotation,
        success,
        duration,
        last_success,
        errors,
        tag_in_use,
        required,
        account_info,
        org_success,
        org_accounts,
        org_last_success,
    ]
    .into_iter()
    .map(|f| f.0)
    .filter(|mf| !mf.get_metric().is_empty())
    .collect();
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&families, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccountId, Config, Region};
    use crate::error::{AwsError, ErrorKind};
    use crate::evaluate::{KeyDescription, KeyFacts, KeyManager, Lookup, Matcher, Tag, evaluate};
    use crate::targets::plan;

    fn snapshot() -> Snapshot {
        let config = Config {
            regions: vec![Region::parse("us-east-1").expect("r")].into(),
            ..Config::default()
        };
        let mut s = Snapshot::new(&plan(&config, None).expect("plan"));
        s.set_account_id(0, AccountId::parse("123456789012").expect("id"));
        s
    }

    fn tagged_key(id: &str, state: &str) -> KeyFacts {
        KeyFacts {
            key_id: id.to_owned(),
            aliases: vec![],
            tags: Lookup::Found(vec![Tag::new("app_tier", "web")]),
            description: Lookup::Found(KeyDescription {
                key_manager: KeyManager::Customer,
                key_state: state.to_owned(),
                deletion_timestamp: (state == "PendingDeletion").then_some(1_900_000_000.0),
                symmetric: true,
                rotatable_origin: true,
            }),
            rotation_enabled: (state != "PendingDeletion").then_some(false),
        }
    }

    fn text(s: &Snapshot) -> String {
        String::from_utf8(render_snapshot(s)).expect("utf8")
    }

    #[test]
    fn present_is_absent_before_the_first_success() {
        let s = snapshot();
        let t = text(&s);
        assert!(!t.contains("app_tier_cmk_present{"), "{t}");
        assert!(
            t.contains(r#"app_tier_cmk_scan_success{account="123456789012",region="us-east-1"} 0"#),
            "{t}"
        );
    }

    #[test]
    fn successful_scan_renders_every_family() {
        let mut s = snapshot();
        let m = Matcher::new("app_tier", &[], false, &["Enabled".into()]);
        let v = evaluate(
            &[
                tagged_key("k1", "Enabled"),
                tagged_key("k2", "PendingDeletion"),
            ],
            &m,
        );
        s.record_success(0, v, &[], 0.25, 1_700_000_000.0);
        let t = text(&s);
        for line in [
            r#"app_tier_cmk_present{account="123456789012",region="us-east-1"} 1"#,
            r#"app_tier_cmk_keys{account="123456789012",region="us-east-1",state="Enabled"} 1"#,
            r#"app_tier_cmk_keys{account="123456789012",region="us-east-1",state="Disabled"} 0"#,
            r#"app_tier_cmk_keys{account="123456789012",region="us-east-1",state="PendingDeletion"} 1"#,
            r#"app_tier_cmk_key_info{account="123456789012",region="us-east-1",key_id="k1",key_state="Enabled"} 1"#,
            r#"app_tier_cmk_key_deletion_timestamp_seconds{account="123456789012",region="us-east-1",key_id="k2"} 1900000000"#,
            r#"app_tier_cmk_key_rotation_enabled{account="123456789012",region="us-east-1",key_id="k1"} 0"#,
            r#"app_tier_cmk_scan_success{account="123456789012",region="us-east-1"} 1"#,
            r#"app_tier_cmk_scan_duration_seconds{account="123456789012",region="us-east-1"} 0.25"#,
            r#"app_tier_cmk_last_success_timestamp_seconds{account="123456789012",region="us-east-1"} 1700000000"#,
            r#"app_tier_cmk_account_info{account="123456789012",account_name="123456789012"} 1"#,
        ] {
            assert!(t.contains(line), "missing {line} in\n{t}");
        }
        assert!(
            !t.contains(r#"key_id="k2"} 0"#),
            "no rotation series for a key pending deletion"
        );
        assert!(t.contains("# TYPE app_tier_cmk_present gauge"));
    }

    #[test]
    fn failed_scan_keeps_cached_values_and_counts_the_error() {
        let mut s = snapshot();
        let m = Matcher::new("app_tier", &[], false, &["Enabled".into()]);
        s.record_success(
            0,
            evaluate(&[tagged_key("k1", "Enabled")], &m),
            &[],
            0.1,
            1.0,
        );
        s.record_failure(
            0,
            AwsError::new("ListKeys", ErrorKind::Throttled, "slow down"),
            0.2,
        );
        let t = text(&s);
        assert!(
            t.contains(r#"app_tier_cmk_present{account="123456789012",region="us-east-1"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"app_tier_cmk_scan_success{account="123456789012",region="us-east-1"} 0"#),
            "{t}"
        );
        assert!(t.contains(r#"app_tier_cmk_scan_errors_total{account="123456789012",region="us-east-1",error="throttled"} 1"#), "{t}");
        assert!(t.contains("# TYPE app_tier_cmk_scan_errors_total counter"));
    }

    #[test]
    fn unknown_account_is_labelled_unknown() {
        let config = Config {
            regions: vec![Region::parse("us-east-1").expect("r")].into(),
            ..Config::default()
        };
        let s = Snapshot::new(&plan(&config, None).expect("plan"));
        let t = text(&s);
        assert!(
            t.contains(r#"app_tier_cmk_scan_success{account="unknown",region="us-east-1"} 0"#),
            "{t}"
        );
    }

    #[test]
    fn live_registry_carries_build_info_and_requests() {
        let metrics = Metrics::new();
        metrics
            .aws_requests_total
            .with_label_values(&["ListKeys", "success"])
            .inc();
        let body =
            String::from_utf8(metrics.render(&SharedSnapshot::new(snapshot()))).expect("utf8");
        assert!(
            body.contains(
                r#"app_tier_cmk_aws_requests_total{operation="ListKeys",outcome="success"} 1"#
            ),
            "{body}"
        );
        assert!(body.contains("app_tier_cmk_build_info{"), "{body}");
    }

    #[test]
    fn rendering_is_cached_per_generation() {
        let metrics = Metrics::new();
        let shared = SharedSnapshot::new(snapshot());
        let first = metrics.snapshot_text(&shared);
        let again = metrics.snapshot_text(&shared);
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "same generation: same bytes"
        );
        shared
            .write()
            .record_failure(0, AwsError::new("ListKeys", ErrorKind::Network, "x"), 0.1);
        let changed = metrics.snapshot_text(&shared);
        assert_ne!(first, changed);
    }
}
