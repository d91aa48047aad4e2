//! `scan.discovery = "tagging"` against moto: the same verdicts as the exhaustive `kms` mode
//! on the same keys, case-insensitive matching through an unfiltered GetResources, and only
//! the tagging API's calls plus the per-candidate ones.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const OTHER_ACCOUNT: &str = "111111111111";

/// Every kind of key in two accounts and two regions (see the comments for the verdicts).
async fn seed(moto: &Moto) {
    let seeder = Seeder::new(moto.endpoint());
    // Default account, us-east-1: PASS (an enabled tagged key among others).
    let east = seeder.kms(None, "us-east-1").await;
    create_key(&east, &[("app_tier", "web")]).await;
    create_key(&east, &[("team", "payments")]).await;
    let disabled = create_key(&east, &[("app_tier", "db")]).await;
    disable_key(&east, &disabled).await;
    // Default account, us-west-2: FAIL (tagged, but disabled or pending deletion).
    let west = seeder.kms(None, "us-west-2").await;
    let disabled = create_key(&west, &[("app_tier", "web")]).await;
    disable_key(&west, &disabled).await;
    let doomed = create_key(&west, &[("app_tier", "web")]).await;
    schedule_deletion(&west, &doomed, 7).await;
    create_key(&west, &[]).await;
    // Other account, us-east-1: UNKNOWN (the only tagged key refuses DescribeKey).
    let other_east = seeder.kms(Some(OTHER_ACCOUNT), "us-east-1").await;
    let secret = create_key(&other_east, &[("app_tier", "web")]).await;
    deny_describe_key(&other_east, &secret).await;
    // Other account, us-west-2: FAIL (the tag key differs in case only).
    let other_west = seeder.kms(Some(OTHER_ACCOUNT), "us-west-2").await;
    create_key(&other_west, &[("App_Tier", "WEB")]).await;
}

fn config(discovery: &str, matching: &str) -> String {
    format!(
        r#"regions = ["us-east-1", "us-west-2"]
[scan]
discovery = "{discovery}"
[match]
{matching}
[[accounts]]
name = "home"
[[accounts]]
name = "other"
role_arn = "{role}"
"#,
        role = scanner_role_arn(OTHER_ACCOUNT)
    )
}

/// Runs `scan --output json`; returns the exit code and (account, region, verdict, key IDs).
async fn scan(moto: &Moto, config_toml: &str) -> (i32, Vec<(String, String, String, Value)>) {
    let (_dir, path) = write_config(config_toml);
    let path = path.to_string_lossy().into_owned();
    let (code, stdout, stderr) = run_scan(
        &["scan", "--config", &path, "--output", "json"],
        &aws_env(&moto.endpoint()),
    )
    .await;
    let rows: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("scan printed no JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    let rows = rows
        .as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {stdout}"))
        .iter()
        .map(|r| {
            (
                r["account"].as_str().unwrap_or_default().to_owned(),
                r["region"].as_str().unwrap_or_default().to_owned(),
                r["verdict"].as_str().unwrap_or_default().to_owned(),
                r["key_ids"].clone(),
            )
        })
        .collect();
    (code, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagging_mode_gives_the_same_verdicts_as_kms_mode() {
    let moto = Moto::start().await;
    seed(&moto).await;
    let matching = "tag_key = \"app_tier\"";
    let (kms_code, kms_rows) = scan(&moto, &config("kms", matching)).await;
    let (tagging_code, tagging_rows) = scan(&moto, &config("tagging", matching)).await;

    let verdicts: Vec<(&str, &str, &str)> = kms_rows
        .iter()
        .map(|(a, r, v, _)| (a.as_str(), r.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        verdicts,
        [
            (DEFAULT_ACCOUNT, "us-east-1", "PASS"),
            (DEFAULT_ACCOUNT, "us-west-2", "FAIL"),
            (OTHER_ACCOUNT, "us-east-1", "UNKNOWN"),
            (OTHER_ACCOUNT, "us-west-2", "FAIL"),
        ],
        "kms mode is the reference"
    );
    assert_eq!(
        tagging_rows, kms_rows,
        "tagging mode must agree with kms mode"
    );
    assert_eq!((kms_code, tagging_code), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_insensitive_tagging_mode_matches_locally() {
    let moto = Moto::start().await;
    seed(&moto).await;
    let exact = "tag_key = \"app_tier\"\ntag_values = [\"web\"]";
    let folded = "tag_key = \"app_tier\"\ntag_values = [\"web\"]\ncase_insensitive = true";
    let verdict_of = |rows: &[(String, String, String, Value)], account: &str, region: &str| {
        rows.iter()
            .find(|(a, r, _, _)| a == account && r == region)
            .map(|(_, _, v, _)| v.clone())
            .unwrap_or_default()
    };

    let (_, rows) = scan(&moto, &config("tagging", exact)).await;
    assert_eq!(verdict_of(&rows, OTHER_ACCOUNT, "us-west-2"), "FAIL");
    assert_eq!(verdict_of(&rows, DEFAULT_ACCOUNT, "us-east-1"), "PASS");

    let (_, tagging) = scan(&moto, &config("tagging", folded)).await;
    assert_eq!(
        verdict_of(&tagging, OTHER_ACCOUNT, "us-west-2"),
        "PASS",
        "App_Tier=WEB must match app_tier=web when case is folded: {tagging:?}"
    );
    let (_, kms) = scan(&moto, &config("kms", folded)).await;
    assert_eq!(tagging, kms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagging_mode_calls_get_resources_instead_of_listing_keys() {
    let moto = Moto::start().await;
    seed(&moto).await;
    let exporter = Exporter::start_with_moto(
        &config("tagging", "tag_key = \"app_tier\""),
        &moto.endpoint(),
        &[],
    )
    .await;
    exporter.wait_ready(Duration::from_secs(30)).await;
    let body = exporter.metrics().await;
    let calls = |operation: &str| {
        matching_samples(
            &body,
            "app_tier_cmk_aws_requests_total",
            &[("operation", operation)],
        )
        .iter()
        .map(|s| s.value)
        .sum::<f64>()
    };
    assert_eq!(calls("GetResources"), 4.0, "one page per target\n{body}");
    for unused in ["ListKeys", "ListAliases", "ListResourceTags"] {
        assert_eq!(calls(unused), 0.0, "{unused} in tagging mode\n{body}");
    }
    // Candidates only: 2 + 2 tagged keys in the default account, 1 in the other.
    assert_eq!(calls("DescribeKey"), 5.0, "{body}");
    // Rotation of the enabled and the disabled keys (not pending deletion, not unreadable).
    assert_eq!(calls("GetKeyRotationStatus"), 3.0, "{body}");
    assert_eq!(
        sample_value(
            &body,
            "app_tier_cmk_present",
            &[("account", DEFAULT_ACCOUNT), ("region", "us-east-1")]
        ),
        Some(1.0)
    );
    let (ok, output) = promtool_check_metrics(&body);
    assert!(ok, "promtool check metrics:\n{output}");
}
