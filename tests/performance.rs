//! Cheapness and scale against moto: credentials are reused across rounds, a scrape makes no
//! AWS call, later rounds spread their targets over the interval, and shards split the
//! accounts (configured or from an organization) without overlap or gap.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use app_tier_cmk_exporter::config::AccountId;
use app_tier_cmk_exporter::shard::shard_of;
use support::*;

const ACCOUNTS: [&str; 6] = [
    "111111111111",
    "222222222222",
    "333333333333",
    "444444444444",
    "555555555555",
    "666666666666",
];

fn role_accounts_config(accounts: &[&str], interval: &str) -> String {
    let mut toml = format!("regions = [\"us-east-1\"]\n[scan]\ninterval = \"{interval}\"\n");
    for account in accounts {
        toml.push_str(&format!(
            "[[accounts]]\nrole_arn = \"{}\"\n",
            scanner_role_arn(account)
        ));
    }
    toml
}

fn calls(body: &str, operation: &str) -> f64 {
    matching_samples(
        body,
        "app_tier_cmk_aws_requests_total",
        &[("operation", operation)],
    )
    .iter()
    .map(|s| s.value)
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assumed_role_credentials_are_reused_across_rounds() {
    let moto = Moto::start().await;
    let accounts = &ACCOUNTS[..2];
    let exporter =
        Exporter::start_with_moto(&role_accounts_config(accounts, "1s"), &moto.endpoint(), &[])
            .await;
    // Three rounds: one ListKeys per target and round.
    let body = exporter
        .wait_until(
            |body| calls(body, "ListKeys") >= 3.0 * accounts.len() as f64,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        calls(&body, "AssumeRole"),
        accounts.len() as f64,
        "one AssumeRole per account, not per round\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_make_no_aws_calls() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let kms = seeder.kms(Some(ACCOUNTS[0]), "us-east-1").await;
    create_key(&kms, &[("app_tier", "web")]).await;
    let exporter = Exporter::start_with_moto(
        &role_accounts_config(&ACCOUNTS[..1], "1h"),
        &moto.endpoint(),
        &[],
    )
    .await;
    exporter.wait_ready(Duration::from_secs(30)).await;
    let requests = |body: &str| {
        matching_samples(body, "app_tier_cmk_aws_requests_total", &[])
            .iter()
            .map(|s| s.value)
            .sum::<f64>()
    };
    let before = requests(&exporter.metrics().await);
    assert!(before > 0.0);
    for _ in 0..50 {
        exporter.metrics().await;
    }
    assert_eq!(requests(&exporter.metrics().await), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_split_the_accounts_without_overlap_or_gap() {
    let moto = Moto::start().await;
    let (_dir, path) = write_config(&role_accounts_config(&ACCOUNTS, "1h"));
    let seen = accounts_by_shard(&path, &aws_env(&moto.endpoint()), 3).await;
    let all: BTreeSet<String> = ACCOUNTS.iter().map(|a| a.to_string()).collect();
    assert_eq!(seen, all, "every account on some shard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_exporter_exports_its_shard_and_only_its_accounts() {
    let moto = Moto::start().await;
    let total = 2u32;
    let shard = 1u32;
    let exporter = Exporter::builder(&role_accounts_config(&ACCOUNTS, "1h"))
        .moto(&moto.endpoint())
        .env("APP_TIER_CMK_TOTAL_SHARDS", total.to_string())
        .args(&["--config", "{config}", "--shard", &shard.to_string()])
        .start()
        .await;
    exporter.wait_ready(Duration::from_secs(30)).await;
    let body = exporter.metrics().await;
    assert_eq!(
        sample_value(
            &body,
            "app_tier_cmk_shard_info",
            &[("shard", "1"), ("total_shards", "2")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample_value(&body, "app_tier_cmk_total_shards", &[]),
        Some(2.0)
    );
    let exported: BTreeSet<String> = matching_samples(&body, "app_tier_cmk_account_info", &[])
        .into_iter()
        .filter_map(|s| s.labels.get("account").cloned())
        .collect();
    let owned: BTreeSet<String> = ACCOUNTS
        .iter()
        .filter(|a| shard_of(&AccountId::parse(a).expect("id"), total) == shard)
        .map(|a| a.to_string())
        .collect();
    assert!(!owned.is_empty() && owned.len() < ACCOUNTS.len());
    assert_eq!(exported, owned);
    assert_eq!(calls(&body, "AssumeRole"), owned.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_outside_total_shards_is_refused() {
    let (code, _, stderr) = run_scan(
        &["--shard", "2", "--total-shards", "2"],
        &[("AWS_REGION", "us-east-1")],
    )
    .await;
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("--shard 2") && stderr.contains("0 to 1"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_split_an_organizations_accounts_too() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let org = seeder.organizations().await;
    support::fleet::create_organization(&org).await;
    let mut all = BTreeSet::from([DEFAULT_ACCOUNT.to_owned()]);
    for name in ["a", "b", "c", "d", "e"] {
        all.insert(support::fleet::create_account(&org, name).await);
    }
    let (_dir, path) = write_config(
        "regions = [\"us-east-1\"]\n[organization]\nrole_name = \"AppTierCmkScanner\"\n",
    );
    let seen = accounts_by_shard(&path, &aws_env(&moto.endpoint()), 2).await;
    assert_eq!(seen, all, "every organization account on exactly one shard");
}

/// Runs `scan` once per shard of `total` and returns every account reported, checking that
/// each is reported by the shard `shard_of` assigns it to, and by no other.
async fn accounts_by_shard(
    config: &std::path::Path,
    env: &[(String, String)],
    total: u32,
) -> BTreeSet<String> {
    let path = config.to_string_lossy().into_owned();
    let mut seen = BTreeSet::new();
    for shard in 0..total {
        let (_, stdout, stderr) = run_scan(
            &[
                "scan",
                "--config",
                &path,
                "--output",
                "json",
                "--shard",
                &shard.to_string(),
                "--total-shards",
                &total.to_string(),
            ],
            env,
        )
        .await;
        let rows: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {stdout}\n{stderr}"));
        for row in rows.as_array().expect("array") {
            let account = row["account"].as_str().expect("account").to_owned();
            let id = AccountId::parse(&account).expect("12 digits");
            assert_eq!(shard_of(&id, total), shard, "{account} on the wrong shard");
            assert!(seen.insert(account.clone()), "{account} on two shards");
        }
    }
    seen
}

/// `app_tier_cmk_last_success_timestamp_seconds` of every target.
fn success_times(body: &str) -> Vec<f64> {
    matching_samples(body, "app_tier_cmk_last_success_timestamp_seconds", &[])
        .iter()
        .map(|s| s.value)
        .collect()
}

fn spread(times: &[f64]) -> f64 {
    let max = times.iter().copied().fold(f64::MIN, f64::max);
    let min = times.iter().copied().fold(f64::MAX, f64::min);
    max - min
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_round_starts_at_once_and_later_rounds_spread_over_the_interval() {
    let moto = Moto::start().await;
    // interval 3 s, timeout 1 s: later rounds spread 4 targets over min(2.4 s, 2 s), 0.5 s apart.
    let mut config = role_accounts_config(&ACCOUNTS[..2], "3s");
    config = config.replace(
        "regions = [\"us-east-1\"]",
        "regions = [\"us-east-1\", \"eu-west-1\"]",
    );
    config = config.replace("[scan]\n", "[scan]\ntimeout = \"1s\"\n");
    let exporter = Exporter::start_with_moto(&config, &moto.endpoint(), &[]).await;
    exporter.wait_ready(Duration::from_secs(30)).await;
    let first = success_times(&exporter.metrics().await);
    assert_eq!(first.len(), 4);
    assert!(spread(&first) < 0.5, "first round at once: {first:?}");

    let last_of_first = first.iter().copied().fold(f64::MIN, f64::max);
    let body = exporter
        .wait_until(
            |body| {
                let times = success_times(body);
                times.len() == 4 && times.iter().all(|t| *t > last_of_first)
            },
            Duration::from_secs(30),
        )
        .await;
    let second = success_times(&body);
    assert!(
        (1.0..2.4).contains(&spread(&second)),
        "second round spread over about 1.5 s: {second:?}"
    );
}
