//! Prometheus output: the snapshot rendered as metric families, plus fixed families (build
//! info, shard) and the live registry (AWS request counter, process metrics).
//!
//! The snapshot part is rendered once per snapshot generation and cached, the fixed part at
//! start (and on reload), so a scrape costs a render of the small live registry and hands out shared
//! byte chunks (no copy of the large body), never an AWS call.

use std::fmt::Write as _;
use std::sync::Mutex;

use bytes::Bytes;
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

use crate::shard::Shard;
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
    /// Families that change only with a reload: build and shard.
    fixed: Mutex<Bytes>,
    cache: Mutex<Option<(u64, Bytes)>>,
}

impl Metrics {
    /// Metrics of an unsharded exporter.
    pub fn new() -> Metrics {
        Metrics::for_shard(Shard::ALL)
    }

    /// Metrics of the replica that owns `shard`.
    pub fn for_shard(shard: Shard) -> Metrics {
        let registry = Registry::new();
        let aws_requests_total = IntCounterVec::new(
            Opts::new(
                "app_tier_cmk_aws_requests_total",
                "AWS API requests sent (each HTTP attempt, retries included), by operation and outcome.",
            ),
            &["operation", "outcome"],
        )
        .expect("static metric definition is valid");
        // Registration of distinct, valid static names cannot fail.
        let _ = registry.register(Box::new(aws_requests_total.clone()));
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        Metrics {
            registry,
            aws_requests_total,
            fixed: Mutex::new(Bytes::from(render_fixed(shard))),
            cache: Mutex::new(None),
        }
    }

    /// Adds a live collector (e.g. the reload gauges) to the registry.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        // Only static, distinct names are registered; a clash would be a programming error
        // that the unit tests catch through the rendered output.
        let _ = self.registry.register(collector);
    }

    /// The `/metrics` body in the Prometheus text format, as chunks to send one after the
    /// other: the cached snapshot text and the fixed families are shared, not copied.
    pub fn body(&self, snapshot: &SharedSnapshot) -> [Bytes; 3] {
        let snapshot_text = self.snapshot_text(snapshot);
        let mut live = Vec::with_capacity(4096);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut live);
        let fixed = self.fixed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        [snapshot_text, fixed, Bytes::from(live)]
    }

    /// After a reload: the shard this replica now owns.
    pub fn set_shard(&self, shard: Shard) {
        *self.fixed.lock().unwrap_or_else(|p| p.into_inner()) = Bytes::from(render_fixed(shard));
    }

    /// The full `/metrics` body in one piece.
    pub fn render(&self, snapshot: &SharedSnapshot) -> Vec<u8> {
        self.body(snapshot).concat()
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

/// The type of a metric family, as the text format spells it.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// One metric family, written straight into the text format (no intermediate protobuf
/// objects: a 20,000-series snapshot renders in a few milliseconds).
struct Family {
    name: &'static str,
    help: String,
    kind: Kind,
    samples: String,
}

impl Family {
    fn new(name: &'static str, help: &str, kind: Kind) -> Family {
        Family {
            name,
            help: help.to_owned(),
            kind,
            samples: String::new(),
        }
    }

    fn gauge(name: &'static str, help: &str) -> Family {
        Family::new(name, help, Kind::Gauge)
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let out = &mut self.samples;
        out.push_str(self.name);
        for (i, (name, value)) in labels.iter().enumerate() {
            out.push(if i == 0 { '{' } else { ',' });
            out.push_str(name);
            out.push_str("=\"");
            push_escaped(out, value, true);
            out.push('"');
        }
        if !labels.is_empty() {
            out.push('}');
        }
        out.push(' ');
        push_value(out, value);
        out.push('\n');
    }

    /// `# HELP`, `# TYPE` and the samples; nothing for a family without samples.
    fn write_to(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        out.push_str("# HELP ");
        out.push_str(self.name);
        out.push(' ');
        push_escaped(out, &self.help, false);
        out.push_str("\n# TYPE ");
        out.push_str(self.name);
        out.push_str(match self.kind {
            Kind::Gauge => " gauge\n",
            Kind::Counter => " counter\n",
        });
        out.push_str(&self.samples);
    }
}

/// Escapes as the text format requires: backslash and newline, and in label values the
/// double quote.
fn push_escaped(out: &mut String, text: &str, quote: bool) {
    let needs = |b: u8| b == b'\\' || b == b'\n' || (quote && b == b'"');
    if !text.bytes().any(needs) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn push_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        // Most values are counts, 0/1 and whole seconds: integer formatting is much cheaper.
        let _ = write!(out, "{}", value as i64);
    } else {
        // Writing to a String cannot fail.
        let _ = write!(out, "{value}");
    }
}

/// Families that only a reload changes: build and shard.
fn render_fixed(shard: Shard) -> Vec<u8> {
    let mut build = Family::gauge(
        "app_tier_cmk_build_info",
        "Build of the exporter: version and git revision; always 1.",
    );
    build.add(&[("version", VERSION), ("revision", REVISION)], 1.0);
    let mut shard_info = Family::gauge(
        "app_tier_cmk_shard_info",
        "This replica's shard (--shard) and the number of shards (--total-shards); always 1.",
    );
    let ordinal = shard.ordinal().to_string();
    let total = shard.total().to_string();
    shard_info.add(&[("shard", &ordinal), ("total_shards", &total)], 1.0);
    let mut total_shards = Family::gauge(
        "app_tier_cmk_total_shards",
        "Number of shards (replicas) the accounts are split over.",
    );
    total_shards.add(&[], f64::from(shard.total()));
    let mut out = String::new();
    for family in [build, shard_info, total_shards] {
        family.write_to(&mut out);
    }
    out.into_bytes()
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
        Kind::Counter,
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

    let mut out = String::with_capacity(
        [
            &present,
            &keys,
            &key_info,
            &success,
            &duration,
            &last_success,
        ]
        .iter()
        .map(|f| f.samples.len() + 512)
        .sum::<usize>()
            + 4096,
    );
    for family in [
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
    ] {
        family.write_to(&mut out);
    }
    out.into_bytes()
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

    #[test]
    fn shard_is_exported_as_info_and_total() {
        let metrics = Metrics::for_shard(Shard::new(1, 3).expect("valid"));
        let body =
            String::from_utf8(metrics.render(&SharedSnapshot::new(snapshot()))).expect("utf8");
        assert!(
            body.contains("app_tier_cmk_shard_info{shard=\"1\",total_shards=\"3\"} 1\n"),
            "{body}"
        );
        assert!(body.contains("\napp_tier_cmk_total_shards 3\n"), "{body}");
        assert!(body.contains("# TYPE app_tier_cmk_total_shards gauge\n"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut family = Family::gauge("x", "a \\ b\nc \"d\"");
        family.add(&[("name", "q\"u\\o\nte")], 0.5);
        let mut out = String::new();
        family.write_to(&mut out);
        assert_eq!(
            out,
            "# HELP x a \\\\ b\\nc \"d\"\n# TYPE x gauge\nx{name=\"q\\\"u\\\\o\\nte\"} 0.5\n"
        );
    }

    #[test]
    fn special_values_use_the_text_format_spelling() {
        let mut out = String::new();
        for v in [
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1_700_000_000.0,
            0.25,
        ] {
            push_value(&mut out, v);
            out.push(' ');
        }
        assert_eq!(out, "+Inf -Inf NaN 1700000000 0.25 ");
    }

    #[test]
    fn family_without_samples_is_left_out() {
        let mut out = String::new();
        Family::gauge("x", "help").write_to(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn body_chunks_share_the_cached_snapshot_text() {
        let metrics = Metrics::new();
        let shared = SharedSnapshot::new(snapshot());
        let [first, ..] = metrics.body(&shared);
        let [again, fixed, live] = metrics.body(&shared);
        assert_eq!(first.as_ptr(), again.as_ptr(), "no copy per scrape");
        assert!(
            std::str::from_utf8(&fixed)
                .expect("utf8")
                .contains("app_tier_cmk_build_info{")
        );
        assert!(
            std::str::from_utf8(&live)
                .expect("utf8")
                .contains("process_")
                || cfg!(not(target_os = "linux"))
        );
        let rendered = metrics.render(&shared);
        assert!(rendered.starts_with(&first));
    }

    #[test]
    fn whole_body_passes_a_format_check() {
        // Every line is a comment or `name{labels} value`, and every family's samples follow
        // its own TYPE line.
        let mut s = snapshot();
        let m = Matcher::new("app_tier", &[], false, &["Enabled".into()]);
        s.record_success(
            0,
            evaluate(&[tagged_key("k1", "Enabled")], &m),
            &[],
            0.1,
            1.0,
        );
        let metrics = Metrics::for_shard(Shard::new(0, 2).expect("valid"));
        let body = String::from_utf8(metrics.render(&SharedSnapshot::new(s))).expect("utf8");
        let mut current = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap_or_default().to_owned();
                assert!(
                    seen.insert(current.clone()),
                    "family {current} split in two"
                );
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert!(
                    name == current || name.starts_with(&format!("{current}_")),
                    "{line} outside its family {current}"
                );
                let value = line.rsplit(' ').next().unwrap_or_default();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }
}
