//! The exporter against a hostile AWS: throttling, pages, stalls, garbage and an outage,
//! injected by the fault proxy between the exporter and moto.

mod support;

use std::time::Duration;

use support::fault_proxy::{FaultProxy, Faults};
use support::*;

const EAST: &str = "us-east-1";
const WEST: &str = "eu-west-1";

fn config(regions: &[&str], interval: &str, timeout: &str) -> String {
    let regions: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "regions = [{}]\n[scan]\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\nconcurrency = 8\n",
        regions.join(", ")
    )
}

fn target(region: &str) -> [(&'static str, &str); 2] {
    [("account", DEFAULT_ACCOUNT), ("region", region)]
}

fn value(body: &str, name: &str, region: &str) -> Option<f64> {
    sample_value(body, name, &target(region))
}

async fn start_exporter(config: &str, endpoint: &str) -> Exporter {
    Exporter::builder(config).moto(endpoint).start().await
}

/// moto holding one App-Tier key in EAST, and a fault proxy in front of it.
async fn tagged_key_behind_proxy() -> (Moto, FaultProxy) {
    let moto = Moto::start().await;
    create_key(
        &Seeder::new(moto.endpoint()).kms(None, EAST).await,
        &[("app_tier", "prod")],
    )
    .await;
    let proxy = FaultProxy::start(&moto.endpoint()).await;
    (moto, proxy)
}

fn assert_no_panic(exporter: &mut Exporter) {
    assert!(
        exporter.try_exit_status().is_none(),
        "exporter exited\nlogs:\n{}",
        exporter.logs()
    );
    let logs = exporter.logs();
    assert!(!logs.contains("panicked"), "a task panicked:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_requests_are_retried_counted_and_values_stay_right() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let east = seeder.kms(None, EAST).await;
    create_key(&east, &[("app_tier", "prod")]).await;
    create_key(&east, &[("team", "other")]).await;
    let disabled = create_key(&east, &[("app_tier", "prod")]).await;
    disable_key(&east, &disabled).await;

    let proxy = FaultProxy::start(&moto.endpoint()).await;
    proxy.set(Faults {
        throttle: 0.3,
        ..Faults::default()
    });
    let mut exporter = start_exporter(&config(&[EAST, WEST], "1s", "60s"), &proxy.endpoint()).await;
    let body = exporter
        .wait_until(
            |m| {
                value(m, "app_tier_cmk_present", EAST) == Some(1.0)
                    && value(m, "app_tier_cmk_present", WEST) == Some(0.0)
                    && sample_value(
                        m,
                        "app_tier_cmk_keys",
                        &[("region", EAST), ("state", "Disabled")],
                    ) == Some(1.0)
                    && sample_sum(
                        m,
                        "app_tier_cmk_aws_requests_total",
                        &[("outcome", "throttled")],
                    ) > 0.0
            },
            Duration::from_secs(90),
        )
        .await;
    assert!(proxy.stats().injected("throttle") > 0);
    // Every throttle the proxy sent was counted as a throttled attempt (the proxy may have
    // sent a few more since the scrape).
    let counted = sample_sum(
        &body,
        "app_tier_cmk_aws_requests_total",
        &[("outcome", "throttled")],
    );
    assert!(counted as u64 <= proxy.stats().injected("throttle"));
    assert_no_panic(&mut exporter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_lists_lose_no_key() {
    let moto = Moto::start().await;
    let east = Seeder::new(moto.endpoint()).kms(None, EAST).await;
    let mut tagged = Vec::new();
    for i in 0..25 {
        let key = match i {
            // The App-Tier tag comes seventh: on the third page of ListResourceTags.
            24 => {
                let tags: Vec<(String, String)> = (0..6)
                    .map(|t| (format!("filler{t}"), "x".to_owned()))
                    .chain([("app_tier".to_owned(), "prod".to_owned())])
                    .collect();
                let tags: Vec<(&str, &str)> =
                    tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                create_key(&east, &tags).await
            }
            4 | 12 => create_key(&east, &[("app_tier", "prod")]).await,
            _ => create_key(&east, &[("team", "other")]).await,
        };
        if matches!(i, 4 | 12 | 24) {
            tagged.push(key.clone());
        }
        if i == 12 {
            disable_key(&east, &key).await;
        }
        if i % 5 == 0 {
            create_alias(&east, &format!("alias/k{i}"), &key).await;
        }
    }

    let proxy = FaultProxy::start(&moto.endpoint()).await;
    proxy.set(Faults {
        page_size: Some(3),
        ..Faults::default()
    });
    let exporter = start_exporter(&config(&[EAST], "1s", "30s"), &proxy.endpoint()).await;
    let body = exporter
        .wait_until(
            |m| value(m, "app_tier_cmk_scan_success", EAST) == Some(1.0),
            Duration::from_secs(60),
        )
        .await;
    let infos = matching_samples(&body, "app_tier_cmk_key_info", &[("region", EAST)]);
    let mut seen: Vec<String> = infos.iter().map(|s| s.labels["key_id"].clone()).collect();
    seen.sort();
    tagged.sort();
    assert_eq!(seen, tagged, "tagged keys lost across pages\n{body}");
    assert_eq!(
        sample_value(
            &body,
            "app_tier_cmk_keys",
            &[("region", EAST), ("state", "Enabled")]
        ),
        Some(2.0)
    );
    assert_eq!(value(&body, "app_tier_cmk_present", EAST), Some(1.0));
    let stats = proxy.stats();
    assert!(
        stats.pages.get("ListKeys").copied().unwrap_or(0) >= 9,
        "25 keys in pages of 3 take 9 pages: {stats:?}"
    );
    assert!(
        stats.pages.get("ListAliases").copied().unwrap_or(0) >= 2,
        "{stats:?}"
    );
    assert!(
        stats.pages.get("ListResourceTags").copied().unwrap_or(0) >= 27,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_region_times_out_while_the_others_finish_in_time() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    for region in [EAST, "ap-southeast-2"] {
        create_key(&seeder.kms(None, region).await, &[("app_tier", "prod")]).await;
    }
    let proxy = FaultProxy::start(&moto.endpoint()).await;
    proxy.set(Faults {
        stall: Some((WEST.to_owned(), Duration::from_secs(30))),
        ..Faults::default()
    });
    // Only KMS calls, so that the durations compare like with like (moto's tag:GetTagKeys takes
    // most of a second by itself).
    let config =
        config(&[EAST, WEST, "ap-southeast-2"], "5s", "3s") + "[match]\ncheck_tag_in_use = false\n";
    let exporter = start_exporter(&config, &proxy.endpoint()).await;
    let body = exporter
        .wait_until(
            |m| {
                sample_value(
                    m,
                    "app_tier_cmk_scan_errors_total",
                    &[("region", WEST), ("error", "timeout")],
                )
                .is_some_and(|n| n >= 1.0)
                    && value(m, "app_tier_cmk_scan_success", EAST) == Some(1.0)
                    && value(m, "app_tier_cmk_scan_success", "ap-southeast-2") == Some(1.0)
            },
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(value(&body, "app_tier_cmk_scan_success", WEST), Some(0.0));
    let stalled = value(&body, "app_tier_cmk_scan_duration_seconds", WEST).expect("duration");
    assert!(
        (2.9..6.0).contains(&stalled),
        "stalled target took {stalled}s"
    );
    for region in [EAST, "ap-southeast-2"] {
        let took = value(&body, "app_tier_cmk_scan_duration_seconds", region).expect("duration");
        assert!(
            took < 2.0,
            "{region} waited for the stalled region: {took}s"
        );
        assert_eq!(value(&body, "app_tier_cmk_present", region), Some(1.0));
    }
    assert!(
        exporter.logs().contains("scan.timeout"),
        "{}",
        exporter.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_become_other_errors_never_a_panic() {
    let (_moto, proxy) = tagged_key_behind_proxy().await;
    proxy.set(Faults {
        garbage: 0.5,
        truncated: 0.5,
        ..Faults::default()
    });
    let mut exporter = start_exporter(&config(&[EAST, WEST], "1s", "20s"), &proxy.endpoint()).await;
    exporter
        .wait_until(
            |m| {
                [EAST, WEST].iter().all(|r| {
                    sample_value(
                        m,
                        "app_tier_cmk_scan_errors_total",
                        &[("region", r), ("error", "other")],
                    )
                    .is_some_and(|n| n >= 2.0)
                })
            },
            Duration::from_secs(60),
        )
        .await;
    let stats = proxy.stats();
    assert!(
        stats.injected("garbage") > 0 && stats.injected("truncated") > 0,
        "{stats:?}"
    );
    assert_no_panic(&mut exporter);

    // Sane answers again: the next round succeeds.
    proxy.set(Faults::default());
    exporter
        .wait_until(
            |m| value(m, "app_tier_cmk_present", EAST) == Some(1.0),
            Duration::from_secs(30),
        )
        .await;
    assert_no_panic(&mut exporter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_resets_are_retried() {
    let (_moto, proxy) = tagged_key_behind_proxy().await;
    proxy.set(Faults {
        server_error: 0.2,
        reset: 0.2,
        ..Faults::default()
    });
    let mut exporter = start_exporter(&config(&[EAST], "1s", "60s"), &proxy.endpoint()).await;
    exporter
        .wait_until(
            |m| {
                value(m, "app_tier_cmk_present", EAST) == Some(1.0)
                    && sample_sum(
                        m,
                        "app_tier_cmk_aws_requests_total",
                        &[("outcome", "other")],
                    ) > 0.0
                    && sample_sum(
                        m,
                        "app_tier_cmk_aws_requests_total",
                        &[("outcome", "network")],
                    ) > 0.0
            },
            Duration::from_secs(90),
        )
        .await;
    assert_no_panic(&mut exporter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_restarted_mid_run_is_recovered_at_the_next_round() {
    let moto = Moto::start().await;
    let port = moto.port();
    create_key(
        &Seeder::new(moto.endpoint()).kms(None, EAST).await,
        &[("app_tier", "prod")],
    )
    .await;
    let mut exporter = start_exporter(&config(&[EAST], "1s", "5s"), &moto.endpoint()).await;
    exporter
        .wait_until(
            |m| value(m, "app_tier_cmk_present", EAST) == Some(1.0),
            Duration::from_secs(30),
        )
        .await;

    moto.stop().await;
    exporter
        .wait_until(
            |m| {
                value(m, "app_tier_cmk_scan_success", EAST) == Some(0.0)
                    && sample_value(
                        m,
                        "app_tier_cmk_scan_errors_total",
                        &[("region", EAST), ("error", "network")],
                    )
                    .is_some()
            },
            Duration::from_secs(60),
        )
        .await;

    let moto = Moto::start_on(port).await;
    create_key(
        &Seeder::new(moto.endpoint()).kms(None, EAST).await,
        &[("app_tier", "prod")],
    )
    .await;
    exporter
        .wait_until(
            |m| {
                value(m, "app_tier_cmk_scan_success", EAST) == Some(1.0)
                    && value(m, "app_tier_cmk_present", EAST) == Some(1.0)
            },
            Duration::from_secs(60),
        )
        .await;
    assert_no_panic(&mut exporter);
}
