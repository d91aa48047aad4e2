//! Integration tests of the long-running exporter: metric values against keys seeded
//! in moto (several accounts and regions), the HTTP endpoints, readiness, recovery
//! after an outage, changes between rounds, the match options, and signals.
//!
//! Every test starts its own `moto_server` and exporter on free loopback ports.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

const PROD_ACCOUNT: &str = "111111111111";
const SHARED_ACCOUNT: &str = "222222222222";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Asserts that exactly one sample matches and that it has the expected value.
#[track_caller]
fn assert_sample(body: &str, name: &str, labels: &[(&str, &str)], expected: f64) {
    let found = matching_samples(body, name, labels);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {name}{labels:?}, found {found:?}\nbody:\n{body}"
    );
    assert_eq!(
        found[0].value, expected,
        "{name}{labels:?} = {} (expected {expected})\nbody:\n{body}",
        found[0].value
    );
}

/// Asserts that no sample matches.
#[track_caller]
fn assert_no_sample(body: &str, name: &str, labels: &[(&str, &str)]) {
    let found = matching_samples(body, name, labels);
    assert!(
        found.is_empty(),
        "expected no {name}{labels:?}, found {found:?}\nbody:\n{body}"
    );
}

/// Value of the only matching sample, or None (panics when several match).
#[track_caller]
fn single(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = matching_samples(body, name, labels);
    assert!(found.len() <= 1, "several {name}{labels:?}: {found:?}");
    found.first().map(|s| s.value)
}

/// Sorted `key_id`s of the matching samples.
fn key_ids_of(body: &str, name: &str, labels: &[(&str, &str)]) -> Vec<String> {
    let mut ids: Vec<String> = matching_samples(body, name, labels)
        .into_iter()
        .map(|s| s.labels.get("key_id").cloned().unwrap_or_default())
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

/// Starts an exporter against `endpoint` with extra environment variables.
async fn start_exporter(config: &str, endpoint: &str, env: &[(&str, &str)]) -> Exporter {
    Exporter::builder(config)
        .moto(endpoint)
        .envs(env)
        .start()
        .await
}

/// Waits for `/readyz` and returns a `/metrics` body.
async fn ready_metrics(exporter: &Exporter) -> String {
    exporter.wait_ready(READY_TIMEOUT).await;
    exporter.metrics().await
}

/// Sends an arbitrary request; returns status, headers and body.
async fn request(
    exporter: &Exporter,
    method: reqwest::Method,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = http_client()
        .request(method.clone(), format!("{}{path}", exporter.base_url()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\nlogs:\n{}", exporter.logs()));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("read body");
    (status, headers, body)
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
        .to_str()
        .expect("ASCII header")
}

// ---------------------------------------------------------------------------
// Metric values for several accounts and regions
// ---------------------------------------------------------------------------

/// Keys seeded by [`seed_three_accounts`].
struct ThreeAccounts {
    main_enabled: String,
    main_untagged: Vec<String>,
    main_other_tag: String,
    main_disabled: String,
    prod_aliased: String,
    prod_pending_east: String,
    prod_pending_east_date: i64,
    prod_pending_west: String,
    prod_pending_west_date: i64,
    shared_denied_east: String,
    shared_denied_west: String,
    shared_enabled_west: String,
}

/// main (default credentials, 123456789012):
///   us-east-1: tagged enabled key with rotation, untagged key, key with another tag
///   eu-west-1: tagged disabled key, untagged key
/// prod (111111111111, AssumeRole with external ID):
///   us-east-1: tagged enabled key behind alias/app-tier, tagged key pending deletion (7 d)
///   eu-west-1: tagged key pending deletion (30 d)
/// unnamed (222222222222, AssumeRole without external ID):
///   us-east-1: tagged key whose policy denies DescribeKey
///   eu-west-1: the same, plus a tagged enabled key
async fn seed_three_accounts(seeder: &Seeder) -> ThreeAccounts {
    let main_east = seeder.kms(None, "us-east-1").await;
    let main_west = seeder.kms(None, "eu-west-1").await;
    let prod_east = seeder.kms(Some(PROD_ACCOUNT), "us-east-1").await;
    let prod_west = seeder.kms(Some(PROD_ACCOUNT), "eu-west-1").await;
    let shared_east = seeder.kms(Some(SHARED_ACCOUNT), "us-east-1").await;
    let shared_west = seeder.kms(Some(SHARED_ACCOUNT), "eu-west-1").await;

    let main_enabled = create_key(&main_east, &[("app_tier", "prod"), ("team", "core")]).await;
    enable_key_rotation(&main_east, &main_enabled).await;
    let untagged_east = create_key(&main_east, &[]).await;
    let main_other_tag = create_key(&main_east, &[("owner", "app_tier")]).await;

    let main_disabled = create_key(&main_west, &[("app_tier", "prod")]).await;
    disable_key(&main_west, &main_disabled).await;
    let untagged_west = create_key(&main_west, &[("team", "core")]).await;

    let prod_aliased = create_key(&prod_east, &[("app_tier", "prod")]).await;
    create_alias(&prod_east, "alias/app-tier", &prod_aliased).await;
    let prod_pending_east = create_key(&prod_east, &[("app_tier", "prod")]).await;
    let prod_pending_east_date = schedule_deletion(&prod_east, &prod_pending_east, 7).await;

    let prod_pending_west = create_key(&prod_west, &[("app_tier", "prod")]).await;
    let prod_pending_west_date = schedule_deletion(&prod_west, &prod_pending_west, 30).await;

    let shared_denied_east = create_key(&shared_east, &[("app_tier", "prod")]).await;
    deny_describe_key(&shared_east, &shared_denied_east).await;

    let shared_denied_west = create_key(&shared_west, &[("app_tier", "prod")]).await;
    deny_describe_key(&shared_west, &shared_denied_west).await;
    let shared_enabled_west = create_key(&shared_west, &[("app_tier", "prod")]).await;

    ThreeAccounts {
        main_enabled,
        main_untagged: vec![untagged_east, untagged_west],
        main_other_tag,
        main_disabled,
        prod_aliased,
        prod_pending_east,
        prod_pending_east_date,
        prod_pending_west,
        prod_pending_west_date,
        shared_denied_east,
        shared_denied_west,
        shared_enabled_west,
    }
}

fn three_accounts_config(interval: &str) -> String {
    format!(
        r#"regions = ["us-east-1", "eu-west-1"]

[scan]
interval = "{interval}"
timeout = "20s"

[[accounts]]
name = "main"

[[accounts]]
name = "prod"
role_arn = "arn:aws:iam::{PROD_ACCOUNT}:role/AppTierCmkScanner"
external_id = "ext-4711"

[[accounts]]
role_arn = "arn:aws:iam::{SHARED_ACCOUNT}:role/AppTierCmkScanner"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_accounts_in_two_regions_export_exact_per_target_values() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let keys = seed_three_accounts(&seeder).await;
    let started = unix_now();
    // One round only (the next is a minute away), so counters are exact.
    let exporter = start_exporter(&three_accounts_config("1m"), &moto.endpoint(), &[]).await;
    let body = ready_metrics(&exporter).await;

    let main = DEFAULT_ACCOUNT;
    let (east, west) = ("us-east-1", "eu-west-1");
    let t =
        |account: &'static str, region: &'static str| [("account", account), ("region", region)];

    // Every target scanned successfully; the denied key does not fail the scan.
    for account in [main, PROD_ACCOUNT, SHARED_ACCOUNT] {
        for region in [east, west] {
            assert_sample(&body, "app_tier_cmk_scan_success", &t(account, region), 1.0);
            let duration = single(
                &body,
                "app_tier_cmk_scan_duration_seconds",
                &t(account, region),
            )
            .expect("scan duration exported");
            assert!((0.0..20.0).contains(&duration), "duration {duration}");
            let last = single(
                &body,
                "app_tier_cmk_last_success_timestamp_seconds",
                &t(account, region),
            )
            .expect("last success exported");
            assert!(
                last >= started - 1.0 && last <= unix_now() + 1.0,
                "last success {last} not within the test (started {started})"
            );
        }
    }
    assert_eq!(
        matching_samples(&body, "app_tier_cmk_scan_success", &[]).len(),
        6,
        "one scan_success per target:\n{body}"
    );
    assert_no_sample(
        &body,
        "app_tier_cmk_scan_success",
        &[("account", "unknown")],
    );

    // present: an enabled tagged key passes; disabled / pending / refused ones do not.
    assert_sample(&body, "app_tier_cmk_present", &t(main, east), 1.0);
    assert_sample(&body, "app_tier_cmk_present", &t(main, west), 0.0);
    assert_sample(&body, "app_tier_cmk_present", &t(PROD_ACCOUNT, east), 1.0);
    assert_sample(&body, "app_tier_cmk_present", &t(PROD_ACCOUNT, west), 0.0);
    assert_sample(&body, "app_tier_cmk_present", &t(SHARED_ACCOUNT, east), 0.0);
    assert_sample(&body, "app_tier_cmk_present", &t(SHARED_ACCOUNT, west), 1.0);

    // keys by state: Enabled, Disabled, PendingDeletion always; Unknown only when refused
    // (None: no series).
    let states = ["Enabled", "Disabled", "PendingDeletion", "Unknown"];
    let expected_states = [
        (main, east, [Some(1.0), Some(0.0), Some(0.0), None]),
        (main, west, [Some(0.0), Some(1.0), Some(0.0), None]),
        (PROD_ACCOUNT, east, [Some(1.0), Some(0.0), Some(1.0), None]),
        (PROD_ACCOUNT, west, [Some(0.0), Some(0.0), Some(1.0), None]),
        (
            SHARED_ACCOUNT,
            east,
            [Some(0.0), Some(0.0), Some(0.0), Some(1.0)],
        ),
        (
            SHARED_ACCOUNT,
            west,
            [Some(1.0), Some(0.0), Some(0.0), Some(1.0)],
        ),
    ];
    for (account, region, counts) in expected_states {
        for (state, count) in states.into_iter().zip(counts) {
            let labels = [("account", account), ("region", region), ("state", state)];
            match count {
                Some(count) => assert_sample(&body, "app_tier_cmk_keys", &labels, count),
                None => assert_no_sample(&body, "app_tier_cmk_keys", &labels),
            }
        }
    }
    assert_eq!(
        matching_samples(&body, "app_tier_cmk_keys", &[]).len(),
        20,
        "no other app_tier_cmk_keys series:\n{body}"
    );

    // key_info: one series per tagged customer-managed key, with its state.
    let info = |account: &str, region: &str, key: &str, state: &str| {
        assert_sample(
            &body,
            "app_tier_cmk_key_info",
            &[
                ("account", account),
                ("region", region),
                ("key_id", key),
                ("key_state", state),
            ],
            1.0,
        );
    };
    info(main, east, &keys.main_enabled, "Enabled");
    info(main, west, &keys.main_disabled, "Disabled");
    info(PROD_ACCOUNT, east, &keys.prod_aliased, "Enabled");
    info(
        PROD_ACCOUNT,
        east,
        &keys.prod_pending_east,
        "PendingDeletion",
    );
    info(
        PROD_ACCOUNT,
        west,
        &keys.prod_pending_west,
        "PendingDeletion",
    );
    info(SHARED_ACCOUNT, east, &keys.shared_denied_east, "Unknown");
    info(SHARED_ACCOUNT, west, &keys.shared_denied_west, "Unknown");
    info(SHARED_ACCOUNT, west, &keys.shared_enabled_west, "Enabled");
    let all_tagged = sorted(&[
        &keys.main_enabled,
        &keys.main_disabled,
        &keys.prod_aliased,
        &keys.prod_pending_east,
        &keys.prod_pending_west,
        &keys.shared_denied_east,
        &keys.shared_denied_west,
        &keys.shared_enabled_west,
    ]);
    assert_eq!(
        key_ids_of(&body, "app_tier_cmk_key_info", &[]),
        all_tagged,
        "untagged keys, keys with another tag and alias/aws/* keys must have no key_info:\n{body}"
    );
    for untagged in keys.main_untagged.iter().chain([&keys.main_other_tag]) {
        assert_no_sample(&body, "app_tier_cmk_key_info", &[("key_id", untagged)]);
    }

    // Deletion timestamps are the dates KMS scheduled.
    for (key, region, date) in [
        (&keys.prod_pending_east, east, keys.prod_pending_east_date),
        (&keys.prod_pending_west, west, keys.prod_pending_west_date),
    ] {
        let ts = single(
            &body,
            "app_tier_cmk_key_deletion_timestamp_seconds",
            &[
                ("account", PROD_ACCOUNT),
                ("region", region),
                ("key_id", key),
            ],
        )
        .unwrap_or_else(|| panic!("no deletion timestamp for {key}:\n{body}"));
        assert_eq!(ts.floor(), date as f64, "deletion timestamp of {key}");
    }
    assert_eq!(
        key_ids_of(&body, "app_tier_cmk_key_deletion_timestamp_seconds", &[]),
        sorted(&[&keys.prod_pending_east, &keys.prod_pending_west]),
        "only keys pending deletion have a deletion timestamp"
    );

    // Rotation: 1 after EnableKeyRotation, 0 otherwise; none for pending/refused keys.
    assert_sample(
        &body,
        "app_tier_cmk_key_rotation_enabled",
        &[
            ("account", main),
            ("region", east),
            ("key_id", &keys.main_enabled),
        ],
        1.0,
    );
    for (account, region, key) in [
        (main, west, &keys.main_disabled),
        (PROD_ACCOUNT, east, &keys.prod_aliased),
        (SHARED_ACCOUNT, west, &keys.shared_enabled_west),
    ] {
        assert_sample(
            &body,
            "app_tier_cmk_key_rotation_enabled",
            &[("account", account), ("region", region), ("key_id", key)],
            0.0,
        );
    }
    assert_eq!(
        matching_samples(&body, "app_tier_cmk_key_rotation_enabled", &[]).len(),
        4,
        "no rotation series for keys pending deletion or refused:\n{body}"
    );

    // Errors: only the refused DescribeKey calls, once per round, as access_denied.
    assert_sample(
        &body,
        "app_tier_cmk_scan_errors_total",
        &[
            ("account", SHARED_ACCOUNT),
            ("region", east),
            ("error", "access_denied"),
        ],
        1.0,
    );
    assert_sample(
        &body,
        "app_tier_cmk_scan_errors_total",
        &[
            ("account", SHARED_ACCOUNT),
            ("region", west),
            ("error", "access_denied"),
        ],
        1.0,
    );
    assert_eq!(
        matching_samples(&body, "app_tier_cmk_scan_errors_total", &[]).len(),
        2,
        "only non-zero error kinds are exported:\n{body}"
    );

    // Accounts: name, or the account ID when unnamed.
    assert_sample(
        &body,
        "app_tier_cmk_account_info",
        &[("account", main), ("account_name", "main")],
        1.0,
    );
    assert_sample(
        &body,
        "app_tier_cmk_account_info",
        &[("account", PROD_ACCOUNT), ("account_name", "prod")],
        1.0,
    );
    assert_sample(
        &body,
        "app_tier_cmk_account_info",
        &[
            ("account", SHARED_ACCOUNT),
            ("account_name", SHARED_ACCOUNT),
        ],
        1.0,
    );
    assert_eq!(
        matching_samples(&body, "app_tier_cmk_account_info", &[]).len(),
        3
    );

    // AWS requests of that single round.
    let requests = |operation: &str, outcome: &str| {
        single(
            &body,
            "app_tier_cmk_aws_requests_total",
            &[("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!(
        requests("GetCallerIdentity", "success"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(requests("AssumeRole", "success"), Some(2.0), "{body}");
    assert_eq!(requests("ListKeys", "success"), Some(6.0), "{body}");
    assert_eq!(
        requests("DescribeKey", "access_denied"),
        Some(2.0),
        "{body}"
    );
    for operation in [
        "ListAliases",
        "ListResourceTags",
        "DescribeKey",
        "GetKeyRotationStatus",
    ] {
        assert!(
            requests(operation, "success").is_some_and(|n| n >= 1.0),
            "no successful {operation}:\n{body}"
        );
    }

    // The scanner must not DescribeKey alias/aws/* names (moto would create keys).
    let main_east = seeder.kms(None, east).await;
    let mut listed = list_key_ids(&main_east).await;
    listed.sort();
    let mut seeded = vec![
        keys.main_enabled.clone(),
        keys.main_untagged[0].clone(),
        keys.main_other_tag.clone(),
    ];
    seeded.sort();
    assert_eq!(listed, seeded, "the scan created keys behind alias/aws/*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_scrape_passes_promtool_check_metrics() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    // Enough variety that every metric family has series.
    let enabled = create_key(&kms, &[("app_tier", "web")]).await;
    enable_key_rotation(&kms, &enabled).await;
    let pending = create_key(&kms, &[("app_tier", "web")]).await;
    schedule_deletion(&kms, &pending, 10).await;
    let denied = create_key(&kms, &[("app_tier", "web")]).await;
    deny_describe_key(&kms, &denied).await;

    let exporter = start_exporter(
        "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1m\"\n",
        &moto.endpoint(),
        &[],
    )
    .await;
    let body = ready_metrics(&exporter).await;
    for family in [
        "app_tier_cmk_present",
        "app_tier_cmk_keys",
        "app_tier_cmk_key_info",
        "app_tier_cmk_key_deletion_timestamp_seconds",
        "app_tier_cmk_key_rotation_enabled",
        "app_tier_cmk_scan_success",
        "app_tier_cmk_scan_duration_seconds",
        "app_tier_cmk_last_success_timestamp_seconds",
        "app_tier_cmk_scan_errors_total",
        "app_tier_cmk_aws_requests_total",
        "app_tier_cmk_account_info",
        "app_tier_cmk_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(
            !matching_samples(&body, family, &[]).is_empty(),
            "{family} missing:\n{body}"
        );
        assert!(
            body.contains(&format!("# HELP {family} "))
                && body.contains(&format!("# TYPE {family} ")),
            "{family} lacks HELP/TYPE:\n{body}"
        );
    }
    assert!(
        body.contains("# TYPE app_tier_cmk_scan_errors_total counter"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE app_tier_cmk_aws_requests_total counter"),
        "{body}"
    );
    assert!(body.contains("# TYPE app_tier_cmk_present gauge"), "{body}");
    let build = matching_samples(&body, "app_tier_cmk_build_info", &[]);
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build[0].labels["revision"].is_empty());
    assert_eq!(build[0].value, 1.0);

    let (ok, output) = promtool_check_metrics(&body);
    assert!(
        ok,
        "promtool check metrics failed:\n{output}\nbody:\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_credentials_account_label_becomes_the_12_digit_account_id() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    let key = create_key(&kms, &[("app_tier", "prod")]).await;
    // No accounts and no regions: the default credentials in AWS_REGION (us-east-1).
    let exporter = start_exporter("[scan]\ninterval = \"1m\"\n", &moto.endpoint(), &[]).await;
    let body = ready_metrics(&exporter).await;
    let target = [("account", DEFAULT_ACCOUNT), ("region", "us-east-1")];
    assert_sample(&body, "app_tier_cmk_present", &target, 1.0);
    assert_sample(&body, "app_tier_cmk_scan_success", &target, 1.0);
    assert_sample(
        &body,
        "app_tier_cmk_key_info",
        &[
            ("account", DEFAULT_ACCOUNT),
            ("key_id", &key),
            ("key_state", "Enabled"),
        ],
        1.0,
    );
    assert_sample(
        &body,
        "app_tier_cmk_account_info",
        &[
            ("account", DEFAULT_ACCOUNT),
            ("account_name", DEFAULT_ACCOUNT),
        ],
        1.0,
    );
    let accounts: Vec<String> = parse_metrics(&body)
        .into_iter()
        .filter_map(|s| s.labels.get("account").cloned())
        .filter(|a| a != DEFAULT_ACCOUNT)
        .collect();
    assert!(
        accounts.is_empty(),
        "other account labels {accounts:?}:\n{body}"
    );
    assert_eq!(
        matching_samples(&body, "app_tier_cmk_scan_success", &[]).len(),
        1,
        "exactly one target (AWS_REGION):\n{body}"
    );
}

// ---------------------------------------------------------------------------
// Match options (environment overrides on the same keys)
// ---------------------------------------------------------------------------

struct MatchKeys {
    /// AppTier=Web, enabled
    camel_web: String,
    /// app_tier=batch, disabled
    batch_disabled: String,
    /// app_tier=legacy, enabled
    legacy: String,
    /// APP_TIER=Batch, enabled
    upper_batch: String,
}

async fn seed_match_keys(moto: &Moto) -> MatchKeys {
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    let camel_web = create_key(&kms, &[("AppTier", "Web")]).await;
    let batch_disabled = create_key(&kms, &[("app_tier", "batch")]).await;
    disable_key(&kms, &batch_disabled).await;
    let legacy = create_key(&kms, &[("app_tier", "legacy")]).await;
    let upper_batch = create_key(&kms, &[("APP_TIER", "Batch")]).await;
    MatchKeys {
        camel_web,
        batch_disabled,
        legacy,
        upper_batch,
    }
}

const MATCH_CONFIG: &str = "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1m\"\n";

/// (present, keys Enabled, keys Disabled, sorted key_info key ids) of us-east-1.
async fn match_outcome(moto: &Moto, env: &[(&str, &str)]) -> (f64, f64, f64, Vec<String>) {
    let exporter = start_exporter(MATCH_CONFIG, &moto.endpoint(), env).await;
    let body = ready_metrics(&exporter).await;
    let target = [("account", DEFAULT_ACCOUNT), ("region", "us-east-1")];
    assert_sample(&body, "app_tier_cmk_scan_success", &target, 1.0);
    let state = |s: &str| {
        single(
            &body,
            "app_tier_cmk_keys",
            &[
                ("account", DEFAULT_ACCOUNT),
                ("region", "us-east-1"),
                ("state", s),
            ],
        )
        .unwrap_or_else(|| panic!("no keys{{state={s}}} with {env:?}:\n{body}"))
    };
    (
        single(&body, "app_tier_cmk_present", &target)
            .unwrap_or_else(|| panic!("no present with {env:?}:\n{body}")),
        state("Enabled"),
        state("Disabled"),
        key_ids_of(&body, "app_tier_cmk_key_info", &[]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_key_is_exact_and_case_sensitive_by_default() {
    let moto = Moto::start().await;
    let k = seed_match_keys(&moto).await;
    // Default tag_key app_tier: batch (disabled) and legacy (enabled); not AppTier, APP_TIER.
    let outcome = match_outcome(&moto, &[]).await;
    assert_eq!(
        outcome,
        (1.0, 1.0, 1.0, sorted(&[&k.batch_disabled, &k.legacy])),
        "defaults"
    );
    // APP_TIER_CMK_MATCH__TAG_KEY=AppTier: only the AppTier key.
    let outcome = match_outcome(&moto, &[("APP_TIER_CMK_MATCH__TAG_KEY", "AppTier")]).await;
    assert_eq!(
        outcome,
        (1.0, 1.0, 0.0, sorted(&[&k.camel_web])),
        "tag_key=AppTier"
    );
    // A tag key that only differs in case matches nothing.
    let outcome = match_outcome(&moto, &[("APP_TIER_CMK_MATCH__TAG_KEY", "apptier")]).await;
    assert_eq!(outcome, (0.0, 0.0, 0.0, vec![]), "tag_key=apptier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_values_restricts_matching_keys_to_the_listed_values() {
    let moto = Moto::start().await;
    let k = seed_match_keys(&moto).await;
    // Only app_tier=batch is tagged now, and it is disabled: not present.
    let outcome = match_outcome(&moto, &[("APP_TIER_CMK_MATCH__TAG_VALUES", r#"["batch"]"#)]).await;
    assert_eq!(
        outcome,
        (0.0, 0.0, 1.0, sorted(&[&k.batch_disabled])),
        "tag_values=[batch]"
    );
    // Two values: legacy (enabled) makes it present again.
    let outcome = match_outcome(
        &moto,
        &[("APP_TIER_CMK_MATCH__TAG_VALUES", r#"["batch", "legacy"]"#)],
    )
    .await;
    assert_eq!(
        outcome,
        (1.0, 1.0, 1.0, sorted(&[&k.batch_disabled, &k.legacy])),
        "tag_values=[batch, legacy]"
    );
    // Values are case-sensitive by default.
    let outcome = match_outcome(
        &moto,
        &[("APP_TIER_CMK_MATCH__TAG_VALUES", r#"["LEGACY"]"#)],
    )
    .await;
    assert_eq!(outcome, (0.0, 0.0, 0.0, vec![]), "tag_values=[LEGACY]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_insensitive_matches_tag_key_and_value_in_any_case() {
    let moto = Moto::start().await;
    let k = seed_match_keys(&moto).await;
    let outcome = match_outcome(
        &moto,
        &[
            ("APP_TIER_CMK_MATCH__TAG_KEY", "apptier"),
            ("APP_TIER_CMK_MATCH__TAG_VALUES", r#"["web"]"#),
            ("APP_TIER_CMK_MATCH__CASE_INSENSITIVE", "true"),
        ],
    )
    .await;
    assert_eq!(
        outcome,
        (1.0, 1.0, 0.0, sorted(&[&k.camel_web])),
        "apptier=web, any case"
    );
    // app_tier in any case with value batch: the disabled key and APP_TIER=Batch.
    let outcome = match_outcome(
        &moto,
        &[
            ("APP_TIER_CMK_MATCH__TAG_VALUES", r#"["BATCH"]"#),
            ("APP_TIER_CMK_MATCH__CASE_INSENSITIVE", "true"),
        ],
    )
    .await;
    assert_eq!(
        outcome,
        (1.0, 1.0, 1.0, sorted(&[&k.batch_disabled, &k.upper_batch])),
        "app_tier=BATCH, any case"
    );
    // The same without case_insensitive matches nothing.
    let outcome = match_outcome(
        &moto,
        &[
            ("APP_TIER_CMK_MATCH__TAG_KEY", "apptier"),
            ("APP_TIER_CMK_MATCH__TAG_VALUES", r#"["web"]"#),
            ("APP_TIER_CMK_MATCH__CASE_INSENSITIVE", "false"),
        ],
    )
    .await;
    assert_eq!(outcome, (0.0, 0.0, 0.0, vec![]), "apptier=web, exact case");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_states_option_decides_which_states_count_as_present() {
    let moto = Moto::start().await;
    let k = seed_match_keys(&moto).await;
    let batch_only = ("APP_TIER_CMK_MATCH__TAG_VALUES", r#"["batch"]"#);
    // A disabled key counts once Disabled is a counted state.
    let outcome = match_outcome(
        &moto,
        &[
            batch_only,
            (
                "APP_TIER_CMK_MATCH__KEY_STATES",
                r#"["Enabled", "Disabled"]"#,
            ),
        ],
    )
    .await;
    assert_eq!(
        outcome,
        (1.0, 0.0, 1.0, sorted(&[&k.batch_disabled])),
        "Enabled|Disabled"
    );
    // Only Disabled counted: legacy (enabled) alone is not present.
    let outcome = match_outcome(
        &moto,
        &[
            ("APP_TIER_CMK_MATCH__TAG_VALUES", r#"["legacy"]"#),
            ("APP_TIER_CMK_MATCH__KEY_STATES", r#"["Disabled"]"#),
        ],
    )
    .await;
    assert_eq!(
        outcome,
        (0.0, 1.0, 0.0, sorted(&[&k.legacy])),
        "Disabled only"
    );
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_answer_landing_page_head_404_and_405() {
    use reqwest::Method;
    let moto = Moto::start().await;
    let exporter = start_exporter(
        "metrics_path = \"/custom/metrics\"\nregions = [\"us-east-1\"]\n[scan]\ninterval = \"1m\"\n",
        &moto.endpoint(),
        &[],
    )
    .await;
    exporter.wait_ready(READY_TIMEOUT).await;

    // The configured metrics path serves the exposition format.
    let (status, headers, body) = request(&exporter, Method::GET, "/custom/metrics").await;
    assert_eq!(status, 200, "{body}");
    let content_type = header(&headers, "content-type");
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );
    assert_sample(
        &body,
        "app_tier_cmk_scan_success",
        &[("account", DEFAULT_ACCOUNT), ("region", "us-east-1")],
        1.0,
    );
    // Query strings do not matter.
    assert_eq!(
        request(&exporter, Method::GET, "/custom/metrics?x=1")
            .await
            .0,
        200
    );

    // HEAD: same status and type, no body.
    let (status, headers, body) = request(&exporter, Method::HEAD, "/custom/metrics").await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").starts_with("text/plain"));
    assert_eq!(body, "");
    for path in ["/", "/healthz", "/readyz"] {
        let (status, _, body) = request(&exporter, Method::HEAD, path).await;
        assert_eq!((status, body.as_str()), (200, ""), "HEAD {path}");
    }

    // The default /metrics is not served when another path is configured.
    let (status, _, _) = request(&exporter, Method::GET, "/metrics").await;
    assert_eq!(status, 404);
    for path in [
        "/nope",
        "/custom",
        "/custom/metrics/",
        "/healthz/x",
        "/favicon.ico",
    ] {
        assert_eq!(
            request(&exporter, Method::GET, path).await.0,
            404,
            "GET {path}"
        );
    }
    // Unknown path with another method: 404 as well.
    assert_eq!(request(&exporter, Method::POST, "/nope").await.0, 404);

    // Known paths with other methods: 405 and Allow.
    for (method, path) in [
        (Method::POST, "/custom/metrics"),
        (Method::PUT, "/custom/metrics"),
        (Method::DELETE, "/healthz"),
        (Method::POST, "/readyz"),
        (Method::PATCH, "/"),
    ] {
        let (status, headers, _) = request(&exporter, method.clone(), path).await;
        assert_eq!(status, 405, "{method} {path}");
        assert_eq!(header(&headers, "allow"), "GET, HEAD", "{method} {path}");
    }

    // Health and readiness.
    assert_eq!(exporter.get("/healthz").await.0, 200);
    assert_eq!(exporter.get("/readyz").await.0, 200);

    // Landing page: HTML that links to the metrics path.
    let (status, headers, body) = request(&exporter, Method::GET, "/").await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type").starts_with("text/html"),
        "{headers:?}"
    );
    assert!(body.contains("<html"), "{body}");
    assert!(body.contains("href=\"/custom/metrics\""), "{body}");
    assert!(!body.contains("href=\"/metrics\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_every_target_was_scanned_then_200() {
    // An endpoint that never answers: each target's first scan lasts scan.timeout.
    let blackhole = Blackhole::start();
    let config = format!(
        r#"regions = ["us-east-1", "eu-west-1"]
[scan]
interval = "1m"
timeout = "2s"
[[accounts]]
account_id = "{DEFAULT_ACCOUNT}"
"#
    );
    let started = Instant::now();
    let exporter = start_exporter(&config, &blackhole.endpoint(), &[]).await;
    let (status, body) = exporter.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body.trim(), "not ready: 0 of 2 targets scanned");
    // Liveness does not depend on the scan.
    assert_eq!(exporter.get("/healthz").await.0, 200);
    let body = exporter.metrics().await;
    assert_no_sample(&body, "app_tier_cmk_present", &[]);
    assert_sample(
        &body,
        "app_tier_cmk_scan_success",
        &[("account", DEFAULT_ACCOUNT), ("region", "us-east-1")],
        0.0,
    );

    exporter.wait_ready(Duration::from_secs(15)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "ready after {elapsed:?}, before scan.timeout ran out"
    );
    let (status, body) = exporter.get("/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));

    // Timed-out scans count as scanned: scan_success 0, a timeout error, no present.
    let body = exporter.metrics().await;
    for region in ["us-east-1", "eu-west-1"] {
        let target = [("account", DEFAULT_ACCOUNT), ("region", region)];
        assert_sample(&body, "app_tier_cmk_scan_success", &target, 0.0);
        assert_sample(
            &body,
            "app_tier_cmk_scan_errors_total",
            &[
                ("account", DEFAULT_ACCOUNT),
                ("region", region),
                ("error", "timeout"),
            ],
            1.0,
        );
        let duration = single(&body, "app_tier_cmk_scan_duration_seconds", &target)
            .expect("duration of the timed-out scan");
        assert!((1.5..10.0).contains(&duration), "duration {duration}");
    }
    assert_no_sample(&body, "app_tier_cmk_present", &[]);
    assert_no_sample(&body, "app_tier_cmk_last_success_timestamp_seconds", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_timeout_also_bounds_learning_the_account_id() {
    // Same hanging endpoint, but the account ID must be learnt with GetCallerIdentity
    // first. That call is part of the target's scan; it must not hold the round (and
    // readiness) for the SDK's 5 attempts x 30 s.
    let blackhole = Blackhole::start();
    let exporter = start_exporter(
        "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1m\"\ntimeout = \"2s\"\n",
        &blackhole.endpoint(),
        &[],
    )
    .await;
    exporter.wait_ready(Duration::from_secs(15)).await;
    let body = exporter.metrics().await;
    assert_sample(
        &body,
        "app_tier_cmk_scan_errors_total",
        &[
            ("account", "unknown"),
            ("region", "us-east-1"),
            ("error", "timeout"),
        ],
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_still_becomes_ready_with_network_errors() {
    // Nothing listens on this port: connection refused.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let exporter = start_exporter(
        "regions = [\"us-east-1\", \"eu-west-1\"]\n[scan]\ninterval = \"1m\"\n",
        &endpoint,
        &[],
    )
    .await;
    // A failed scan counts as scanned.
    exporter.wait_ready(READY_TIMEOUT).await;
    let body = exporter.metrics().await;
    for region in ["us-east-1", "eu-west-1"] {
        let target = [("account", "unknown"), ("region", region)];
        assert_sample(&body, "app_tier_cmk_scan_success", &target, 0.0);
        assert_sample(
            &body,
            "app_tier_cmk_scan_errors_total",
            &[
                ("account", "unknown"),
                ("region", region),
                ("error", "network"),
            ],
            1.0,
        );
    }
    assert_no_sample(&body, "app_tier_cmk_present", &[]);
    assert_no_sample(&body, "app_tier_cmk_keys", &[]);
    assert_no_sample(&body, "app_tier_cmk_key_info", &[]);
    assert_no_sample(&body, "app_tier_cmk_last_success_timestamp_seconds", &[]);
    assert_sample(
        &body,
        "app_tier_cmk_account_info",
        &[("account", "unknown"), ("account_name", "unknown")],
        1.0,
    );
    assert!(
        single(
            &body,
            "app_tier_cmk_aws_requests_total",
            &[("operation", "GetCallerIdentity"), ("outcome", "network")]
        )
        .is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert_no_sample(
        &body,
        "app_tier_cmk_aws_requests_total",
        &[("outcome", "success")],
    );
    let (ok, output) = promtool_check_metrics(&body);
    assert!(ok, "{output}");
}

// ---------------------------------------------------------------------------
// Rounds: recovery, changes, failures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_recovers_when_the_endpoint_comes_back() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let exporter = start_exporter(
        "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1s\"\ntimeout = \"20s\"\n",
        &endpoint,
        &[],
    )
    .await;
    let unknown = [("account", "unknown"), ("region", "us-east-1")];
    let body = exporter
        .wait_until(
            |m| {
                single(m, "app_tier_cmk_scan_success", &unknown) == Some(0.0)
                    && single(
                        m,
                        "app_tier_cmk_scan_errors_total",
                        &[("account", "unknown"), ("error", "network")],
                    )
                    .is_some_and(|n| n >= 1.0)
            },
            CHANGE_TIMEOUT,
        )
        .await;
    assert_no_sample(&body, "app_tier_cmk_present", &[]);

    // AWS comes back, with the key.
    let moto = Moto::start_on(port).await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    let key = create_key(&kms, &[("app_tier", "prod")]).await;

    let target = [("account", DEFAULT_ACCOUNT), ("region", "us-east-1")];
    let body = exporter
        .wait_until(
            |m| {
                single(m, "app_tier_cmk_scan_success", &target) == Some(1.0)
                    && single(m, "app_tier_cmk_present", &target) == Some(1.0)
            },
            Duration::from_secs(45),
        )
        .await;
    assert_sample(
        &body,
        "app_tier_cmk_key_info",
        &[
            ("account", DEFAULT_ACCOUNT),
            ("key_id", &key),
            ("key_state", "Enabled"),
        ],
        1.0,
    );
    assert!(
        single(
            &body,
            "app_tier_cmk_last_success_timestamp_seconds",
            &target
        )
        .is_some(),
        "{body}"
    );
    // The earlier network errors stay counted, now under the learnt account ID.
    assert!(
        single(
            &body,
            "app_tier_cmk_scan_errors_total",
            &[
                ("account", DEFAULT_ACCOUNT),
                ("region", "us-east-1"),
                ("error", "network")
            ]
        )
        .is_some_and(|n| n >= 1.0),
        "{body}"
    );
    let stale: Vec<_> = parse_metrics(&body)
        .into_iter()
        .filter(|s| s.labels.get("account").map(String::as_str) == Some("unknown"))
        .collect();
    assert!(stale.is_empty(), "series still labelled unknown: {stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_kms_are_seen_on_the_next_round() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    let key = create_key(&kms, &[("team", "core")]).await;
    let exporter = start_exporter(
        "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1s\"\n",
        &moto.endpoint(),
        &[],
    )
    .await;
    let target = [("account", DEFAULT_ACCOUNT), ("region", "us-east-1")];
    let key_labels = [
        ("account", DEFAULT_ACCOUNT),
        ("region", "us-east-1"),
        ("key_id", key.as_str()),
    ];
    let body = ready_metrics(&exporter).await;
    assert_sample(&body, "app_tier_cmk_present", &target, 0.0);
    assert_no_sample(&body, "app_tier_cmk_key_info", &[]);

    // Tag it: present.
    tag_key(&kms, &key, &[("app_tier", "prod")]).await;
    let body = exporter
        .wait_until(
            |m| single(m, "app_tier_cmk_present", &target) == Some(1.0),
            CHANGE_TIMEOUT,
        )
        .await;
    assert_sample(
        &body,
        "app_tier_cmk_keys",
        &[
            ("account", DEFAULT_ACCOUNT),
            ("region", "us-east-1"),
            ("state", "Enabled"),
        ],
        1.0,
    );
    assert_eq!(
        key_ids_of(&body, "app_tier_cmk_key_info", &[("key_state", "Enabled")]),
        vec![key.clone()]
    );

    // Disable it: not present, counted as Disabled.
    disable_key(&kms, &key).await;
    let body = exporter
        .wait_until(
            |m| single(m, "app_tier_cmk_present", &target) == Some(0.0),
            CHANGE_TIMEOUT,
        )
        .await;
    assert_sample(
        &body,
        "app_tier_cmk_keys",
        &[
            ("account", DEFAULT_ACCOUNT),
            ("region", "us-east-1"),
            ("state", "Disabled"),
        ],
        1.0,
    );
    assert_eq!(
        key_ids_of(&body, "app_tier_cmk_key_info", &[("key_state", "Disabled")]),
        vec![key.clone()]
    );

    // Schedule its deletion: PendingDeletion with the scheduled date.
    let date = schedule_deletion(&kms, &key, 7).await;
    let body = exporter
        .wait_until(
            |m| {
                single(
                    m,
                    "app_tier_cmk_key_deletion_timestamp_seconds",
                    &key_labels,
                )
                .is_some()
            },
            CHANGE_TIMEOUT,
        )
        .await;
    assert_eq!(
        single(
            &body,
            "app_tier_cmk_key_deletion_timestamp_seconds",
            &key_labels
        )
        .map(f64::floor),
        Some(date as f64)
    );
    assert_sample(
        &body,
        "app_tier_cmk_key_info",
        &[("key_id", key.as_str()), ("key_state", "PendingDeletion")],
        1.0,
    );
    assert_no_sample(&body, "app_tier_cmk_key_rotation_enabled", &key_labels);

    // Untag it: gone from the key series.
    cancel_deletion(&kms, &key).await;
    untag_key(&kms, &key, &["app_tier"]).await;
    let body = exporter
        .wait_until(
            |m| matching_samples(m, "app_tier_cmk_key_info", &[]).is_empty(),
            CHANGE_TIMEOUT,
        )
        .await;
    assert_sample(&body, "app_tier_cmk_present", &target, 0.0);
    assert_no_sample(&body, "app_tier_cmk_key_deletion_timestamp_seconds", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_scans_keep_the_last_values_and_set_scan_success_0() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    let key = create_key(&kms, &[("app_tier", "prod")]).await;
    let exporter = start_exporter(
        "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1s\"\n",
        &moto.endpoint(),
        &[],
    )
    .await;
    let target = [("account", DEFAULT_ACCOUNT), ("region", "us-east-1")];
    let network = [
        ("account", DEFAULT_ACCOUNT),
        ("region", "us-east-1"),
        ("error", "network"),
    ];
    exporter
        .wait_until(
            |m| single(m, "app_tier_cmk_present", &target) == Some(1.0),
            CHANGE_TIMEOUT,
        )
        .await;

    moto.stop().await;
    let body = exporter
        .wait_until(
            |m| {
                single(m, "app_tier_cmk_scan_success", &target) == Some(0.0)
                    && single(m, "app_tier_cmk_scan_errors_total", &network).is_some()
            },
            CHANGE_TIMEOUT,
        )
        .await;
    let errors = single(&body, "app_tier_cmk_scan_errors_total", &network).unwrap();
    let last_success = single(
        &body,
        "app_tier_cmk_last_success_timestamp_seconds",
        &target,
    )
    .expect("last success kept");
    // One more failed round: still the cached values.
    let body = exporter
        .wait_until(
            |m| single(m, "app_tier_cmk_scan_errors_total", &network).is_some_and(|n| n > errors),
            CHANGE_TIMEOUT,
        )
        .await;
    assert_sample(&body, "app_tier_cmk_scan_success", &target, 0.0);
    assert_sample(&body, "app_tier_cmk_present", &target, 1.0);
    assert_sample(
        &body,
        "app_tier_cmk_keys",
        &[
            ("account", DEFAULT_ACCOUNT),
            ("region", "us-east-1"),
            ("state", "Enabled"),
        ],
        1.0,
    );
    assert_sample(
        &body,
        "app_tier_cmk_key_info",
        &[("key_id", key.as_str()), ("key_state", "Enabled")],
        1.0,
    );
    assert_sample(
        &body,
        "app_tier_cmk_last_success_timestamp_seconds",
        &target,
        last_success,
    );
    assert!(
        single(
            &body,
            "app_tier_cmk_aws_requests_total",
            &[("operation", "ListKeys"), ("outcome", "network")]
        )
        .is_some_and(|n| n >= 1.0),
        "{body}"
    );
    // Still ready: readiness is about having scanned, not about success.
    assert_eq!(exporter.get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_requests_total_counts_each_operation_with_outcome_success() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    for region in ["us-east-1", "eu-west-1"] {
        let kms = seeder.kms(None, region).await;
        create_key(&kms, &[("app_tier", "prod")]).await;
        create_key(&kms, &[]).await;
    }
    // concurrency 1: a single permit must still let every target finish.
    let exporter = start_exporter(
        "regions = [\"us-east-1\", \"eu-west-1\"]\n[scan]\ninterval = \"1s\"\nconcurrency = 1\n",
        &moto.endpoint(),
        &[],
    )
    .await;
    let requests = |m: &str, operation: &str| {
        single(
            m,
            "app_tier_cmk_aws_requests_total",
            &[("operation", operation), ("outcome", "success")],
        )
        .unwrap_or(0.0)
    };
    // At least three rounds.
    let body = exporter
        .wait_until(|m| requests(m, "ListKeys") >= 6.0, CHANGE_TIMEOUT)
        .await;
    let list_keys = requests(&body, "ListKeys");
    // Per round and region: ListKeys, ListAliases, 2 x ListResourceTags, DescribeKey and
    // GetKeyRotationStatus for the tagged key.
    assert!(requests(&body, "ListAliases") >= list_keys - 2.0, "{body}");
    assert!(
        requests(&body, "ListResourceTags") >= 2.0 * (list_keys - 2.0),
        "{body}"
    );
    assert!(requests(&body, "DescribeKey") >= list_keys - 2.0, "{body}");
    assert!(
        requests(&body, "GetKeyRotationStatus") >= list_keys - 2.0,
        "{body}"
    );
    // The account ID is learnt once, not every round.
    assert_eq!(requests(&body, "GetCallerIdentity"), 1.0, "{body}");
    let failures: Vec<_> = matching_samples(&body, "app_tier_cmk_aws_requests_total", &[])
        .into_iter()
        .filter(|s| s.labels["outcome"] != "success")
        .collect();
    assert!(
        failures.is_empty(),
        "unexpected failed requests: {failures:?}"
    );
    for region in ["us-east-1", "eu-west-1"] {
        assert_sample(
            &body,
            "app_tier_cmk_present",
            &[("account", DEFAULT_ACCOUNT), ("region", region)],
            1.0,
        );
    }
}

// ---------------------------------------------------------------------------
// Process: signals, start-up failures, logging
// ---------------------------------------------------------------------------

async fn assert_exits_0_promptly_on(signal: &str, endpoint: &str, config: &str) {
    let mut exporter = start_exporter(config, endpoint, &[]).await;
    assert_eq!(exporter.get("/healthz").await.0, 200);
    let sent = Instant::now();
    exporter.send_signal(signal).await;
    let status = exporter
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no exit within 10 s of SIG{signal}\nlogs:\n{}",
                exporter.logs()
            )
        });
    let took = sent.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "SIG{signal}: {status}\nlogs:\n{}",
        exporter.logs()
    );
    assert!(
        took < Duration::from_secs(3),
        "SIG{signal}: exit took {took:?}"
    );
    assert!(
        exporter.logs().contains(&format!("SIG{signal} received")),
        "logs:\n{}",
        exporter.logs()
    );
    assert!(
        exporter.try_get("/healthz").await.is_err(),
        "still serving after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_promptly() {
    let moto = Moto::start().await;
    let exporter_config = "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1s\"\n";
    assert_exits_0_promptly_on("TERM", &moto.endpoint(), exporter_config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0_promptly() {
    let moto = Moto::start().await;
    let exporter_config = "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1s\"\n";
    assert_exits_0_promptly_on("INT", &moto.endpoint(), exporter_config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_hanging_scan_exits_0_promptly() {
    let blackhole = Blackhole::start();
    let config = format!(
        "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1m\"\ntimeout = \"1m\"\n\
         [[accounts]]\naccount_id = \"{DEFAULT_ACCOUNT}\"\n"
    );
    assert_exits_0_promptly_on("TERM", &blackhole.endpoint(), &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_port_exits_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!("127.0.0.1:{}", taken.local_addr().unwrap().port());
    let mut exporter = Exporter::builder("regions = [\"us-east-1\"]\n")
        .moto("http://127.0.0.1:1")
        .args(&["--config", "{config}", "--web.listen-address", &address])
        .spawn();
    let status = exporter
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("still running on a taken port\nlogs:\n{}", exporter.logs()));
    let logs = exporter.logs();
    assert_eq!(status.code(), Some(1), "{status}\nlogs:\n{logs}");
    assert!(
        logs.contains(&address),
        "logs do not name {address}:\n{logs}"
    );
    assert!(logs.contains("cannot listen"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_in_serve_mode_exits_3() {
    // Bad value in the file.
    let mut exporter = Exporter::builder("[scan]\ninterval = \"soon\"\n")
        .moto("http://127.0.0.1:1")
        .spawn();
    let status = exporter
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exit");
    let logs = exporter.logs();
    assert_eq!(status.code(), Some(3), "{logs}");
    let path = exporter.config_path().display().to_string();
    assert!(
        logs.contains(&path) && logs.contains("scan.interval") && logs.contains("soon"),
        "{logs}"
    );
    assert!(exporter.try_get("/healthz").await.is_err());

    // Bad value in the environment.
    let mut exporter = Exporter::builder("regions = [\"us-east-1\"]\n")
        .moto("http://127.0.0.1:1")
        .env("APP_TIER_CMK_SCAN__CONCURRENCY", "0")
        .spawn();
    let status = exporter
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exit");
    let logs = exporter.logs();
    assert_eq!(status.code(), Some(3), "{logs}");
    assert!(logs.contains("APP_TIER_CMK_SCAN__CONCURRENCY"), "{logs}");

    // Bad flag value.
    let mut exporter = Exporter::builder("regions = [\"us-east-1\"]\n")
        .moto("http://127.0.0.1:1")
        .args(&["--config", "{config}", "--web.listen-address", "nonsense"])
        .spawn();
    let status = exporter
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exit");
    let logs = exporter.logs();
    assert_eq!(status.code(), Some(3), "{logs}");
    assert!(
        logs.contains("--web.listen-address") && logs.contains("nonsense"),
        "{logs}"
    );

    // Unknown flag.
    let mut exporter = Exporter::builder("regions = [\"us-east-1\"]\n")
        .moto("http://127.0.0.1:1")
        .args(&["--config", "{config}", "--no-such-flag"])
        .spawn();
    let status = exporter
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exit");
    assert_eq!(status.code(), Some(3), "{}", exporter.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_json_object_per_line() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    create_key(&kms, &[("app_tier", "prod")]).await;
    let exporter = Exporter::builder("regions = [\"us-east-1\"]\n[scan]\ninterval = \"1m\"\n")
        .moto(&moto.endpoint())
        .args(&[
            "--config",
            "{config}",
            "--log.format",
            "json",
            "--log.level",
            "debug",
        ])
        .start()
        .await;
    exporter.wait_ready(READY_TIMEOUT).await;
    let logs = exporter.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\nlogs:\n{logs}"))
        })
        .collect();
    assert!(
        lines.iter().any(
            |l| l["message"] == "exporter listening; first scan round starts now"
                && l["level"] == "INFO"
        ),
        "{logs}"
    );
    // --log.level debug lets the per-target debug line through.
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"
            && l["target"] == "app_tier_cmk_exporter::scanner"
            && l["verdict"] == "PASS"
            && l["region"] == "us-east-1"),
        "{logs}"
    );
    // The default level (info) hides it.
    let quiet = Exporter::builder("regions = [\"us-east-1\"]\n[scan]\ninterval = \"1m\"\n")
        .moto(&moto.endpoint())
        .args(&["--config", "{config}", "--log.format", "json"])
        .start()
        .await;
    quiet.wait_ready(READY_TIMEOUT).await;
    let logs = quiet.logs();
    assert!(logs.contains("\"scan round finished\""), "{logs}");
    assert!(!logs.contains("\"DEBUG\""), "{logs}");
}

/// Keys of one JSON object, in order, duplicates kept.
struct JsonKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for JsonKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = JsonKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(JsonKeys(keys))
            }
        }
        d.deserialize_map(Visit)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_have_no_duplicate_keys() {
    // Unreachable endpoint: the scanner logs its warnings (with AWS's error text).
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let exporter = Exporter::builder("regions = [\"us-east-1\"]\n[scan]\ninterval = \"1m\"\n")
        .moto(&endpoint)
        .args(&[
            "--config",
            "{config}",
            "--log.format",
            "json",
            "--log.level",
            "debug",
        ])
        .start()
        .await;
    exporter.wait_ready(READY_TIMEOUT).await;
    let logs = exporter.logs();
    let mut warned = false;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let JsonKeys(keys) = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            keys.len(),
            "duplicate keys in log line: {line}"
        );
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        if value["level"] == "WARN" && value["target"] == "app_tier_cmk_exporter::scanner" {
            warned = true;
            assert!(
                value["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("cannot learn the account ID")),
                "the log message was overwritten: {line}"
            );
        }
    }
    assert!(warned, "no scanner warning logged:\n{logs}");
}
