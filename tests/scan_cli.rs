//! Integration tests of the one-shot `scan` subcommand (report formats, exit codes)
//! and of configuration errors (exit 3 with a message naming source, key and value).
//!
//! Every test that needs AWS starts its own `moto_server`; configuration errors are
//! run against an endpoint where nothing listens, so a configuration wrongly accepted
//! shows up as a scan result instead of exit 3.

mod support;

use support::*;

const PROD_ACCOUNT: &str = "111111111111";
const SHARED_ACCOUNT: &str = "222222222222";
/// Nothing listens on port 1.
const DEAD_ENDPOINT: &str = "http://127.0.0.1:1";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

struct ScanRun {
    code: i32,
    stdout: String,
    stderr: String,
    config_path: String,
}

/// Writes `config` to a temporary file and runs `scan --config FILE ARGS...` with
/// `aws_env(endpoint)` plus `extra_env`.
async fn scan(config: &str, endpoint: &str, args: &[&str], extra_env: &[(&str, &str)]) -> ScanRun {
    let (_dir, path) = write_config(config);
    let config_path = path.display().to_string();
    let mut all_args = vec!["scan", "--config", config_path.as_str()];
    all_args.extend_from_slice(args);
    let mut env = aws_env(endpoint);
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let (code, stdout, stderr) = run_scan(&all_args, &env).await;
    ScanRun {
        code,
        stdout,
        stderr,
        config_path,
    }
}

/// One parsed row of the JSON report.
#[derive(Debug, PartialEq)]
struct Row {
    account: String,
    name: String,
    region: String,
    verdict: String,
    message: String,
    key_ids: Vec<String>,
}

/// Parses the JSON report, checking that every row has exactly the six fields.
fn json_rows(run: &ScanRun) -> Vec<Row> {
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "scan --output json printed no JSON ({e}):\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    });
    let rows = value.as_array().expect("a JSON array of rows");
    rows.iter()
        .map(|row| {
            let object = row.as_object().expect("each row is an object");
            let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
            fields.sort();
            assert_eq!(
                fields,
                ["account", "key_ids", "message", "name", "region", "verdict"],
                "fields of {row}"
            );
            let text = |k: &str| {
                object[k]
                    .as_str()
                    .unwrap_or_else(|| panic!("{k} is not a string in {row}"))
                    .to_string()
            };
            Row {
                account: text("account"),
                name: text("name"),
                region: text("region"),
                verdict: text("verdict"),
                message: text("message"),
                key_ids: object["key_ids"]
                    .as_array()
                    .expect("key_ids is an array")
                    .iter()
                    .map(|k| k.as_str().expect("key id string").to_string())
                    .collect(),
            }
        })
        .collect()
}

/// Byte offset and text of each whitespace-separated cell of a line.
fn cell_starts(line: &str) -> Vec<(usize, &str)> {
    let mut cells = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                cells.push((s, &line[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        cells.push((s, &line[s..]));
    }
    cells
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

/// Keys seeded by [`seed_two_accounts`].
struct TwoAccounts {
    main_east: String,
    main_west: Vec<String>,
    prod_east: String,
    prod_west_disabled: String,
}

/// main (default credentials): us-east-1 one tagged key (+ an untagged one),
/// eu-west-1 two tagged keys. prod (111111111111): us-east-1 one tagged key behind an
/// alias, eu-west-1 only a disabled tagged key (so that target FAILs).
async fn seed_two_accounts(moto: &Moto) -> TwoAccounts {
    let seeder = Seeder::new(moto.endpoint());
    let main_e = seeder.kms(None, "us-east-1").await;
    let main_w = seeder.kms(None, "eu-west-1").await;
    let prod_e = seeder.kms(Some(PROD_ACCOUNT), "us-east-1").await;
    let prod_w = seeder.kms(Some(PROD_ACCOUNT), "eu-west-1").await;
    let main_east = create_key(&main_e, &[("app_tier", "prod")]).await;
    create_key(&main_e, &[("team", "core")]).await;
    let w1 = create_key(&main_w, &[("app_tier", "prod")]).await;
    let w2 = create_key(&main_w, &[("app_tier", "batch")]).await;
    let prod_east = create_key(&prod_e, &[("app_tier", "prod")]).await;
    create_alias(&prod_e, "alias/app-tier", &prod_east).await;
    let prod_west_disabled = create_key(&prod_w, &[("app_tier", "prod")]).await;
    disable_key(&prod_w, &prod_west_disabled).await;
    TwoAccounts {
        main_east,
        main_west: sorted(&[&w1, &w2]),
        prod_east,
        prod_west_disabled,
    }
}

fn two_accounts_config(prod_regions: Option<&str>) -> String {
    let prod_regions = prod_regions
        .map(|r| format!("regions = {r}\n"))
        .unwrap_or_default();
    format!(
        r#"regions = ["us-east-1", "eu-west-1"]

[[accounts]]
name = "main"

[[accounts]]
name = "prod"
role_arn = "arn:aws:iam::{PROD_ACCOUNT}:role/AppTierCmkScanner"
external_id = "ext-4711"
{prod_regions}"#
    )
}

// ---------------------------------------------------------------------------
// Reports and exit codes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_output_has_one_row_per_target_and_exits_1_when_one_region_lacks_the_key() {
    let moto = Moto::start().await;
    let keys = seed_two_accounts(&moto).await;
    let run = scan(&two_accounts_config(None), &moto.endpoint(), &[], &[]).await;
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );

    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "header and four rows:\n{}", run.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ACCOUNT", "NAME", "REGION", "VERDICT", "KEYS", "MESSAGE"]
    );
    // Columns are aligned: every cell starts under its header.
    let columns: Vec<usize> = header
        .iter()
        .map(|h| lines[0].find(h).expect("header cell"))
        .collect();

    let expected = [
        (
            DEFAULT_ACCOUNT,
            "main",
            "us-east-1",
            "PASS",
            keys.main_east.clone(),
        ),
        (
            DEFAULT_ACCOUNT,
            "main",
            "eu-west-1",
            "PASS",
            keys.main_west.join(","),
        ),
        (
            PROD_ACCOUNT,
            "prod",
            "us-east-1",
            "PASS",
            keys.prod_east.clone(),
        ),
        (PROD_ACCOUNT, "prod", "eu-west-1", "FAIL", "-".to_string()),
    ];
    for (line, (account, name, region, verdict, key_cell)) in lines[1..].iter().zip(expected) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert!(cells.len() > 5, "row {line:?}");
        assert_eq!(
            cells[..5],
            [account, name, region, verdict, key_cell.as_str()],
            "row {line:?}"
        );
        for ((start, cell), column) in cell_starts(line).into_iter().take(5).zip(&columns) {
            assert_eq!(
                start, *column,
                "{cell} not under its header in\n{}",
                run.stdout
            );
        }
        let message = &line[columns[5]..];
        assert!(message.contains("app_tier"), "message of {line:?}");
    }
    let fail_message = &lines[4][columns[5]..];
    assert!(
        fail_message.contains("Disabled"),
        "the FAIL message should say what was found: {fail_message}"
    );
    assert!(
        !run.stdout.contains(&keys.prod_west_disabled),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_has_account_name_region_verdict_message_and_key_ids_per_target() {
    let moto = Moto::start().await;
    let keys = seed_two_accounts(&moto).await;
    let run = scan(
        &two_accounts_config(None),
        &moto.endpoint(),
        &["--output", "json"],
        &[],
    )
    .await;
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let rows = json_rows(&run);
    let summary: Vec<(&str, &str, &str, &str, Vec<String>)> = rows
        .iter()
        .map(|r| {
            (
                r.account.as_str(),
                r.name.as_str(),
                r.region.as_str(),
                r.verdict.as_str(),
                r.key_ids.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                DEFAULT_ACCOUNT,
                "main",
                "us-east-1",
                "PASS",
                vec![keys.main_east.clone()]
            ),
            (
                DEFAULT_ACCOUNT,
                "main",
                "eu-west-1",
                "PASS",
                keys.main_west.clone()
            ),
            (
                PROD_ACCOUNT,
                "prod",
                "us-east-1",
                "PASS",
                vec![keys.prod_east.clone()]
            ),
            (PROD_ACCOUNT, "prod", "eu-west-1", "FAIL", vec![]),
        ]
    );
    assert!(
        rows[0].message.contains("1 customer-managed key"),
        "{:?}",
        rows[0]
    );
    assert!(
        rows[1].message.contains("2 customer-managed key"),
        "{:?}",
        rows[1]
    );
    assert!(
        rows[3].message.contains("app_tier") && rows[3].message.contains("1 Disabled"),
        "{:?}",
        rows[3]
    );

    // The table says the same.
    let table = scan(
        &two_accounts_config(None),
        &moto.endpoint(),
        &["--output", "table"],
        &[],
    )
    .await;
    assert_eq!(table.code, 1);
    for row in &rows {
        assert!(
            table.stdout.lines().any(|l| l.contains(&row.region)
                && l.contains(&row.account)
                && l.ends_with(&row.message)),
            "no table line for {row:?}:\n{}",
            table.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_exits_0_when_every_target_passes() {
    let moto = Moto::start().await;
    let keys = seed_two_accounts(&moto).await;
    // prod only in us-east-1 (per-account regions override the top level).
    let run = scan(
        &two_accounts_config(Some(r#"["us-east-1"]"#)),
        &moto.endpoint(),
        &["--output", "json"],
        &[],
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let rows = json_rows(&run);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.verdict == "PASS"), "{rows:?}");
    assert_eq!(rows[2].account, PROD_ACCOUNT);
    assert_eq!(rows[2].key_ids, vec![keys.prod_east.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_key_refusal_leaves_the_target_unknown_and_exits_2() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let east = seeder.kms(Some(SHARED_ACCOUNT), "us-east-1").await;
    let denied = create_key(&east, &[("app_tier", "prod")]).await;
    deny_describe_key(&east, &denied).await;
    // eu-west-1 has no key at all: FAIL, but UNKNOWN wins the exit code.
    let config = format!(
        "regions = [\"us-east-1\", \"eu-west-1\"]\n[[accounts]]\nrole_arn = \"arn:aws:iam::{SHARED_ACCOUNT}:role/AppTierCmkScanner\"\n"
    );
    let run = scan(&config, &moto.endpoint(), &["--output", "json"], &[]).await;
    assert_eq!(
        run.code, 2,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let rows = json_rows(&run);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (
            rows[0].account.as_str(),
            rows[0].name.as_str(),
            rows[0].region.as_str(),
            rows[0].verdict.as_str()
        ),
        (SHARED_ACCOUNT, "", "us-east-1", "UNKNOWN")
    );
    assert!(rows[0].message.contains("DescribeKey"), "{:?}", rows[0]);
    assert!(rows[0].key_ids.is_empty());
    assert_eq!(
        (rows[1].region.as_str(), rows[1].verdict.as_str()),
        ("eu-west-1", "FAIL")
    );
    // The table shows "-" for the missing name and keys.
    let table = scan(&config, &moto.endpoint(), &[], &[]).await;
    assert_eq!(table.code, 2);
    let line = table
        .stdout
        .lines()
        .find(|l| l.contains("us-east-1"))
        .expect("us-east-1 row");
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        [SHARED_ACCOUNT, "-", "us-east-1", "UNKNOWN", "-"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_key_does_not_matter_when_another_key_passes() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint())
        .kms(Some(SHARED_ACCOUNT), "ap-southeast-2")
        .await;
    let denied = create_key(&kms, &[("app_tier", "prod")]).await;
    deny_describe_key(&kms, &denied).await;
    let good = create_key(&kms, &[("app_tier", "prod")]).await;
    let config = format!(
        "[[accounts]]\nrole_arn = \"arn:aws:iam::{SHARED_ACCOUNT}:role/AppTierCmkScanner\"\nregions = [\"ap-southeast-2\"]\n"
    );
    let run = scan(&config, &moto.endpoint(), &["--output", "json"], &[]).await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let rows = json_rows(&run);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].verdict, "PASS");
    assert_eq!(
        rows[0].key_ids,
        vec![good],
        "only the readable, counted key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_gives_unknown_and_exits_2() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let run = scan(
        "regions = [\"us-east-1\", \"eu-west-1\"]\n",
        &endpoint,
        &["--output", "json"],
        &[],
    )
    .await;
    assert_eq!(
        run.code, 2,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let rows = json_rows(&run);
    assert_eq!(rows.len(), 2);
    for (row, region) in rows.iter().zip(["us-east-1", "eu-west-1"]) {
        assert_eq!(row.account, "unknown");
        assert_eq!(row.region, region);
        assert_eq!(row.verdict, "UNKNOWN");
        assert!(row.key_ids.is_empty());
        assert!(
            row.message.contains("network") && row.message.contains("GetCallerIdentity"),
            "{row:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_options_from_the_config_file_decide_the_verdict() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    let key = create_key(&kms, &[("AppTier", "Web")]).await;
    disable_key(&kms, &key).await;
    let base =
        "regions = [\"us-east-1\"]\n[match]\ntag_key = \"apptier\"\ntag_values = [\"WEB\"]\n";

    // Exact case: nothing tagged.
    let run = scan(base, &moto.endpoint(), &["--output", "json"], &[]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        json_rows(&run)[0]
            .message
            .contains("no customer-managed KMS key tagged apptier")
    );

    // Any case: tagged, but Disabled does not count by default.
    let config = format!("{base}case_insensitive = true\n");
    let run = scan(&config, &moto.endpoint(), &["--output", "json"], &[]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let row = &json_rows(&run)[0];
    assert!(row.message.contains("1 Disabled"), "{row:?}");

    // Counting Disabled makes it pass.
    let config =
        format!("{base}case_insensitive = true\nkey_states = [\"Enabled\", \"Disabled\"]\n");
    let run = scan(&config, &moto.endpoint(), &["--output", "json"], &[]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(json_rows(&run)[0].key_ids, vec![key]);
}

// ---------------------------------------------------------------------------
// Configuration errors: exit 3, naming source, key and value
// ---------------------------------------------------------------------------

/// Runs `scan` with `config` (and `extra_env`) against a dead endpoint and asserts exit
/// 3, no report, and every `expected` piece in stderr (`{path}` is the config file).
async fn assert_config_refused(
    config: &str,
    extra_env: &[(&str, &str)],
    expected: &[&str],
) -> String {
    let run = scan(config, DEAD_ENDPOINT, &[], extra_env).await;
    assert_eq!(
        run.code, 3,
        "config {config:?} env {extra_env:?}: exit {}\nstdout:\n{}\nstderr:\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_eq!(run.stdout, "", "no report for an invalid configuration");
    assert!(
        run.stderr.contains("invalid configuration"),
        "{}",
        run.stderr
    );
    for piece in expected {
        let piece = piece.replace("{path}", &run.config_path);
        assert!(
            run.stderr.contains(&piece),
            "config {config:?} env {extra_env:?}: {piece:?} missing from stderr:\n{}",
            run.stderr
        );
    }
    run.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_exits_3_naming_file_and_key() {
    assert_config_refused(
        "regions = [\"us-east-1\"]\n[scan]\nintervall = \"1m\"\n",
        &[],
        &["config file {path}", "scan.intervall"],
    )
    .await;
    assert_config_refused(
        "regions = [\"us-east-1\"]\nrole_name = \"x\"\n",
        &[],
        &["config file {path}", "role_name"],
    )
    .await;
    assert_config_refused(
        "regions = [\"us-east-1\"]\n",
        &[("APP_TIER_CMK_SCAN__INTERVALL", "1m")],
        &["APP_TIER_CMK_SCAN__INTERVALL", "scan.intervall"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_duration_exits_3_naming_file_key_and_value() {
    assert_config_refused(
        "regions = [\"us-east-1\"]\n[scan]\ninterval = \"5 parsecs\"\n",
        &[],
        &["config file {path}", "scan.interval", "5 parsecs"],
    )
    .await;
    assert_config_refused(
        "regions = [\"us-east-1\"]\n[scan]\ntimeout = \"0s\"\n",
        &[],
        &["config file {path}", "scan.timeout", "0s"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_id_that_is_not_12_digits_exits_3() {
    for bad in ["12345", "1234567890123", "12345678901a"] {
        assert_config_refused(
            &format!("regions = [\"us-east-1\"]\n[[accounts]]\naccount_id = \"{bad}\"\n"),
            &[],
            &["config file {path}", "account_id", bad, "12 digits"],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_arn_that_does_not_parse_exits_3() {
    for bad in [
        "arn:aws:iam::111111111111:user/scanner",
        "arn:aws:iam::1111:role/scanner",
        "arn:aws:s3:::bucket",
        "AppTierCmkScanner",
        "arn:aws:iam::111111111111:role/",
    ] {
        assert_config_refused(
            &format!("regions = [\"us-east-1\"]\n[[accounts]]\nrole_arn = \"{bad}\"\n"),
            &[],
            &["config file {path}", "role_arn", bad],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_that_is_not_region_shaped_exits_3() {
    for bad in ["useast1", "US-EAST-1", "us-east", "eu_west_1"] {
        assert_config_refused(
            &format!("regions = [\"us-east-1\", \"{bad}\"]\n"),
            &[],
            &["config file {path}", "regions", bad],
        )
        .await;
    }
    // Per-account regions too.
    assert_config_refused(
        "regions = [\"us-east-1\"]\n[[accounts]]\nregions = [\"mars-north-1x\"]\n",
        &[],
        &["config file {path}", "regions", "mars-north-1x"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tag_key_exits_3() {
    assert_config_refused(
        "regions = [\"us-east-1\"]\n[match]\ntag_key = \"\"\n",
        &[],
        &["config file {path}", "match.tag_key", "\"\"", "empty"],
    )
    .await;
    assert_config_refused(
        "regions = [\"us-east-1\"]\n",
        &[("APP_TIER_CMK_MATCH__TAG_KEY", "")],
        &["APP_TIER_CMK_MATCH__TAG_KEY", "match.tag_key", "empty"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_value_in_an_environment_variable_exits_3_naming_the_variable() {
    // The variable overrides a valid file value, and the error blames the variable.
    let stderr = assert_config_refused(
        "regions = [\"us-east-1\"]\n[scan]\ninterval = \"5m\"\n",
        &[("APP_TIER_CMK_SCAN__INTERVAL", "soon")],
        &[
            "environment variable APP_TIER_CMK_SCAN__INTERVAL",
            "scan.interval",
            "soon",
        ],
    )
    .await;
    assert!(!stderr.contains("config file"), "{stderr}");
    assert_config_refused(
        "regions = [\"us-east-1\"]\n",
        &[("APP_TIER_CMK_SCAN__CONCURRENCY", "0")],
        &[
            "environment variable APP_TIER_CMK_SCAN__CONCURRENCY",
            "scan.concurrency",
            "0",
        ],
    )
    .await;
    assert_config_refused(
        "regions = [\"us-east-1\"]\n",
        &[("APP_TIER_CMK_MATCH__CASE_INSENSITIVE", "maybe")],
        &[
            "APP_TIER_CMK_MATCH__CASE_INSENSITIVE",
            "match.case_insensitive",
            "maybe",
        ],
    )
    .await;
}

/// The variable named in an error line: `environment variable NAME: ...`.
fn named_variable(stderr: &str) -> Option<String> {
    let rest = stderr.split("environment variable ").nth(1)?;
    Some(rest.split(':').next()?.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_element_in_an_environment_variable_names_the_variable_that_was_set() {
    let stderr = assert_config_refused(
        "",
        &[("APP_TIER_CMK_REGIONS", r#"["us-east-1", "nowhere"]"#)],
        &["nowhere"],
    )
    .await;
    assert_eq!(
        named_variable(&stderr).as_deref(),
        Some("APP_TIER_CMK_REGIONS"),
        "{stderr}"
    );
    let stderr = assert_config_refused(
        "regions = [\"us-east-1\"]\n",
        &[("APP_TIER_CMK_MATCH__KEY_STATES", r#"["enabled"]"#)],
        &["enabled"],
    )
    .await;
    assert_eq!(
        named_variable(&stderr).as_deref(),
        Some("APP_TIER_CMK_MATCH__KEY_STATES"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_key_error_from_an_environment_variable_names_the_variable() {
    let stderr = assert_config_refused(
        "regions = [\"us-east-1\"]\n",
        &[("APP_TIER_CMK_MATCH__KEY_STATES", "[]")],
        &["match.key_states", "empty"],
    )
    .await;
    assert_eq!(
        named_variable(&stderr).as_deref(),
        Some("APP_TIER_CMK_MATCH__KEY_STATES"),
        "{stderr}"
    );
    let stderr = assert_config_refused(
        "",
        &[("APP_TIER_CMK_REGIONS", r#"["us-east-1", "us-east-1"]"#)],
        &["regions", "us-east-1", "twice"],
    )
    .await;
    assert_eq!(
        named_variable(&stderr).as_deref(),
        Some("APP_TIER_CMK_REGIONS"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_key_checks_in_the_file_exit_3_naming_file_and_key() {
    assert_config_refused(
        "regions = [\"us-east-1\"]\n[[accounts]]\naccount_id = \"222222222222\"\nrole_arn = \"arn:aws:iam::111111111111:role/AppTierCmkScanner\"\n",
        &[],
        &["config file {path}", "accounts.0.account_id", "222222222222", "111111111111"],
    )
    .await;
    assert_config_refused(
        "regions = [\"us-east-1\"]\n[[accounts]]\nexternal_id = \"x\"\n",
        &[],
        &["config file {path}", "accounts.0.external_id", "role_arn"],
    )
    .await;
    assert_config_refused(
        "regions = [\"us-east-1\", \"us-east-1\"]\n",
        &[],
        &["config file {path}", "regions", "us-east-1", "twice"],
    )
    .await;
    assert_config_refused(
        "regions = [\"us-east-1\"]\n[match]\nkey_states = []\n",
        &[],
        &["config file {path}", "match.key_states", "empty"],
    )
    .await;
    assert_config_refused(
        "regions = [\"us-east-1\"]\n[match]\nkey_states = [\"enabled\"]\n",
        &[],
        &[
            "config file {path}",
            "match.key_states",
            "\"enabled\"",
            "Enabled",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_syntax_error_exits_3_naming_the_file() {
    assert_config_refused("regions = [\n", &[], &["config file {path}"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_config_file_exits_3_naming_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-config.toml");
    let missing = missing.display().to_string();
    let (code, stdout, stderr) =
        run_scan(&["scan", "--config", &missing], &aws_env(DEAD_ENDPOINT)).await;
    assert_eq!(code, 3, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
    // A directory is not a config file either.
    let dir_path = dir.path().display().to_string();
    let (code, _, stderr) =
        run_scan(&["scan", "--config", &dir_path], &aws_env(DEAD_ENDPOINT)).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains(&dir_path), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_region_anywhere_exits_3_naming_aws_region() {
    let without_region: Vec<(String, String)> = aws_env(DEAD_ENDPOINT)
        .into_iter()
        .filter(|(k, _)| k != "AWS_REGION")
        .collect();
    let mut empty_region = without_region.clone();
    empty_region.push(("AWS_REGION".to_string(), String::new()));
    let (_dir, path) = write_config("[scan]\ninterval = \"1m\"\n");
    let path = path.display().to_string();
    for (what, env) in [("unset", &without_region), ("empty", &empty_region)] {
        for args in [vec!["scan"], vec!["scan", "--config", path.as_str()]] {
            let (code, stdout, stderr) = run_scan(&args, env).await;
            assert_eq!(
                code, 3,
                "AWS_REGION {what}, {args:?}:\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
            assert_eq!(stdout, "");
            assert!(stderr.contains("no region"), "{stderr}");
            assert!(stderr.contains("AWS_REGION"), "{stderr}");
            assert!(stderr.contains("regions"), "{stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_command_line_exits_3() {
    let env = aws_env(DEAD_ENDPOINT);
    let (code, stdout, stderr) = run_scan(&["scan", "--output", "yaml"], &env).await;
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stderr.contains("yaml"), "{stderr}");
    let (code, _, stderr) = run_scan(&["scan", "--no-such-flag"], &env).await;
    assert_eq!(code, 3, "{stderr}");
    let (code, _, stderr) = run_scan(&["no-such-command"], &env).await;
    assert_eq!(code, 3, "{stderr}");
    // --help is not an error.
    let (code, stdout, _) = run_scan(&["scan", "--help"], &env).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("--output"), "{stdout}");
}
