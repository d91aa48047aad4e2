//! Whole-fleet discovery against moto: an AWS Organization whose accounts come and go between
//! rounds, static accounts beside it, and `regions = "all"` (the Account API is a stand-in:
//! moto has no ListRegions).

mod support;

use std::time::Duration;

use support::fleet::*;
use support::*;

const WAIT: Duration = Duration::from_secs(40);

fn has_account(metrics: &str, account: &str) -> bool {
    !matching_samples(
        metrics,
        "app_tier_cmk_account_info",
        &[("account", account)],
    )
    .is_empty()
}

/// Every series that names `account`.
fn series_of(metrics: &str, account: &str) -> Vec<String> {
    parse_metrics(metrics)
        .into_iter()
        .filter(|s| s.labels.get("account").map(String::as_str) == Some(account))
        .map(|s| s.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organization_accounts_appear_and_disappear_between_rounds() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let org = seeder.organizations().await;
    create_organization(&org).await;
    let prod = create_account(&org, "prod").await;
    let staging = create_account(&org, "staging").await;
    let prod_kms = seeder.kms(Some(&prod), "us-east-1").await;
    create_key(&prod_kms, &[("app_tier", "web")]).await;

    let exporter = Exporter::start_with_moto(
        r#"
regions = ["us-east-1"]
[scan]
interval = "1s"
[organization]
role_name = "AppTierCmkScanner"
refresh_interval = "1s"
"#,
        &moto.endpoint(),
        &[],
    )
    .await;

    let m = exporter
        .wait_until(
            |m| {
                sample_value(m, "app_tier_cmk_present", &[("account", prod.as_str())]) == Some(1.0)
                    && sample_value(m, "app_tier_cmk_present", &[("account", staging.as_str())])
                        == Some(0.0)
                    && sample_value(m, "app_tier_cmk_present", &[("account", DEFAULT_ACCOUNT)])
                        == Some(0.0)
            },
            WAIT,
        )
        .await;
    exporter.wait_ready(WAIT).await;
    // Names come from Organizations; the management account is scanned with the default
    // credentials (moto names it "master").
    for (account, name) in [
        (prod.as_str(), "prod"),
        (staging.as_str(), "staging"),
        (DEFAULT_ACCOUNT, "master"),
    ] {
        assert_eq!(
            sample_value(
                &m,
                "app_tier_cmk_account_info",
                &[("account", account), ("account_name", name)]
            ),
            Some(1.0),
            "{account} {name}\n{m}"
        );
    }
    assert_eq!(
        sample_value(&m, "app_tier_cmk_organization_refresh_success", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&m, "app_tier_cmk_organization_accounts", &[]),
        Some(3.0)
    );
    let (ok, out) = promtool_check_metrics(&m);
    assert!(ok, "{out}");

    // A new account appears without a restart.
    let added = create_account(&org, "sandbox").await;
    exporter
        .wait_until(
            |m| {
                sample_value(
                    m,
                    "app_tier_cmk_scan_success",
                    &[("account", added.as_str())],
                ) == Some(1.0)
            },
            WAIT,
        )
        .await;

    // Accounts that leave (removed, or closed: SUSPENDED) disappear with all their series.
    remove_account(&org, &staging).await;
    close_account(&org, &prod).await;
    let m = exporter
        .wait_until(
            |m| !has_account(m, &staging) && !has_account(m, &prod),
            WAIT,
        )
        .await;
    assert!(series_of(&m, &staging).is_empty(), "{m}");
    assert!(series_of(&m, &prod).is_empty(), "{m}");
    assert!(has_account(&m, &added) && has_account(&m, DEFAULT_ACCOUNT));
    assert_eq!(
        sample_value(&m, "app_tier_cmk_organization_accounts", &[]),
        Some(2.0)
    );
    assert_eq!(exporter.get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_accounts_win_and_a_failed_list_keeps_the_last_one() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let org = seeder.organizations().await;
    create_organization(&org).await;
    let pinned = create_account(&org, "from-org").await;
    let member = create_account(&org, "member").await;
    let config = format!(
        r#"
regions = ["us-east-1"]
[scan]
interval = "1s"
[organization]
role_name = "AppTierCmkScanner"
refresh_interval = "1s"
exclude = ["{DEFAULT_ACCOUNT}"]

[[accounts]]
name = "pinned-statically"
role_arn = "arn:aws:iam::{pinned}:role/OtherRole"
"#
    );
    let exporter = Exporter::start_with_moto(&config, &moto.endpoint(), &[]).await;
    let m = exporter
        .wait_until(
            |m| {
                sample_value(
                    m,
                    "app_tier_cmk_scan_success",
                    &[("account", member.as_str())],
                ) == Some(1.0)
                    && sample_value(
                        m,
                        "app_tier_cmk_scan_success",
                        &[("account", pinned.as_str())],
                    ) == Some(1.0)
            },
            WAIT,
        )
        .await;
    // One target for the account in both places, named by the static entry.
    assert_eq!(
        matching_samples(
            &m,
            "app_tier_cmk_scan_success",
            &[("account", pinned.as_str())]
        )
        .len(),
        1
    );
    assert_eq!(
        sample_value(
            &m,
            "app_tier_cmk_account_info",
            &[
                ("account", pinned.as_str()),
                ("account_name", "pinned-statically")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    assert!(!has_account(&m, DEFAULT_ACCOUNT), "excluded: {m}");
    assert_eq!(
        sample_value(&m, "app_tier_cmk_organization_accounts", &[]),
        Some(1.0)
    );

    // AWS stops answering: ListAccounts fails, the last list stays (its scans fail too).
    moto.stop().await;
    let m = exporter
        .wait_until(
            |m| sample_value(m, "app_tier_cmk_organization_refresh_success", &[]) == Some(0.0),
            WAIT,
        )
        .await;
    assert!(has_account(&m, &member), "{m}");
    assert!(
        matching_samples(
            &m,
            "app_tier_cmk_aws_requests_total",
            &[("operation", "ListAccounts")]
        )
        .iter()
        .any(|s| s.labels["outcome"] != "success"),
        "the failed ListAccounts is counted: {m}"
    );
    assert!(
        exporter
            .logs()
            .contains("cannot read the organization's account list"),
        "{}",
        exporter.logs()
    );
}

const STUB_REGIONS: [(&str, &str); 5] = [
    ("us-east-1", "ENABLED_BY_DEFAULT"),
    ("eu-west-1", "ENABLED_BY_DEFAULT"),
    ("af-south-1", "ENABLED"),
    ("ap-east-1", "DISABLED"),
    ("me-south-1", "ENABLING"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_all_scans_only_enabled_regions_less_excluded_ones() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let org = seeder.organizations().await;
    create_organization(&org).await;
    let member = create_account(&org, "member").await;
    let stub = AccountApiStub::start(&STUB_REGIONS).await;
    let exporter = Exporter::builder(
        r#"
[scan]
interval = "1s"
[organization]
role_name = "AppTierCmkScanner"
regions = "all"
exclude_regions = ["eu-west-1"]
"#,
    )
    .moto(&moto.endpoint())
    .env("AWS_ENDPOINT_URL_ACCOUNT", stub.endpoint())
    .start()
    .await;
    exporter.wait_ready(WAIT).await;
    let m = exporter.metrics().await;
    for account in [member.as_str(), DEFAULT_ACCOUNT] {
        let mut regions: Vec<String> =
            matching_samples(&m, "app_tier_cmk_scan_success", &[("account", account)])
                .into_iter()
                .map(|s| {
                    assert_eq!(s.value, 1.0, "{account}: {m}");
                    s.labels["region"].clone()
                })
                .collect();
        regions.sort();
        assert_eq!(
            regions,
            vec!["af-south-1", "us-east-1"],
            "{account}: {m}\nlogs:\n{}",
            exporter.logs()
        );
    }
    assert!(
        matching_samples(&m, "app_tier_cmk_scan_errors_total", &[]).is_empty(),
        "disabled regions raise no errors: {m}"
    );
    // Two accounts, two pages each (three matching regions, two per page).
    assert!(stub.calls() >= 4, "{} ListRegions calls", stub.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_all_with_unreadable_regions_reports_the_account_as_failing() {
    let moto = Moto::start().await;
    let (dir, path) = write_config("regions = \"all\"\n");
    let mut env = aws_env(&moto.endpoint());
    // Nothing listens there: ListRegions fails.
    env.push((
        "AWS_ENDPOINT_URL_ACCOUNT".to_string(),
        format!("http://127.0.0.1:{}", free_port()),
    ));
    let (code, stdout, stderr) = run_scan(
        &[
            "scan",
            "--config",
            path.to_str().expect("path"),
            "--output",
            "json",
        ],
        &env,
    )
    .await;
    drop(dir);
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(
        rows[0]["region"], "us-east-1",
        "reported in the home region"
    );
    assert_eq!(rows[0]["verdict"], "UNKNOWN");
    assert!(
        rows[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ListRegions")),
        "{stdout}"
    );
}
