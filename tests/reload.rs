//! Configuration reload by SIGHUP and `POST /-/reload`: a valid file replaces targets and
//! settings at the next round; an invalid one keeps the running configuration and says so in
//! `app_tier_cmk_config_last_reload_successful`.

mod support;

use std::time::Duration;

use support::web::{parse_response, plain_request, request, rewrite};
use support::*;

const RELOAD_OK: &str = "app_tier_cmk_config_last_reload_successful";
const RELOAD_TS: &str = "app_tier_cmk_config_last_reload_success_timestamp_seconds";

fn config(regions: &[&str], tag_key: &str) -> String {
    let regions: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "regions = [{}]\n[scan]\ninterval = \"1s\"\ntimeout = \"10s\"\n[match]\ntag_key = \"{tag_key}\"\n",
        regions.join(", ")
    )
}

fn present(body: &str, region: &str) -> Option<f64> {
    sample_value(
        body,
        "app_tier_cmk_present",
        &[("account", DEFAULT_ACCOUNT), ("region", region)],
    )
}

/// Rewrites the exporter's config file, keeping the listen address it was started on.
fn replace_config(exporter: &Exporter, toml: &str) {
    let text = with_listen_address(toml, &format!("127.0.0.1:{}", exporter.port()));
    rewrite(exporter.config_path(), &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_drops_removed_targets() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    for region in ["us-east-1", "eu-west-1", "ap-south-1"] {
        create_key(&seeder.kms(None, region).await, &[("app_tier", "prod")]).await;
    }
    let exporter = Exporter::start_with_moto(
        &config(&["us-east-1", "eu-west-1"], "app_tier"),
        &moto.endpoint(),
        &[],
    )
    .await;
    let body = exporter
        .wait_until(
            |m| present(m, "us-east-1") == Some(1.0) && present(m, "eu-west-1") == Some(1.0),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(sample_value(&body, RELOAD_OK, &[]), Some(1.0));
    let loaded_at = sample_value(&body, RELOAD_TS, &[]).expect("timestamp");

    // eu-west-1 goes, ap-south-1 comes; the listen address change needs a restart.
    let mut next = config(&["us-east-1", "ap-south-1"], "app_tier");
    next = with_listen_address(&next, "127.0.0.1:1");
    rewrite(exporter.config_path(), &next);
    exporter.send_signal("HUP").await;
    let body = exporter
        .wait_until(
            |m| {
                present(m, "ap-south-1") == Some(1.0)
                    && matching_samples(m, "app_tier_cmk_scan_success", &[("region", "eu-west-1")])
                        .is_empty()
            },
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(sample_value(&body, RELOAD_OK, &[]), Some(1.0));
    assert!(sample_value(&body, RELOAD_TS, &[]).expect("timestamp") > loaded_at);
    assert_eq!(
        present(&body, "us-east-1"),
        Some(1.0),
        "kept target lost its values"
    );
    assert!(
        !body.contains("eu-west-1"),
        "series of a removed target remain:\n{body}"
    );
    let logs = exporter.logs();
    assert!(
        logs.contains("listen_address changed; restart the exporter to apply it"),
        "{logs}"
    );
    // Still served on the old address.
    assert_eq!(exporter.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_keeps_the_running_one_and_reports_the_failure() {
    let moto = Moto::start().await;
    create_key(
        &Seeder::new(moto.endpoint()).kms(None, "us-east-1").await,
        &[("app_tier", "prod")],
    )
    .await;
    let exporter =
        Exporter::start_with_moto(&config(&["us-east-1"], "app_tier"), &moto.endpoint(), &[]).await;
    let body = exporter
        .wait_until(
            |m| present(m, "us-east-1") == Some(1.0),
            Duration::from_secs(30),
        )
        .await;
    let loaded_at = sample_value(&body, RELOAD_TS, &[]).expect("timestamp");

    replace_config(&exporter, "[scan]\ninterval = \"whenever\"\n");
    exporter.send_signal("HUP").await;
    let body = exporter
        .wait_until(
            |m| sample_value(m, RELOAD_OK, &[]) == Some(0.0),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(sample_value(&body, RELOAD_TS, &[]), Some(loaded_at));
    let scanned_at = sample_value(
        &body,
        "app_tier_cmk_last_success_timestamp_seconds",
        &[("region", "us-east-1")],
    )
    .expect("scanned");
    // The old configuration keeps scanning.
    exporter
        .wait_until(
            |m| {
                sample_value(
                    m,
                    "app_tier_cmk_last_success_timestamp_seconds",
                    &[("region", "us-east-1")],
                )
                .is_some_and(|t| t > scanned_at)
                    && present(m, "us-east-1") == Some(1.0)
            },
            Duration::from_secs(10),
        )
        .await;
    let logs = exporter.logs();
    assert!(
        logs.contains("configuration not reloaded") && logs.contains("whenever"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_applies_the_file_when_the_lifecycle_api_is_enabled() {
    let moto = Moto::start().await;
    create_key(
        &Seeder::new(moto.endpoint()).kms(None, "us-east-1").await,
        &[("other_tag", "prod")],
    )
    .await;
    let exporter = Exporter::builder(&config(&["us-east-1"], "app_tier"))
        .moto(&moto.endpoint())
        .arg("--web.enable-lifecycle")
        .start()
        .await;
    exporter
        .wait_until(
            |m| present(m, "us-east-1") == Some(0.0),
            Duration::from_secs(30),
        )
        .await;

    // The matcher changes: the key tagged other_tag now counts.
    replace_config(&exporter, &config(&["us-east-1"], "other_tag"));
    let raw = plain_request(exporter.port(), &request("POST", "/-/reload", &[])).await;
    let answer = parse_response(&raw).expect("answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    exporter
        .wait_until(
            |m| present(m, "us-east-1") == Some(1.0),
            Duration::from_secs(30),
        )
        .await;

    replace_config(&exporter, "regions = [\"not-a-region\"]\n");
    let raw = plain_request(exporter.port(), &request("PUT", "/-/reload", &[])).await;
    let answer = parse_response(&raw).expect("answer");
    assert_eq!(answer.status, 500, "{answer:?}");
    assert!(answer.body.contains("not-a-region"), "{answer:?}");
    let body = exporter.metrics().await;
    assert_eq!(sample_value(&body, RELOAD_OK, &[]), Some(0.0));
    assert_eq!(present(&body, "us-east-1"), Some(1.0));
}
