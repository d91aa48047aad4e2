//! Tests of the shared harness in `tests/support` against a real `moto_server`
//! (no exporter involved). They also pin down the moto behaviour that the
//! exporter's integration tests rely on, so that a moto upgrade that changes it
//! fails here first, with a clear name.

mod support;

use std::time::Duration;

use support::*;

const OTHER_ACCOUNT: &str = "111111111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_isolates_keys_per_assumed_account() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());

    // AssumeRole really switches account.
    let identity = seeder
        .sts_as(Some(OTHER_ACCOUNT), "us-east-1")
        .await
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity as assumed role");
    assert_eq!(identity.account(), Some(OTHER_ACCOUNT));
    assert_eq!(
        identity.arn(),
        Some("arn:aws:sts::111111111111:assumed-role/AppTierCmkScanner/harness-seeder")
    );
    let default_identity = seeder
        .sts("us-east-1")
        .await
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity");
    assert_eq!(default_identity.account(), Some(DEFAULT_ACCOUNT));

    let other_east = seeder.kms(Some(OTHER_ACCOUNT), "us-east-1").await;
    let key_id = create_key(&other_east, &[("app_tier", "prod")]).await;

    let meta = describe_key(&other_east, &key_id).await;
    assert_eq!(meta.aws_account_id(), Some(OTHER_ACCOUNT));
    assert_eq!(
        meta.arn(),
        Some(format!("arn:aws:kms:us-east-1:{OTHER_ACCOUNT}:key/{key_id}").as_str())
    );

    assert_eq!(list_key_ids(&other_east).await, vec![key_id.clone()]);

    let default_east = seeder.kms(None, "us-east-1").await;
    assert!(
        list_key_ids(&default_east).await.is_empty(),
        "key of {OTHER_ACCOUNT} leaked into the default account"
    );
    let (code, _) = try_describe_key(&default_east, &key_id)
        .await
        .expect_err("DescribeKey of another account's key id must fail");
    assert_eq!(code, "NotFoundException");

    let other_west = seeder.kms(Some(OTHER_ACCOUNT), "us-west-2").await;
    assert!(
        list_key_ids(&other_west).await.is_empty(),
        "key of us-east-1 leaked into us-west-2"
    );

    // Tags are readable with the assumed credentials.
    let tags = other_east
        .list_resource_tags()
        .key_id(&key_id)
        .send()
        .await
        .expect("ListResourceTags");
    let tags: Vec<(&str, &str)> = tags
        .tags()
        .iter()
        .map(|t| (t.tag_key(), t.tag_value()))
        .collect();
    assert_eq!(tags, vec![("app_tier", "prod")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_accepts_any_external_id_and_missing_role() {
    let moto = Moto::start().await;
    let sts = Seeder::new(moto.endpoint()).sts("eu-west-1").await;
    let out = sts
        .assume_role()
        .role_arn(scanner_role_arn("222222222222"))
        .role_session_name("external-id-check")
        .external_id("whatever-external-id")
        .send()
        .await
        .expect("moto accepts any ExternalId and a role that does not exist in IAM");
    assert_eq!(
        out.assumed_role_user().map(|u| u.arn()),
        Some("arn:aws:sts::222222222222:assumed-role/AppTierCmkScanner/external-id-check")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_policy_makes_describe_key_fail_with_access_denied() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    for account in [None, Some(OTHER_ACCOUNT)] {
        let kms = seeder.kms(account, "us-east-1").await;
        let denied = create_key(&kms, &[("app_tier", "prod")]).await;
        let allowed = create_key(&kms, &[("app_tier", "prod")]).await;
        deny_describe_key(&kms, &denied).await;

        let (code, message) = try_describe_key(&kms, &denied)
            .await
            .expect_err("DescribeKey must be denied by the key policy");
        assert_eq!(code, "AccessDeniedException", "message: {message}");
        assert!(try_describe_key(&kms, &allowed).await.is_ok());

        // moto only enforces the policy for DescribeKey.
        let tags = kms
            .list_resource_tags()
            .key_id(&denied)
            .send()
            .await
            .expect("ListResourceTags ignores the key policy in moto");
        assert_eq!(tags.tags().len(), 1);
        assert!(list_key_ids(&kms).await.contains(&denied));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_and_pending_deletion_states_are_reported() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;

    let enabled = create_key(&kms, &[("app_tier", "prod")]).await;
    let meta = describe_key(&kms, &enabled).await;
    assert_eq!(meta.key_state().map(|s| s.as_str()), Some("Enabled"));
    assert!(meta.enabled());
    assert_eq!(meta.key_manager().map(|m| m.as_str()), Some("CUSTOMER"));
    assert_eq!(
        meta.key_spec().map(|s| s.as_str()),
        Some("SYMMETRIC_DEFAULT")
    );
    assert!(meta.deletion_date().is_none());

    let disabled = create_key(&kms, &[("app_tier", "prod")]).await;
    disable_key(&kms, &disabled).await;
    let meta = describe_key(&kms, &disabled).await;
    assert_eq!(meta.key_state().map(|s| s.as_str()), Some("Disabled"));
    assert!(!meta.enabled());

    let doomed = create_key(&kms, &[("app_tier", "prod")]).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let deletion = schedule_deletion(&kms, &doomed, 7).await;
    let seven_days = 7 * 24 * 3600;
    assert!(
        (deletion - before - seven_days).abs() < 120,
        "DeletionDate {deletion} is not ~7 days after {before}"
    );
    let meta = describe_key(&kms, &doomed).await;
    assert_eq!(
        meta.key_state().map(|s| s.as_str()),
        Some("PendingDeletion")
    );
    assert!(!meta.enabled());
    assert_eq!(
        meta.deletion_date().map(|d| d.secs()),
        Some(deletion),
        "DescribeKey must report the DeletionDate"
    );

    // Back again.
    cancel_deletion(&kms, &doomed).await;
    let state = describe_key(&kms, &doomed).await.key_state().cloned();
    assert_eq!(
        state.map(|s| s.as_str().to_string()),
        Some("Disabled".into())
    );
    enable_key(&kms, &disabled).await;
    assert!(describe_key(&kms, &disabled).await.enabled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_aliases_and_rotation_helpers_work() {
    let moto = Moto::start().await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "eu-central-1").await;
    let key = create_key(&kms, &[("app_tier", "prod"), ("owner", "platform")]).await;

    untag_key(&kms, &key, &["app_tier"]).await;
    tag_key(
        &kms,
        &key,
        &[("app_tier", "staging"), ("cost_center", "42")],
    )
    .await;
    let tags = kms
        .list_resource_tags()
        .key_id(&key)
        .send()
        .await
        .expect("ListResourceTags");
    let mut tags: Vec<(String, String)> = tags
        .tags()
        .iter()
        .map(|t| (t.tag_key().to_string(), t.tag_value().to_string()))
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        vec![
            ("app_tier".into(), "staging".into()),
            ("cost_center".into(), "42".into()),
            ("owner".into(), "platform".into()),
        ]
    );

    create_alias(&kms, "alias/app-tier", &key).await;
    let aliases = kms.list_aliases().send().await.expect("ListAliases");
    let ours: Vec<_> = aliases
        .aliases()
        .iter()
        .filter(|a| !a.alias_name().unwrap_or_default().starts_with("alias/aws/"))
        .map(|a| {
            (
                a.alias_name().unwrap().to_string(),
                a.target_key_id().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(ours, vec![("alias/app-tier".to_string(), key.clone())]);
    assert_eq!(describe_key(&kms, "alias/app-tier").await.key_id(), key);

    // moto quirk: reserved alias/aws/* aliases are always listed, pointing at
    // keys that ListKeys does not return.
    let reserved: Vec<_> = aliases
        .aliases()
        .iter()
        .filter(|a| a.alias_name().unwrap_or_default().starts_with("alias/aws/"))
        .collect();
    assert!(
        !reserved.is_empty(),
        "moto no longer lists alias/aws/* aliases"
    );
    let listed = list_key_ids(&kms).await;
    assert_eq!(listed, vec![key.clone()]);
    for alias in reserved {
        assert!(
            !listed
                .iter()
                .any(|k| Some(k.as_str()) == alias.target_key_id())
        );
    }

    enable_key_rotation(&kms, &key).await;
    let rotation = kms
        .get_key_rotation_status()
        .key_id(&key)
        .send()
        .await
        .expect("GetKeyRotationStatus");
    assert!(rotation.key_rotation_enabled());
}

// Plain current-thread runtime on purpose: the harness must work with both.
#[tokio::test]
async fn reset_clears_keys() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let default_kms = seeder.kms(None, "us-east-1").await;
    let other_kms = seeder.kms(Some(OTHER_ACCOUNT), "us-west-2").await;
    create_key(&default_kms, &[("app_tier", "prod")]).await;
    create_key(&other_kms, &[("app_tier", "prod")]).await;
    assert_eq!(list_key_ids(&default_kms).await.len(), 1);
    assert_eq!(list_key_ids(&other_kms).await.len(), 1);

    moto.reset().await;

    assert!(list_key_ids(&default_kms).await.is_empty());
    let other_kms = seeder.kms(Some(OTHER_ACCOUNT), "us-west-2").await;
    assert!(list_key_ids(&other_kms).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_forgets_assumed_role_sessions() {
    // moto quirk: credentials issued by AssumeRole before a reset map to the
    // default account afterwards (no error).
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    let stale = seeder.kms(Some(OTHER_ACCOUNT), "us-east-1").await;
    moto.reset().await;
    let key = create_key(&stale, &[]).await;
    let meta = describe_key(&stale, &key).await;
    assert_eq!(meta.aws_account_id(), Some(DEFAULT_ACCOUNT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_start_on_given_port_and_drop_kills_it() {
    let port = free_port();
    let moto = Moto::start_on(port).await;
    assert_eq!(moto.port(), port);
    assert_eq!(moto.endpoint(), format!("http://127.0.0.1:{port}"));
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    create_key(&kms, &[]).await;
    drop(moto);

    // The port stops answering once the process is gone.
    let client = http_client();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if client
            .get(format!("http://127.0.0.1:{port}/moto-api/"))
            .send()
            .await
            .is_err()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "moto still answers after drop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // And a new moto on the same port starts empty (used to simulate recovery).
    let moto = Moto::start_on(port).await;
    let kms = Seeder::new(moto.endpoint()).kms(None, "us-east-1").await;
    assert!(list_key_ids(&kms).await.is_empty());
}

#[test]
fn aws_env_points_only_at_moto() {
    let env = aws_env("http://127.0.0.1:5555");
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    assert_eq!(get("AWS_ENDPOINT_URL"), "http://127.0.0.1:5555");
    assert_eq!(get("AWS_ACCESS_KEY_ID"), "testing");
    assert_eq!(get("AWS_SECRET_ACCESS_KEY"), "testing");
    assert_eq!(get("AWS_REGION"), "us-east-1");
    assert_eq!(get("AWS_EC2_METADATA_DISABLED"), "true");
    assert!(!std::path::Path::new(get("AWS_CONFIG_FILE")).exists());
    assert!(!std::path::Path::new(get("AWS_SHARED_CREDENTIALS_FILE")).exists());
}

#[test]
fn listen_address_is_injected_at_top_level() {
    let toml = "listen_address = \"0.0.0.0:9100\"\nrole_name = \"X\"\n\n[scan]\nlisten_address = \"keep\"\n";
    let out = with_listen_address(toml, "127.0.0.1:4242");
    assert_eq!(
        out,
        "listen_address = \"127.0.0.1:4242\"\nrole_name = \"X\"\n\n[scan]\nlisten_address = \"keep\"\n"
    );
    assert_eq!(
        with_listen_address("", "127.0.0.1:1"),
        "listen_address = \"127.0.0.1:1\"\n"
    );
}

const SAMPLE_EXPOSITION: &str = r#"# HELP app_tier_cmk_present Whether the key was found.
# TYPE app_tier_cmk_present gauge
app_tier_cmk_present{account="111111111111",region="us-east-1"} 1
app_tier_cmk_present{account="123456789012",region="us-east-1"} 0
app_tier_cmk_present{account="123456789012", region="eu-west-1",note="a \"quoted\" \\ value\n"} 1 1700000000000
# HELP app_tier_cmk_scan_duration_seconds Scan duration.
# TYPE app_tier_cmk_scan_duration_seconds histogram
app_tier_cmk_scan_duration_seconds_bucket{le="+Inf"} 3
app_tier_cmk_scan_duration_seconds_sum 0.25
app_tier_cmk_scan_duration_seconds_count 3
# HELP app_tier_cmk_weird A gauge with special values.
# TYPE app_tier_cmk_weird gauge
app_tier_cmk_weird{kind="nan"} NaN
app_tier_cmk_weird{kind="neg"} -Inf
app_tier_cmk_weird{kind="exp"} 1.5e-3
"#;

#[test]
fn metrics_parser_handles_labels_escapes_and_special_values() {
    let samples = parse_metrics(SAMPLE_EXPOSITION);
    assert_eq!(samples.len(), 9);
    assert_eq!(
        sample_value(
            SAMPLE_EXPOSITION,
            "app_tier_cmk_present",
            &[("account", "111111111111"), ("region", "us-east-1")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample_value(
            SAMPLE_EXPOSITION,
            "app_tier_cmk_present",
            &[("account", "123456789012"), ("region", "us-east-1")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample_value(
            SAMPLE_EXPOSITION,
            "app_tier_cmk_present",
            &[("account", "999999999999")]
        ),
        None
    );
    let escaped = matching_samples(
        SAMPLE_EXPOSITION,
        "app_tier_cmk_present",
        &[("region", "eu-west-1")],
    );
    assert_eq!(escaped.len(), 1);
    assert_eq!(escaped[0].labels["note"], "a \"quoted\" \\ value\n");
    assert_eq!(escaped[0].value, 1.0);
    assert_eq!(
        matching_samples(SAMPLE_EXPOSITION, "app_tier_cmk_present", &[]).len(),
        3
    );
    assert_eq!(
        sample_value(
            SAMPLE_EXPOSITION,
            "app_tier_cmk_scan_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample_value(
            SAMPLE_EXPOSITION,
            "app_tier_cmk_scan_duration_seconds_sum",
            &[]
        ),
        Some(0.25)
    );
    assert!(
        sample_value(SAMPLE_EXPOSITION, "app_tier_cmk_weird", &[("kind", "nan")])
            .unwrap()
            .is_nan()
    );
    assert_eq!(
        sample_value(SAMPLE_EXPOSITION, "app_tier_cmk_weird", &[("kind", "neg")]),
        Some(f64::NEG_INFINITY)
    );
    assert_eq!(
        sample_value(SAMPLE_EXPOSITION, "app_tier_cmk_weird", &[("kind", "exp")]),
        Some(0.0015)
    );
}

#[test]
fn promtool_accepts_good_and_rejects_bad_exposition() {
    let (ok, output) = promtool_check_metrics(SAMPLE_EXPOSITION);
    assert!(ok, "promtool rejected the sample exposition: {output}");

    // A counter without the _total suffix is a lint problem for promtool.
    let bad = "# HELP app_tier_cmk_scans Scans.\n# TYPE app_tier_cmk_scans counter\napp_tier_cmk_scans 3\n";
    let (ok, output) = promtool_check_metrics(bad);
    assert!(!ok, "promtool accepted a counter without _total: {output}");
    assert!(
        output.contains("_total"),
        "unexpected promtool output: {output}"
    );
}

/// A stand-in for the exporter, to test the process side of the harness
/// (config with injected listen_address, environment, logs, signals) before the
/// real binary serves HTTP.
const FAKE_EXPORTER: &str = r##"
import http.server, json, os, re, signal, sys
config = open(sys.argv[sys.argv.index("--config") + 1]).read()
first_line = config.splitlines()[0]
host, port = re.match(r'listen_address = "([^"]+):(\d+)"', first_line).groups()
scrapes = 0
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global scrapes
        if self.path == "/metrics":
            scrapes += 1
            body = "# HELP fake_scrapes_total Scrapes.\n# TYPE fake_scrapes_total counter\nfake_scrapes_total %d\n" % scrapes
        elif self.path in ("/healthz", "/readyz"):
            body = "ok\n"
        elif self.path == "/env":
            body = json.dumps(dict(os.environ))
        elif self.path == "/config":
            body = config
        else:
            self.send_response(404); self.end_headers(); return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
def on_term(signum, frame):
    print("fake exporter got SIGTERM", file=sys.stderr, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
print("fake exporter listening on %s:%s" % (host, port), flush=True)
server.serve_forever()
"##;

fn fake_exporter(config: &str) -> ExporterBuilder {
    Exporter::builder(config).program("python3").args(&[
        "-c",
        FAKE_EXPORTER,
        "--config",
        "{config}",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_harness_drives_a_stand_in_server() {
    let endpoint = "http://127.0.0.1:1";
    let mut exporter =
        fake_exporter("listen_address = \"0.0.0.0:9\"\n[scan]\nregions = [\"us-east-1\"]\n")
            .moto(endpoint)
            .env("APP_TIER_CMK_EXTRA", "1")
            .start()
            .await;

    assert_eq!(
        exporter.base_url(),
        format!("http://127.0.0.1:{}", exporter.port())
    );
    let (status, config) = exporter.get("/config").await;
    assert_eq!(status, 200);
    assert_eq!(
        config,
        format!(
            "listen_address = \"127.0.0.1:{}\"\n[scan]\nregions = [\"us-east-1\"]\n",
            exporter.port()
        )
    );
    assert_eq!(config, exporter.config_toml());

    // Environment: cleared, then PATH/HOME, aws_env and the extras.
    let (_, env) = exporter.get("/env").await;
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    assert_eq!(env["AWS_ENDPOINT_URL"], endpoint);
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "testing");
    assert_eq!(env["APP_TIER_CMK_EXTRA"], "1");
    assert!(env.get("PATH").is_some());
    assert!(
        env.get("CARGO_MANIFEST_DIR").is_none(),
        "the test's environment leaked into the child: {env}"
    );

    assert_eq!(exporter.get("/nope").await.0, 404);
    exporter.wait_ready(Duration::from_secs(5)).await;
    let body = exporter
        .wait_until(
            |m| sample_value(m, "fake_scrapes_total", &[]).is_some_and(|v| v >= 3.0),
            Duration::from_secs(10),
        )
        .await;
    let (ok, output) = promtool_check_metrics(&body);
    assert!(ok, "{output}");
    assert!(exporter.logs().contains("fake exporter listening"));

    exporter.send_signal("TERM").await;
    let status = exporter
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("stand-in did not exit on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(exporter.logs().contains("got SIGTERM"));
    assert!(exporter.try_get("/healthz").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "logs:\nboom-from-child")]
async fn exporter_start_panics_with_logs_when_the_process_exits() {
    Exporter::builder("")
        .program("sh")
        .args(&["-c", "echo boom-from-child >&2; exit 3"])
        .start()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "last /metrics body:\n# HELP fake_scrapes_total")]
async fn wait_until_panics_with_the_last_body_on_timeout() {
    let exporter = fake_exporter("").start().await;
    exporter
        .wait_until(|m| m.contains("never_there"), Duration::from_millis(500))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_program_isolates_the_environment_and_reports_exit_codes() {
    let (code, stdout, stderr) = run_program(
        std::path::Path::new("sh"),
        &["-c", "env; echo to-stderr >&2; exit 7"],
        &[("APP_TIER_CMK_MODE", "scan")],
    )
    .await;
    assert_eq!(code, 7);
    assert_eq!(stderr, "to-stderr\n");
    assert!(stdout.lines().any(|l| l == "APP_TIER_CMK_MODE=scan"));
    assert!(stdout.lines().any(|l| l.starts_with("PATH=")));
    assert!(!stdout.contains("CARGO_MANIFEST_DIR="), "{stdout}");
    assert!(!stdout.contains("AWS_"), "{stdout}");
}
