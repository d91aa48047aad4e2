//! Assumed-role credentials: refreshed before they expire, cached between rounds, and a role
//! that cannot be assumed fails only its own account.

mod support;

use std::time::Duration;

use support::fault_proxy::{FaultProxy, Faults};
use support::*;

const GOOD: &str = "111111111111";
const DENIED: &str = "222222222222";

fn account(id: &str, extra: &str) -> String {
    format!(
        "[[accounts]]\nrole_arn = \"{}\"\nregions = [\"us-east-1\", \"eu-west-1\"]\n{extra}",
        scanner_role_arn(id)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assumed_role_credentials_are_refreshed_before_they_expire() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint())
        .kms(Some(GOOD), "us-east-1")
        .await;
    create_key(&kms, &[("app_tier", "prod")]).await;
    let proxy = FaultProxy::start(&moto.endpoint()).await;
    // moto's sessions last the DurationSeconds asked (15 minutes here): too long to wait for,
    // so the proxy says they end 8 s after each AssumeRole. The exporter must then refresh at
    // three quarters of that life (~6 s), and reuse the credentials in between.
    proxy.set(Faults {
        session_lifetime: Some(Duration::from_secs(8)),
        ..Faults::default()
    });
    let config = format!(
        "[scan]\ninterval = \"1s\"\n{}",
        account(GOOD, "session_duration = \"15m\"\n")
    );
    let exporter = Exporter::builder(&config)
        .moto(&proxy.endpoint())
        .start()
        .await;
    let present = |m: &str| {
        sample_value(
            m,
            "app_tier_cmk_present",
            &[("account", GOOD), ("region", "us-east-1")],
        ) == Some(1.0)
    };
    exporter.wait_until(present, Duration::from_secs(30)).await;
    let before = proxy.stats().requests("AssumeRole");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let body = exporter.wait_until(present, Duration::from_secs(5)).await;
    let stats = proxy.stats();
    let during = stats.requests("AssumeRole") - before;
    // About 15 rounds ran; a refresh every ~6 s means 2 or 3 AssumeRole calls, not 0 (expired
    // credentials kept) and not 15 (no cache).
    assert!(
        (2..=4).contains(&during),
        "{during} AssumeRole calls in 15 s of 1 s rounds\nlogs:\n{}",
        exporter.logs()
    );
    assert!(
        stats
            .assume_role_requests
            .iter()
            .all(|body| body.contains("DurationSeconds=900")),
        "session_duration not sent: {:?}",
        stats.assume_role_requests
    );
    // The exporter counts the same calls.
    assert_eq!(
        sample_sum(
            &body,
            "app_tier_cmk_aws_requests_total",
            &[("operation", "AssumeRole")]
        ) as u64,
        stats.requests("AssumeRole")
    );
    assert_eq!(
        sample_value(
            &body,
            "app_tier_cmk_scan_success",
            &[("account", GOOD), ("region", "eu-west-1")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_be_assumed_fails_only_its_account() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint())
        .kms(Some(GOOD), "us-east-1")
        .await;
    create_key(&kms, &[("app_tier", "prod")]).await;
    let proxy = FaultProxy::start(&moto.endpoint()).await;
    proxy.set(Faults {
        deny_assume_role: vec![DENIED.to_owned()],
        ..Faults::default()
    });
    let config = format!(
        "[scan]\ninterval = \"1s\"\n{}{}",
        account(GOOD, ""),
        account(DENIED, "")
    );
    let exporter = Exporter::builder(&config)
        .moto(&proxy.endpoint())
        .start()
        .await;
    let body = exporter
        .wait_until(
            |m| {
                ["us-east-1", "eu-west-1"].iter().all(|r| {
                    sample_value(
                        m,
                        "app_tier_cmk_scan_errors_total",
                        &[("account", DENIED), ("region", r), ("error", "assume_role")],
                    )
                    .is_some_and(|n| n >= 1.0)
                        && sample_value(
                            m,
                            "app_tier_cmk_scan_success",
                            &[("account", GOOD), ("region", r)],
                        ) == Some(1.0)
                })
            },
            Duration::from_secs(30),
        )
        .await;
    for region in ["us-east-1", "eu-west-1"] {
        assert_eq!(
            sample_value(
                &body,
                "app_tier_cmk_scan_success",
                &[("account", DENIED), ("region", region)]
            ),
            Some(0.0)
        );
        assert!(
            matching_samples(
                &body,
                "app_tier_cmk_scan_errors_total",
                &[("account", GOOD), ("region", region)]
            )
            .is_empty(),
            "the good account caught errors:\n{body}"
        );
    }
    assert_eq!(
        sample_value(
            &body,
            "app_tier_cmk_present",
            &[("account", GOOD), ("region", "us-east-1")]
        ),
        Some(1.0)
    );
    let logs = exporter.logs();
    assert!(
        logs.contains("cannot get credentials") && logs.contains(&scanner_role_arn(DENIED)),
        "{logs}"
    );
}
