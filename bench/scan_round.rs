//! Scan-round benchmark: builds a realistic inventory in moto, runs one round per discovery
//! mode (`kms`, `tagging`) in the release exporter, and prints, side by side: wall time, AWS
//! calls by operation, calls per target, peak RSS, CPU time, and the ratio of the round's time
//! to the time moto itself needs for that many calls at its measured ceiling.
//!
//! `cargo bench --bench scan_round` (all scenarios) or
//! `cargo bench --bench scan_round -- --scenario 20x4x100`; under `cargo test` it runs a tiny
//! inventory as a smoke test. Output: Markdown on stdout (see bench/RESULTS.md).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::*;

use common::*;

/// AWS calls in flight: the exporter's default `scan.concurrency`, and the ceiling loop's.
const CONCURRENCY: usize = 16;
/// Calls in flight while seeding.
const SEED_CONCURRENCY: usize = 32;

struct Scenario {
    name: &'static str,
    /// `None`: the default account (no role); else this many accounts through AssumeRole.
    accounts: Option<usize>,
    /// Keys per region, one entry per region.
    keys_per_region: Vec<usize>,
}

const REGIONS: [&str; 4] = ["us-east-1", "eu-west-1", "ap-southeast-2", "sa-east-1"];

impl Scenario {
    fn account_ids(&self) -> Vec<Option<String>> {
        match self.accounts {
            None => vec![None],
            Some(n) => (0..n)
                .map(|i| Some(format!("{:012}", 100_000_000_000u64 + i as u64 * 7919)))
                .collect(),
        }
    }

    fn regions(&self) -> &[&'static str] {
        &REGIONS[..self.keys_per_region.len()]
    }

    /// (account, region, number of keys, target index)
    fn targets(&self) -> Vec<(Option<String>, &'static str, usize, usize)> {
        let mut out = Vec::new();
        for account in self.account_ids() {
            for (r, region) in self.regions().iter().enumerate() {
                let index = out.len();
                out.push((account.clone(), *region, self.keys_per_region[r], index));
            }
        }
        out
    }

    fn config(&self, discovery: &str) -> String {
        let regions: Vec<String> = self.regions().iter().map(|r| format!("\"{r}\"")).collect();
        let mut toml = format!(
            "regions = [{}]\n[scan]\ninterval = \"1h\"\ntimeout = \"30m\"\nconcurrency = {CONCURRENCY}\ndiscovery = \"{discovery}\"\n",
            regions.join(", ")
        );
        for account in self.account_ids().into_iter().flatten() {
            toml.push_str(&format!(
                "[[accounts]]\nrole_arn = \"{}\"\n",
                scanner_role_arn(&account)
            ));
        }
        toml
    }
}

/// What a key looks like: tagged or not, and its state.
#[derive(Clone, Copy, PartialEq)]
enum Seed {
    Tagged(State),
    Untagged(State),
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Enabled,
    Disabled,
    PendingDeletion,
}

/// Every tenth key carries the App-Tier tag, cycling Enabled, Disabled, PendingDeletion; a
/// seventh of the others are disabled, half of them carry another tag. Every fourth target
/// holds no App-Tier key at all (it FAILs).
fn key_seed(target: usize, key: usize) -> Seed {
    if key.is_multiple_of(10) && target % 4 != 3 {
        Seed::Tagged(match (key / 10) % 3 {
            0 => State::Enabled,
            1 => State::Disabled,
            _ => State::PendingDeletion,
        })
    } else if key % 7 == 3 {
        Seed::Untagged(State::Disabled)
    } else {
        Seed::Untagged(State::Enabled)
    }
}

struct Expected {
    targets: usize,
    keys: usize,
    tagged: usize,
    passing: usize,
}

fn expected(scenario: &Scenario) -> Expected {
    let mut e = Expected {
        targets: 0,
        keys: 0,
        tagged: 0,
        passing: 0,
    };
    for (_, _, keys, target) in scenario.targets() {
        e.targets += 1;
        e.keys += keys;
        let seeds: Vec<Seed> = (0..keys).map(|k| key_seed(target, k)).collect();
        e.tagged += seeds
            .iter()
            .filter(|s| matches!(s, Seed::Tagged(_)))
            .count();
        if seeds.contains(&Seed::Tagged(State::Enabled)) {
            e.passing += 1;
        }
    }
    e
}

/// An enabled App-Tier key, for the ceiling loop.
struct SampleKey {
    account: Option<String>,
    region: &'static str,
    key_id: String,
}

/// Creates the keys; returns the number of AWS calls it made and one tagged key to use for
/// the ceiling loop.
async fn seed(moto: &BenchMoto, scenario: &Scenario) -> (usize, Option<SampleKey>) {
    let seeder = Seeder::new(moto.endpoint());
    let mut jobs = Vec::new();
    for (account, region, keys, target) in scenario.targets() {
        let client = Arc::new(seeder.kms(account.as_deref(), region).await);
        for key in 0..keys {
            jobs.push((
                Arc::clone(&client),
                account.clone(),
                region,
                key_seed(target, key),
            ));
        }
    }
    let made: Vec<(usize, Option<SampleKey>)> = futures::stream::iter(jobs)
        .map(|(client, account, region, seed)| async move {
            let (tags, state): (&[(&str, &str)], State) = match seed {
                Seed::Tagged(state) => (&[("app_tier", "web")], state),
                Seed::Untagged(state) => (&[("team", "payments")], state),
            };
            let id = create_key(&client, tags).await;
            let calls = match state {
                State::Enabled => 1,
                State::Disabled => {
                    disable_key(&client, &id).await;
                    2
                }
                State::PendingDeletion => {
                    schedule_deletion(&client, &id, 7).await;
                    2
                }
            };
            let sample = matches!(seed, Seed::Tagged(State::Enabled)).then(|| SampleKey {
                account,
                region,
                key_id: id,
            });
            (calls, sample)
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .collect()
        .await;
    let calls = made.iter().map(|(c, _)| c).sum();
    (calls, made.into_iter().find_map(|(_, s)| s))
}

/// moto builds the tagging API's backends lazily: about a second on its first GetResources,
/// then tens of milliseconds on the first of each account and region. AWS has no such cost:
/// pay it before any round is timed, with one GetResources per target.
async fn warm_up_tagging_api(moto: &BenchMoto, scenario: &Scenario) {
    let seeder = Seeder::new(moto.endpoint());
    let endpoint = moto.endpoint();
    futures::stream::iter(scenario.targets())
        .for_each_concurrent(CONCURRENCY, |(account, region, _, _)| {
            let seeder = seeder.clone();
            let endpoint = endpoint.clone();
            async move {
                let credentials = match &account {
                    Some(account) => seeder.assume_role_credentials(account).await,
                    None => aws_credential_types::Credentials::new(
                        TEST_ACCESS_KEY,
                        TEST_SECRET_KEY,
                        None,
                        None,
                        "bench",
                    ),
                };
                let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .endpoint_url(endpoint)
                    .region(aws_config::Region::new(region))
                    .credentials_provider(credentials)
                    .load()
                    .await;
                aws_sdk_resourcegroupstagging::Client::new(&config)
                    .get_resources()
                    .resource_type_filters("kms:key")
                    .send()
                    .await
                    .expect("GetResources to warm moto up");
            }
        })
        .await;
}

/// moto's ceiling: ListResourceTags on one key, `CONCURRENCY` in flight, for `duration`.
async fn ceiling(moto: &BenchMoto, key: &SampleKey, duration: Duration) -> f64 {
    let client = Seeder::new(moto.endpoint())
        .kms(key.account.as_deref(), key.region)
        .await;
    let started = Instant::now();
    let workers = (0..CONCURRENCY).map(|_| {
        let client = client.clone();
        let key_id = key.key_id.clone();
        async move {
            let mut calls = 0u64;
            while started.elapsed() < duration {
                client
                    .list_resource_tags()
                    .key_id(&key_id)
                    .send()
                    .await
                    .expect("ListResourceTags in the ceiling loop");
                calls += 1;
            }
            calls
        }
    });
    let calls: u64 = futures::future::join_all(workers).await.iter().sum();
    calls as f64 / started.elapsed().as_secs_f64()
}

struct ModeResult {
    round_seconds: f64,
    ready_seconds: f64,
    calls: BTreeMap<String, u64>,
    failed: u64,
    peak_rss_mib: f64,
    cpu: Duration,
    passing: usize,
}

async fn run_mode(moto: &BenchMoto, scenario: &Scenario, discovery: &str) -> ModeResult {
    let started = Instant::now();
    let exporter = Exporter::builder(&scenario.config(discovery))
        .moto(&moto.endpoint())
        .args(&["--config", "{config}", "--log.format", "json"])
        .start()
        .await;
    exporter.wait_ready(Duration::from_secs(3600)).await;
    let ready_seconds = started.elapsed().as_secs_f64();
    let pid = exporter.pid().expect("exporter running");
    let (peak_rss_mib, _) = memory_mib(pid);
    let cpu = cpu_time(pid);
    let metrics = exporter.metrics().await;
    let passing = matching_samples(&metrics, "app_tier_cmk_present", &[])
        .iter()
        .filter(|s| s.value == 1.0)
        .count();
    ModeResult {
        round_seconds: round_seconds(&exporter.logs()).unwrap_or(f64::NAN),
        ready_seconds,
        calls: calls_by_operation(&metrics),
        failed: failed_calls(&metrics),
        peak_rss_mib,
        cpu,
        passing,
    }
}

async fn run_scenario(scenario: &Scenario, ceiling_time: Duration) -> bool {
    let e = expected(scenario);
    println!(
        "\n## {}: {} account(s) x {} region(s), {} keys\n",
        scenario.name,
        scenario.account_ids().len(),
        scenario.regions().len(),
        e.keys
    );
    println!(
        "{} targets, {} keys of which {} carry the App-Tier tag; {} targets hold an enabled App-Tier key (PASS).\n",
        e.targets, e.keys, e.tagged, e.passing
    );
    let moto = BenchMoto::start().await;
    let seeding = Instant::now();
    let (seed_calls, sample_key) = seed(&moto, scenario).await;
    warm_up_tagging_api(&moto, scenario).await;
    let seed_time = seeding.elapsed().as_secs_f64();
    println!(
        "Seeded with {seed_calls} calls in {seed_time:.1} s ({:.0} calls/s, {SEED_CONCURRENCY} in flight), \
         then one GetResources per target, untimed, to let moto build its tagging backends \
         (it does so lazily per account and region; AWS has no such cost).\n",
        seed_calls as f64 / seed_time
    );

    let kms = run_mode(&moto, scenario, "kms").await;
    let tagging = run_mode(&moto, scenario, "tagging").await;
    let Some(sample_key) = sample_key else {
        println!("(no tagged key: no ceiling measured)");
        return kms.passing == e.passing && tagging.passing == e.passing;
    };
    let ceiling = ceiling(&moto, &sample_key, ceiling_time).await;
    println!(
        "moto's ceiling, measured right after the rounds: **{ceiling:.0} calls/s** (ListResourceTags on one key, {CONCURRENCY} in flight, {:.0} s).\n",
        ceiling_time.as_secs_f64()
    );

    let total = |r: &ModeResult| r.calls.values().sum::<u64>();
    let mut operations: Vec<&String> = kms.calls.keys().chain(tagging.calls.keys()).collect();
    operations.sort();
    operations.dedup();
    let row = |label: &str, k: String, t: String| println!("| {label} | {k} | {t} |");
    // One row: `cell` applied to each mode.
    let both = |label: &str, cell: &dyn Fn(&ModeResult) -> String| {
        row(label, cell(&kms), cell(&tagging));
    };
    println!("| per round | `kms` | `tagging` |\n|---|---:|---:|");
    both("wall time of the round", &|r| {
        format!("{:.2} s", r.round_seconds)
    });
    both("process start to `/readyz` 200", &|r| {
        format!("{:.2} s", r.ready_seconds)
    });
    both("AWS calls", &|r| total(r).to_string());
    for op in operations {
        both(&format!("&nbsp;&nbsp;{op}"), &|r| {
            r.calls.get(op).copied().unwrap_or(0).to_string()
        });
    }
    both("failed attempts", &|r| r.failed.to_string());
    both("calls per target", &|r| {
        format!("{:.1}", total(r) as f64 / e.targets as f64)
    });
    let bound = |r: &ModeResult| total(r) as f64 / ceiling;
    both("moto-bound time (calls / ceiling)", &|r| {
        format!("{:.2} s", bound(r))
    });
    both("**ratio round / bound** (target <= 1.3)", &|r| {
        format!("**{:.2}**", r.round_seconds / bound(r))
    });
    both("peak RSS (VmHWM)", &|r| {
        format!("{:.1} MiB", r.peak_rss_mib)
    });
    both("exporter CPU (user+sys, start to ready)", &|r| {
        format!("{:.2} s", r.cpu.as_secs_f64())
    });
    both(&format!("PASS targets (expected {})", e.passing), &|r| {
        r.passing.to_string()
    });
    kms.passing == e.passing && tagging.passing == e.passing
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "cloudsploit-comparison",
            accounts: None,
            keys_per_region: vec![117, 117, 117, 0],
        },
        Scenario {
            name: "20x4x100",
            accounts: Some(20),
            keys_per_region: vec![100; 4],
        },
        Scenario {
            name: "100x3x50",
            accounts: Some(100),
            keys_per_region: vec![50; 3],
        },
    ]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (scenarios, ceiling_time) = if full_run() {
        let only = flag("scenario");
        let chosen: Vec<Scenario> = scenarios()
            .into_iter()
            .filter(|s| only.as_deref().is_none_or(|o| o == s.name))
            .collect();
        (chosen, Duration::from_secs(10))
    } else {
        let smoke = Scenario {
            name: "smoke (cargo test)",
            accounts: Some(2),
            keys_per_region: vec![12, 0],
        };
        (vec![smoke], Duration::from_secs(1))
    };
    println!("# Scan round benchmark\n\n{}", machine());
    let mut all_right = true;
    for scenario in &scenarios {
        all_right &= run_scenario(scenario, ceiling_time).await;
    }
    assert!(
        all_right,
        "a mode's verdicts differ from the seeded inventory"
    );
}
