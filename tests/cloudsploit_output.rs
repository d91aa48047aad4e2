//! The App-Tier tag in use (tag:GetTagKeys) and `match.require`, and the CloudSploit-shaped
//! `scan` outputs (`--output cloudsploit-json`, `--output csv`, `--exit-code`), against moto.

mod support;

use std::time::Duration;

use support::fleet::*;
use support::*;

/// us-east-1: tag in use, no key. us-west-2: tag not in use, no key. eu-west-1: a tagged
/// key, tag not in use (moto's GetTagKeys ignores KMS). ap-southeast-2: tag in use, a tagged
/// key whose DescribeKey is denied (UNKNOWN).
async fn seed(moto: &Moto) {
    let seeder = Seeder::new(moto.endpoint());
    tag_region(&seeder, None, "us-east-1", "app_tier").await;
    let eu = seeder.kms(None, "eu-west-1").await;
    create_key(&eu, &[("app_tier", "web")]).await;
    tag_region(&seeder, None, "ap-southeast-2", "app_tier").await;
    let ap = seeder.kms(None, "ap-southeast-2").await;
    let denied = create_key(&ap, &[("app_tier", "web")]).await;
    deny_describe_key(&ap, &denied).await;
}

const REGIONS: &str = r#"regions = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2"]"#;

async fn scan(moto: &Moto, config: &str, args: &[&str]) -> (i32, String, String) {
    let (_dir, path) = write_config(config);
    let mut all = vec!["scan", "--config", path.to_str().expect("path")];
    all.extend_from_slice(args);
    run_scan(&all, &aws_env(&moto.endpoint())).await
}

fn by_region(results: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    results
        .as_array()
        .expect("array")
        .iter()
        .map(|r| (r["region"].as_str().expect("region").to_string(), r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudsploit_json_follows_when_tag_in_use_and_its_exit_code() {
    let moto = Moto::start().await;
    seed(&moto).await;
    let config = format!("{REGIONS}\n[match]\nrequire = \"when_tag_in_use\"\n");

    let (code, stdout, stderr) = scan(&moto, &config, &["--output", "cloudsploit-json"]).await;
    assert_eq!(
        code, 2,
        "our own exit code by default (an UNKNOWN)\n{stdout}\n{stderr}"
    );
    let results: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let results = by_region(&results);
    assert_eq!(results.len(), 4, "{stdout}");
    for r in results.values() {
        assert_eq!(r["plugin"], "kmsAppTierCmk");
        assert_eq!(r["category"], "KMS");
        assert_eq!(r["title"], "App-Tier KMS Customer Master Key (CMK)");
        assert!(
            r["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("Ensures"))
        );
        assert_eq!(r["resource"], "N/A");
        assert_eq!(r["account"], DEFAULT_ACCOUNT);
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(results["us-east-1"]["status"], "FAIL", "{stdout}");
    assert_eq!(results["us-west-2"]["status"], "OK", "{stdout}");
    assert!(
        results["us-west-2"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("not required")),
        "{stdout}"
    );
    assert_eq!(results["eu-west-1"]["status"], "OK", "{stdout}");
    assert_eq!(results["ap-southeast-2"]["status"], "UNKNOWN", "{stdout}");

    let (code, _, _) = scan(
        &moto,
        &config,
        &["--output", "cloudsploit-json", "--exit-code"],
    )
    .await;
    assert_eq!(code, 3, "CloudSploit: the worst status, UNKNOWN = 3");

    // Without the UNKNOWN region: FAIL is 2 with --exit-code, 1 without.
    let config =
        "regions = [\"us-east-1\", \"us-west-2\"]\n[match]\nrequire = \"when_tag_in_use\"\n";
    let (code, stdout, _) = scan(
        &moto,
        config,
        &["--output", "cloudsploit-json", "--exit-code"],
    )
    .await;
    assert_eq!(code, 2, "{stdout}");
    let (code, _, _) = scan(&moto, config, &["--output", "cloudsploit-json"]).await;
    assert_eq!(code, 1);
    let config =
        "regions = [\"us-west-2\", \"eu-west-1\"]\n[match]\nrequire = \"when_tag_in_use\"\n";
    let (code, stdout, _) = scan(
        &moto,
        config,
        &["--output", "cloudsploit-json", "--exit-code"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_output_has_cloudsploit_columns_and_require_always_fails_everywhere() {
    let moto = Moto::start().await;
    seed(&moto).await;
    let (code, stdout, stderr) = scan(&moto, REGIONS, &["--output", "csv", "--exit-code"]).await;
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("category,title,description,resource,region,statusWord,message,account")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    let status = |region: &str| {
        rows.iter()
            .find(|r| r[4] == region)
            .map(|r| r[5])
            .unwrap_or_else(|| panic!("no row for {region}:\n{stdout}"))
    };
    for row in &rows {
        assert_eq!(row.len(), 8, "commas are replaced, never quoted: {row:?}");
        assert_eq!(row[0], "KMS");
        assert_eq!(row[3], "N/A");
        assert_eq!(row[7], DEFAULT_ACCOUNT);
    }
    assert_eq!(status("us-east-1"), "FAIL");
    assert_eq!(
        status("us-west-2"),
        "FAIL",
        "require = always: needed everywhere"
    );
    assert_eq!(status("eu-west-1"), "OK");
    assert_eq!(status("ap-southeast-2"), "UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_in_use_and_required_are_exported() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    // Another case: found with match.case_insensitive.
    tag_region(&seeder, None, "us-east-1", "APP_TIER").await;
    let exporter = Exporter::start_with_moto(
        r#"
regions = ["us-east-1", "us-west-2"]
[match]
require = "when_tag_in_use"
case_insensitive = true
"#,
        &moto.endpoint(),
        &[],
    )
    .await;
    exporter.wait_ready(Duration::from_secs(30)).await;
    let m = exporter.metrics().await;
    let value = |name: &str, region: &str| {
        sample_value(
            &m,
            name,
            &[("account", DEFAULT_ACCOUNT), ("region", region)],
        )
    };
    assert_eq!(
        value("app_tier_cmk_tag_in_use", "us-east-1"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value("app_tier_cmk_tag_in_use", "us-west-2"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(value("app_tier_cmk_required", "us-east-1"), Some(1.0));
    assert_eq!(value("app_tier_cmk_required", "us-west-2"), Some(0.0));
    assert_eq!(value("app_tier_cmk_present", "us-east-1"), Some(0.0));
    assert_eq!(value("app_tier_cmk_present", "us-west-2"), Some(0.0));
    let (ok, out) = promtool_check_metrics(&m);
    assert!(ok, "{out}");
}
