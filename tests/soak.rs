//! Soak: scan rounds every second while scrapers hammer `/metrics`, for a bounded time
//! (`SOAK_SECONDS`, default 60). Memory and file descriptors must stay flat and nothing must be
//! logged at WARN or ERROR.
//!
//! Flat means: the highest RSS of the last third is at most the highest of the first third
//! times 1.2 plus 2 MiB (the first third includes warm-up: allocator arenas, SDK connection
//! pools), and the lowest count of open descriptors of the last third is within 2 of the first
//! third's. The lowest, not the highest or the median: a scan round holds a burst of
//! connections to AWS while it runs (seen: +10, and rounds take up to half of each second
//! here), so only the count between rounds is a baseline; a leaked descriptor per scrape or per
//! round raises that baseline within seconds. A leak of a few KiB per scrape or per round
//! breaks the RSS bound within a minute at these rates.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_descriptors_stay_flat_under_scrapes_and_rounds() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .max(15);
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    for region in ["us-east-1", "eu-west-1"] {
        let kms = seeder.kms(None, region).await;
        for i in 0..4 {
            let key = create_key(&kms, &[("app_tier", "prod")]).await;
            if i == 1 {
                disable_key(&kms, &key).await;
            }
        }
        create_key(&kms, &[("team", "other")]).await;
    }
    let exporter = Exporter::start_with_moto(
        "regions = [\"us-east-1\", \"eu-west-1\"]\n[scan]\ninterval = \"1s\"\ntimeout = \"10s\"\n",
        &moto.endpoint(),
        &[],
    )
    .await;
    exporter.wait_ready(Duration::from_secs(30)).await;
    // What was logged while starting (e.g. the SDK's warning that the harness points
    // AWS_CONFIG_FILE at a missing file, on purpose) is not the soak's business.
    let logged_before = exporter.logs().len();
    let pid = exporter.pid().expect("pid");
    let url = format!("{}/metrics", exporter.base_url());
    let deadline = Instant::now() + Duration::from_secs(seconds);

    // Four keep-alive scrapers and one that opens a new connection per request.
    let mut scrapers = Vec::new();
    for fresh_connections in [false, false, false, false, true] {
        let url = url.clone();
        scrapers.push(tokio::spawn(async move {
            let pooled = http_client();
            let mut done = 0u64;
            while Instant::now() < deadline {
                let client = if fresh_connections {
                    http_client()
                } else {
                    pooled.clone()
                };
                let response = client.get(&url).send().await.expect("scrape");
                assert_eq!(response.status().as_u16(), 200);
                let body = response.text().await.expect("body");
                assert!(body.contains("app_tier_cmk_present"));
                done += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            done
        }));
    }

    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    let started = Instant::now();
    while Instant::now() < deadline {
        if let (Some(rss), Some(fds)) = (rss_kib(pid), open_fds(pid)) {
            samples.push((started.elapsed(), rss, fds));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut scrapes = 0;
    for scraper in scrapers {
        scrapes += scraper.await.expect("scraper");
    }

    let third = Duration::from_secs(seconds / 3);
    // The first two seconds are the scrapers connecting.
    let first: Vec<_> = samples
        .iter()
        .filter(|s| s.0 >= Duration::from_secs(2) && s.0 < third)
        .collect();
    let last: Vec<_> = samples
        .iter()
        .filter(|s| s.0 >= Duration::from_secs(seconds) - third)
        .collect();
    assert!(!first.is_empty() && !last.is_empty(), "{samples:?}");
    let max_rss = |w: &[&(Duration, u64, usize)]| w.iter().map(|s| s.1).max().unwrap_or(0);
    let baseline_fds = |w: &[&(Duration, u64, usize)]| w.iter().map(|s| s.2).min().unwrap_or(0);
    let (rss_first, rss_last) = (max_rss(&first), max_rss(&last));
    let (fds_first, fds_last) = (baseline_fds(&first), baseline_fds(&last));
    let body = exporter.metrics().await;
    let rounds_requests = sample_sum(
        &body,
        "app_tier_cmk_aws_requests_total",
        &[("operation", "ListKeys")],
    );
    let fd_series: Vec<usize> = samples.iter().map(|s| s.2).collect();
    println!("open descriptors every 0.5 s: {fd_series:?}");
    println!(
        "soak {seconds}s: {scrapes} scrapes, {rounds_requests} ListKeys calls; RSS max {rss_first} KiB (first third) -> {rss_last} KiB (last third); fds between rounds {fds_first} -> {fds_last}"
    );
    assert!(
        scrapes as f64 >= seconds as f64 * 20.0,
        "the scrapers barely ran: {scrapes}"
    );
    assert!(
        rounds_requests >= (seconds as f64 / 2.0) * 2.0,
        "scan rounds did not keep running: {rounds_requests} ListKeys calls"
    );
    assert!(
        rss_last as f64 <= rss_first as f64 * 1.2 + 2048.0,
        "RSS grew from {rss_first} KiB to {rss_last} KiB: {samples:?}"
    );
    assert!(
        fds_last <= fds_first + 2 && fds_first <= fds_last + 2,
        "open descriptors moved from {fds_first} to {fds_last}: {samples:?}"
    );
    let logs = exporter.logs();
    let bad: Vec<&str> = logs
        .get(logged_before..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains("ERROR") || l.contains("panicked"))
        .collect();
    assert!(
        bad.is_empty(),
        "unexpected warnings or errors:\n{}",
        bad.join("\n")
    );
}
