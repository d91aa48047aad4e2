//! End-to-end tests of the alerting chain and of the dashboard (issue 3, "Must show"):
//!
//! moto -> exporter -> a real Prometheus (`/usr/bin/prometheus`) that scrapes it as job
//! `app-tier-cmk-exporter` and evaluates `deploy/prometheus/alerts.yml` -> a real
//! Alertmanager (`/usr/bin/prometheus-alertmanager`).
//!
//! The rules are loaded from a copy of `alerts.yml` in which every `for:` is shortened
//! to [`RULE_FOR`] (line-based rewrite, checked to touch exactly one line per rule), so
//! the timing of the real rules is exercised without waiting 15 minutes.
//!
//! Every process listens on its own free 127.0.0.1 port and keeps its state (TSDB,
//! Alertmanager storage, logs, configs) in a temporary directory; every process is
//! killed when its guard is dropped, also when a test panics.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::process::{Child, Command};

use support::*;

/// The scrape job name the rules select on (`AppTierCmkExporterDown`).
const JOB: &str = "app-tier-cmk-exporter";
/// What every `for:` of alerts.yml is shortened to.
const RULE_FOR: &str = "2s";
const RULE_FOR_SECONDS: f64 = 2.0;
const EAST: &str = "us-east-1";
const WEST: &str = "eu-west-1";
const MISSING: &str = "AppTierCmkMissing";

/// Prometheus / Alertmanager answering `/-/ready` (TSDB replay on a loaded machine).
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(60);
const EXPORTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// From a started stack to the alert being active in Alertmanager.
const ALERT_TIMEOUT: Duration = Duration::from_secs(60);
/// From tagging the key to the alert being resolved in Alertmanager.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Until Prometheus holds enough samples for the dashboard's rate windows.
const DATA_TIMEOUT: Duration = Duration::from_secs(60);
/// Until every dashboard query has returned data.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    let path = repo_file(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Prints how long each phase took since the stack was started.
struct Clock {
    test: &'static str,
    start: Instant,
}

impl Clock {
    fn new(test: &'static str) -> Clock {
        Clock {
            test,
            start: Instant::now(),
        }
    }

    fn mark(&self, what: &str) {
        println!(
            "[{} +{:6.2}s] {what}",
            self.test,
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// GET `url` and parse the body as JSON; `Err` with a description on any failure.
async fn try_get_json(client: &reqwest::Client, url: &reqwest::Url) -> Result<Value, String> {
    let resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("GET {url}: reading body: {e}"))?;
    let json: Value = serde_json::from_str(&body)
        .map_err(|e| format!("GET {url} answered {status} with non-JSON ({e}): {body}"))?;
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}: {body}"));
    }
    Ok(json)
}

fn url(base: &str, path: &str, params: &[(&str, &str)]) -> reqwest::Url {
    reqwest::Url::parse_with_params(&format!("{base}{path}"), params)
        .unwrap_or_else(|e| panic!("bad URL {base}{path}: {e}"))
}

/// True when `labels` (a JSON object) holds every given pair.
fn has_labels(labels: &Value, want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| labels.get(*k).and_then(Value::as_str) == Some(*v))
}

// ---------------------------------------------------------------------------
// alerts.yml with short `for:` durations
// ---------------------------------------------------------------------------

/// A Prometheus duration such as `15m`, `1h30m`, `90s`.
fn is_prometheus_duration(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || "smhdwy".contains(c))
}

/// Rewrites every `for: <duration>` line of a rules file to `for: <short>`, keeping the
/// indentation. Returns the new text and how many lines were rewritten. Line-based on
/// purpose (no YAML crate among the dependencies); [`rules_with_short_for`] checks that
/// exactly one line per rule was touched.
fn shorten_for_lines(rules_yaml: &str, short: &str) -> (String, usize) {
    let mut out = String::with_capacity(rules_yaml.len());
    let mut rewritten = 0;
    for line in rules_yaml.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(rest) = trimmed.strip_prefix("for:") {
            let value = rest.split('#').next().unwrap_or("").trim();
            let value = value.trim_matches(|c| c == '"' || c == '\'');
            if is_prometheus_duration(value) {
                out.push_str(indent);
                out.push_str("for: ");
                out.push_str(short);
                out.push('\n');
                rewritten += 1;
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, rewritten)
}

/// Number of rules (`- alert:` / `- record:` items) in a rules file.
fn rule_count(rules_yaml: &str) -> usize {
    rules_yaml
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("- alert:") || l.starts_with("- record:"))
        .count()
}

/// deploy/prometheus/alerts.yml with every `for:` set to [`RULE_FOR`]; also returns the
/// number of rules in it.
fn rules_with_short_for() -> (String, usize) {
    let original = read_repo_file("deploy/prometheus/alerts.yml");
    let rules = rule_count(&original);
    let (short, rewritten) = shorten_for_lines(&original, RULE_FOR);
    assert!(rules > 0, "no rules found in alerts.yml");
    assert_eq!(
        rewritten, rules,
        "expected one `for:` line per rule in alerts.yml ({rules} rules), rewrote {rewritten}"
    );
    (short, rules)
}

#[test]
fn every_for_of_alerts_yml_is_shortened_and_nothing_else_changes() {
    let original = read_repo_file("deploy/prometheus/alerts.yml");
    let (short, rules) = rules_with_short_for();
    assert_eq!(
        short.lines().count(),
        original.lines().count(),
        "line count changed"
    );
    let changed: Vec<(&str, &str)> = original
        .lines()
        .zip(short.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed.len(), rules, "{changed:#?}");
    for (before, after) in changed {
        assert!(before.trim_start().starts_with("for: "), "{before:?}");
        assert_eq!(after.trim_start(), format!("for: {RULE_FOR}"));
        assert_eq!(
            before.len() - before.trim_start().len(),
            after.len() - after.trim_start().len(),
            "indentation changed: {before:?} -> {after:?}"
        );
    }
    // Edge cases of the rewrite itself.
    let (out, n) = shorten_for_lines(
        "    for: 1h30m # comment\n    keep_firing_for: 5m\n    description: for: x\n  for: \"15m\"\n",
        "2s",
    );
    assert_eq!(n, 2, "{out}");
    assert_eq!(
        out,
        "    for: 2s\n    keep_firing_for: 5m\n    description: for: x\n  for: 2s\n"
    );
}

// ---------------------------------------------------------------------------
// Prometheus and Alertmanager processes
// ---------------------------------------------------------------------------

/// A Prometheus or Alertmanager process on 127.0.0.1, with its own temporary
/// directory. Killed (and reaped) when dropped, also on panic, before the directory
/// is removed.
struct Daemon {
    name: &'static str,
    child: Child,
    port: u16,
    log_path: PathBuf,
    // Declared last: removed after the process is gone.
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `program` with `args(port, state_dir)` on a free port and waits until
    /// `GET /-/ready` answers 200. Retries on another port when the bind loses the
    /// race for the port; panics with the log on any other early exit or on timeout.
    async fn start(
        name: &'static str,
        program: &str,
        dir: tempfile::TempDir,
        args: impl Fn(u16, &Path) -> Vec<String>,
    ) -> Daemon {
        let client = http_client();
        for attempt in 0..3 {
            let port = free_port();
            let state_dir = dir.path().join(format!("state-{attempt}"));
            fs::create_dir_all(&state_dir).expect("create state dir");
            let log_path = dir.path().join(format!("{name}-{attempt}.log"));
            let log = fs::File::create(&log_path).expect("create log");
            let argv = args(port, &state_dir);
            // kill_on_drop: a panic below kills it (locals drop before `dir`).
            let mut child = Command::new(program)
                .args(&argv)
                .current_dir(dir.path())
                .env_clear()
                .envs(base_env())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "could not start {program} ({e}); \
                         apt-get install prometheus prometheus-alertmanager"
                    )
                });
            let logs = || match fs::read(&log_path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => format!("<could not read {}: {e}>", log_path.display()),
            };
            let ready = url(&format!("http://127.0.0.1:{port}"), "/-/ready", &[]);
            let deadline = Instant::now() + DAEMON_START_TIMEOUT;
            let ready = loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    let logs = logs();
                    if logs.contains("address already in use") && attempt < 2 {
                        break false; // lost the race for the port: try another one
                    }
                    panic!("{name} exited ({status}) before it was ready: {argv:?}\nlog:\n{logs}");
                }
                // After the exit check: a 200 from a process that lost the port
                // to another server must not count.
                if let Ok(resp) = client.get(ready.clone()).send().await
                    && resp.status().is_success()
                    && child.try_wait().ok().flatten().is_none()
                {
                    break true;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{name} not ready within {DAEMON_START_TIMEOUT:?}: {argv:?}\nlog:\n{}",
                        logs()
                    );
                }
                tokio::time::sleep(POLL).await;
            };
            if ready {
                return Daemon {
                    name,
                    child,
                    port,
                    log_path,
                    _dir: dir,
                };
            }
        }
        unreachable!("the third attempt either succeeds or panics")
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        match fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<could not read {}: {e}>", self.log_path.display()),
        }
    }

    /// Kills the process and waits until it is gone.
    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // Reap it before the temporary directory goes (bounded: SIGKILL is quick).
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `data` of a Prometheus API answer whose `status` is `success`.
fn prometheus_data(answer: Value) -> Result<Value, String> {
    if answer.get("status").and_then(Value::as_str) == Some("success") {
        Ok(answer.get("data").cloned().unwrap_or(Value::Null))
    } else {
        Err(format!("not a success: {answer}"))
    }
}

impl Daemon {
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        try_get_json(&http_client(), &url(&self.base_url(), path, params)).await
    }

    /// Prometheus: `/api/v1/query` at the current time; returns `data`.
    async fn query(&self, expr: &str) -> Result<Value, String> {
        prometheus_data(self.api("/api/v1/query", &[("query", expr)]).await?)
    }

    /// Prometheus: `/api/v1/query_range` over the last `seconds` with a 1 s step.
    async fn query_range(&self, expr: &str, seconds: f64) -> Result<Value, String> {
        let end = unix_now();
        let (start, end) = (format!("{:.3}", end - seconds), format!("{end:.3}"));
        prometheus_data(
            self.api(
                "/api/v1/query_range",
                &[
                    ("query", expr),
                    ("start", &start),
                    ("end", &end),
                    ("step", "1"),
                ],
            )
            .await?,
        )
    }

    /// Prometheus: the value of the first sample of an instant vector query.
    async fn query_value(&self, expr: &str) -> Option<f64> {
        let data = self.query(expr).await.ok()?;
        data["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// Prometheus: `/api/v1/alerts` (pending and firing alerts).
    async fn prometheus_alerts(&self) -> Result<Vec<Value>, String> {
        let data = prometheus_data(self.api("/api/v1/alerts", &[]).await?)?;
        data["alerts"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("no alerts array in {data}"))
    }

    /// Prometheus: `/api/v1/rules`, the rules of every group.
    async fn prometheus_rules(&self) -> Result<Vec<Value>, String> {
        let data = prometheus_data(self.api("/api/v1/rules", &[]).await?)?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// Alertmanager: `/api/v2/alerts` (with its default filters: resolved alerts
    /// are not listed).
    async fn alertmanager_alerts(&self) -> Result<Vec<Value>, String> {
        let answer = self.api("/api/v2/alerts", &[]).await?;
        answer
            .as_array()
            .cloned()
            .ok_or_else(|| format!("not an array: {answer}"))
    }
}

// ---------------------------------------------------------------------------
// The whole chain
// ---------------------------------------------------------------------------

/// What [`Stack::start`] seeds in moto (account 123456789012).
#[derive(Clone, Copy, PartialEq)]
enum Seed {
    /// us-east-1: one enabled key tagged `app_tier`; eu-west-1: one enabled untagged key.
    Alerting,
    /// [`Seed::Alerting`] plus, in us-east-1, tagged keys that give every dashboard
    /// panel data: one disabled (rotation 0), one pending deletion (deletion date),
    /// one whose key policy denies DescribeKey (state `Unknown`, `access_denied`
    /// scan errors and AWS request outcomes). us-east-1 keeps its enabled key, so
    /// the expected alerts stay the same.
    Dashboard,
}

/// moto, the exporter, Alertmanager and Prometheus. Fields drop in declaration
/// order: Prometheus first, moto last.
struct Stack {
    clock: Clock,
    prometheus: Daemon,
    alertmanager: Daemon,
    exporter: Exporter,
    seeder: Seeder,
    _moto: Moto,
    /// The untagged enabled key of eu-west-1.
    west_untagged: String,
}

fn exporter_config() -> String {
    format!("regions = [\"{EAST}\", \"{WEST}\"]\n\n[scan]\ninterval = \"1s\"\ntimeout = \"20s\"\n")
}

fn alertmanager_config() -> &'static str {
    r#"route:
  receiver: "null"
  group_by: [alertname, account, region]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
"#
}

fn prometheus_config(exporter_port: u16, alertmanager_port: u16, rules_path: &Path) -> String {
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - "{rules}"
alerting:
  alertmanagers:
    - api_version: v2
      static_configs:
        - targets: ["127.0.0.1:{alertmanager_port}"]
scrape_configs:
  - job_name: {JOB}
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:{exporter_port}"]
"#,
        rules = rules_path.display()
    )
}

impl Stack {
    async fn start(test: &'static str, seed: Seed) -> Stack {
        let clock = Clock::new(test);
        let moto = Moto::start().await;
        let seeder = Seeder::new(moto.endpoint());
        let east = seeder.kms(None, EAST).await;
        let west = seeder.kms(None, WEST).await;
        create_key(&east, &[("app_tier", "prod")]).await;
        let west_untagged = create_key(&west, &[("team", "core")]).await;
        if seed == Seed::Dashboard {
            let disabled = create_key(&east, &[("app_tier", "prod")]).await;
            disable_key(&east, &disabled).await;
            let pending = create_key(&east, &[("app_tier", "prod")]).await;
            schedule_deletion(&east, &pending, 7).await;
            let denied = create_key(&east, &[("app_tier", "prod")]).await;
            deny_describe_key(&east, &denied).await;
        }
        clock.mark("moto started and seeded");

        let exporter = Exporter::builder(&exporter_config())
            .moto(&moto.endpoint())
            .start()
            .await;
        clock.mark(&format!("exporter listening on {}", exporter.base_url()));

        let am_dir = tempfile::Builder::new()
            .prefix("e2e-alertmanager-")
            .tempdir()
            .expect("create temp dir");
        let am_config = am_dir.path().join("alertmanager.yml");
        fs::write(&am_config, alertmanager_config()).expect("write alertmanager.yml");
        let alertmanager = Daemon::start(
            "alertmanager",
            "prometheus-alertmanager",
            am_dir,
            |port, state| {
                vec![
                    format!("--config.file={}", am_config.display()),
                    format!("--storage.path={}", state.display()),
                    format!("--web.listen-address=127.0.0.1:{port}"),
                    "--cluster.listen-address=".to_string(),
                ]
            },
        )
        .await;
        clock.mark(&format!(
            "alertmanager ready on {}",
            alertmanager.base_url()
        ));

        let (rules, rule_count) = rules_with_short_for();
        let prom_dir = tempfile::Builder::new()
            .prefix("e2e-prometheus-")
            .tempdir()
            .expect("create temp dir");
        let rules_path = prom_dir.path().join("alerts.yml");
        fs::write(&rules_path, rules).expect("write alerts.yml");
        let prom_config = prom_dir.path().join("prometheus.yml");
        fs::write(
            &prom_config,
            prometheus_config(exporter.port(), alertmanager.port, &rules_path),
        )
        .expect("write prometheus.yml");
        let prometheus = Daemon::start("prometheus", "prometheus", prom_dir, |port, state| {
            vec![
                format!("--config.file={}", prom_config.display()),
                format!("--storage.tsdb.path={}", state.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ]
        })
        .await;
        clock.mark(&format!("prometheus ready on {}", prometheus.base_url()));

        let stack = Stack {
            clock,
            prometheus,
            alertmanager,
            exporter,
            seeder,
            _moto: moto,
            west_untagged,
        };
        // The copy of alerts.yml is loaded whole, with the short `for:`.
        let loaded = stack
            .prometheus
            .prometheus_rules()
            .await
            .unwrap_or_else(|e| stack.fail(&format!("GET /api/v1/rules: {e}")));
        assert_eq!(
            loaded.len(),
            rule_count,
            "Prometheus loaded {} rules, alerts.yml has {rule_count}: {loaded:#?}",
            loaded.len()
        );
        for rule in &loaded {
            assert_eq!(
                rule["duration"].as_f64(),
                Some(RULE_FOR_SECONDS),
                "`for:` not overridden: {rule}"
            );
        }
        stack
    }

    /// Panics with `msg` and the logs of every process.
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n--- exporter log:\n{}\n--- {} log:\n{}\n--- {} log:\n{}",
            self.exporter.logs(),
            self.prometheus.name,
            self.prometheus.logs(),
            self.alertmanager.name,
            self.alertmanager.logs()
        )
    }

    /// Kills every process and waits for each to be gone.
    async fn stop(mut self) {
        self.prometheus.stop().await;
        self.alertmanager.stop().await;
        self.exporter.stop().await;
        self.clock.mark("stopped");
    }
}

// ---------------------------------------------------------------------------
// 1. AppTierCmkMissing reaches Alertmanager and resolves
// ---------------------------------------------------------------------------

fn is_missing_alert(labels: &Value, region: &str) -> bool {
    has_labels(
        labels,
        &[
            ("alertname", MISSING),
            ("account", DEFAULT_ACCOUNT),
            ("region", region),
        ],
    )
}

/// An Alertmanager alert counts as resolved when its `endsAt` is in the past.
fn ends_in_the_past(alert: &Value) -> bool {
    alert["endsAt"]
        .as_str()
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        .is_some_and(|ends| ends <= SystemTime::now())
}

/// Panics when an `AppTierCmkMissing` alert for us-east-1 (which has its key) shows
/// up in Prometheus (pending or firing) or in Alertmanager.
fn assert_no_east_alert(stack: &Stack, prom: &[Value], am: &[Value]) {
    let east_in = |alerts: &[Value]| {
        alerts
            .iter()
            .filter(|a| has_labels(&a["labels"], &[("alertname", MISSING), ("region", EAST)]))
            .cloned()
            .collect::<Vec<_>>()
    };
    let (p, a) = (east_in(prom), east_in(am));
    if !p.is_empty() || !a.is_empty() {
        stack.fail(&format!(
            "{MISSING} for {EAST}, which has an enabled tagged key:\n\
             prometheus: {p:#?}\nalertmanager: {a:#?}"
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_cmk_alert_reaches_alertmanager_and_resolves_when_a_key_is_tagged() {
    let stack = Stack::start("missing-alert", Seed::Alerting).await;
    let (prometheus, alertmanager) = (&stack.prometheus, &stack.alertmanager);

    // --- The alert goes pending, fires, and reaches Alertmanager.
    let deadline = Instant::now() + ALERT_TIMEOUT;
    let (mut seen_pending, mut seen_firing) = (false, false);
    let (mut last_prom, mut last_am) = (Vec::new(), Vec::new());
    let am_alert = loop {
        if let Ok(alerts) = prometheus.prometheus_alerts().await {
            last_prom = alerts;
        }
        if let Ok(alerts) = alertmanager.alertmanager_alerts().await {
            last_am = alerts;
        }
        assert_no_east_alert(&stack, &last_prom, &last_am);
        for alert in last_prom
            .iter()
            .filter(|a| is_missing_alert(&a["labels"], WEST))
        {
            match alert["state"].as_str() {
                Some("pending") if !seen_pending => {
                    seen_pending = true;
                    stack
                        .clock
                        .mark(&format!("prometheus: {MISSING} {WEST} pending"));
                }
                Some("firing") if !seen_firing => {
                    seen_firing = true;
                    stack
                        .clock
                        .mark(&format!("prometheus: {MISSING} {WEST} firing"));
                }
                _ => {}
            }
        }
        if let Some(alert) = last_am.iter().find(|a| {
            is_missing_alert(&a["labels"], WEST) && a["status"]["state"].as_str() == Some("active")
        }) {
            break alert.clone();
        }
        if Instant::now() >= deadline {
            stack.fail(&format!(
                "{MISSING} for {DEFAULT_ACCOUNT}/{WEST} not active in Alertmanager within \
                 {ALERT_TIMEOUT:?}\nprometheus alerts: {last_prom:#?}\n\
                 alertmanager alerts: {last_am:#?}\nexporter /metrics:\n{}",
                stack.exporter.metrics().await
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    stack
        .clock
        .mark(&format!("alertmanager: {MISSING} {WEST} active"));

    // It is the rule of alerts.yml, evaluated on the scrape job's series.
    let labels = &am_alert["labels"];
    assert!(
        has_labels(labels, &[("severity", "critical"), ("job", JOB)]),
        "{am_alert:#}"
    );
    assert!(
        am_alert["annotations"]["runbook_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("runbook.md#apptiercmkmissing")),
        "{am_alert:#}"
    );
    assert!(!ends_in_the_past(&am_alert), "{am_alert:#}");
    // us-east-1 was evaluated too (present, scanned), it just does not alert.
    let east_selector =
        format!("{{job=\"{JOB}\",account=\"{DEFAULT_ACCOUNT}\",region=\"{EAST}\"}}");
    for (metric, expected) in [
        ("app_tier_cmk_present", 1.0),
        ("app_tier_cmk_scan_success", 1.0),
    ] {
        let value = prometheus
            .query_value(&format!("{metric}{east_selector}"))
            .await;
        assert_eq!(value, Some(expected), "{metric}{east_selector}");
    }
    let west_present = prometheus
        .query_value(&format!(
            "app_tier_cmk_present{{job=\"{JOB}\",account=\"{DEFAULT_ACCOUNT}\",region=\"{WEST}\"}}"
        ))
        .await;
    assert_eq!(west_present, Some(0.0));

    // --- Tag the eu-west-1 key: the alert resolves, in Prometheus and in Alertmanager.
    let west = stack.seeder.kms(None, WEST).await;
    tag_key(&west, &stack.west_untagged, &[("app_tier", "prod")]).await;
    stack.clock.mark(&format!(
        "tagged {WEST} key {} with app_tier",
        stack.west_untagged
    ));

    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    let (mut exporter_saw_it, mut prometheus_resolved) = (false, false);
    loop {
        if !exporter_saw_it && let Ok((200, body)) = stack.exporter.try_get("/metrics").await {
            let present = sample_value(
                &body,
                "app_tier_cmk_present",
                &[("account", DEFAULT_ACCOUNT), ("region", WEST)],
            );
            if present == Some(1.0) {
                exporter_saw_it = true;
                stack.clock.mark(&format!("exporter: present {WEST} = 1"));
            }
        }
        if let Ok(alerts) = prometheus.prometheus_alerts().await {
            last_prom = alerts;
            let west_active = last_prom
                .iter()
                .any(|a| is_missing_alert(&a["labels"], WEST));
            if exporter_saw_it && !west_active && !prometheus_resolved {
                prometheus_resolved = true;
                stack.clock.mark(&format!(
                    "prometheus: {MISSING} {WEST} no longer pending/firing"
                ));
            }
        }
        if let Ok(alerts) = alertmanager.alertmanager_alerts().await {
            last_am = alerts;
        }
        assert_no_east_alert(&stack, &last_prom, &last_am);
        let am_active = last_am.iter().any(|a| {
            is_missing_alert(&a["labels"], WEST)
                && a["status"]["state"].as_str() == Some("active")
                && !ends_in_the_past(a)
        });
        if prometheus_resolved && !am_active {
            break;
        }
        if Instant::now() >= deadline {
            stack.fail(&format!(
                "{MISSING} for {DEFAULT_ACCOUNT}/{WEST} not resolved within {RESOLVE_TIMEOUT:?} \
                 after tagging (exporter saw the key: {exporter_saw_it}, prometheus resolved: \
                 {prometheus_resolved})\nprometheus alerts: {last_prom:#?}\n\
                 alertmanager alerts: {last_am:#?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    stack
        .clock
        .mark(&format!("alertmanager: {MISSING} {WEST} resolved"));
    stack.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Every dashboard query returns data
// ---------------------------------------------------------------------------

/// One PromQL query of a panel target.
#[derive(Debug)]
struct PanelQuery {
    /// `panel <id> "<title>" target <refId>`
    origin: String,
    expr: String,
    /// Grafana runs it as a range query (time series panels).
    range: bool,
}

/// Every panel, rows' nested panels included (also the old `rows[].panels` layout).
fn collect_panels<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    for key in ["panels", "rows"] {
        for panel in node[key].as_array().into_iter().flatten() {
            out.push(panel);
            collect_panels(panel, out);
        }
    }
}

fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut panels = Vec::new();
    collect_panels(dashboard, &mut panels);
    let mut queries = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                continue;
            };
            let instant_only = target["instant"].as_bool() == Some(true)
                && target["range"].as_bool() != Some(true);
            queries.push(PanelQuery {
                origin: format!(
                    "panel {} {:?} target {}",
                    panel["id"],
                    panel["title"].as_str().unwrap_or(""),
                    target["refId"].as_str().unwrap_or("?")
                ),
                expr: expr.to_string(),
                range: target["range"].as_bool() == Some(true)
                    || (panel["type"].as_str() == Some("timeseries") && !instant_only),
            });
        }
    }
    queries
}

/// Replaces Grafana variables the way the dashboard's defaults ("All") would:
/// template variables by `.*`, `$__rate_interval`/`$__interval` by `1m`, `$__range`
/// by `5m`. Handles `$name`, `${name}`, `${name:format}` and `[[name]]`. Panics on a
/// variable it does not know, so that a new dashboard variable is not silently
/// sent to Prometheus as text.
fn substitute(expr: &str, template_vars: &[String]) -> String {
    let builtin = |name: &str| -> Option<&'static str> {
        Some(match name {
            "__rate_interval" | "__interval" => "1m",
            "__interval_ms" => "60000",
            "__range" => "5m",
            "__range_s" => "300",
            "__range_ms" => "300000",
            _ => return None,
        })
    };
    let value_of = |name: &str| -> String {
        if let Some(v) = builtin(name) {
            v.to_string()
        } else if template_vars.iter().any(|v| v == name) {
            ".*".to_string()
        } else {
            panic!("unknown Grafana variable ${name} in {expr:?}")
        }
    };
    let mut out = String::new();
    let mut rest = expr;
    while let Some(pos) = rest.find(['$', '[']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(inner) = tail.strip_prefix("${") {
            let end = inner
                .find('}')
                .unwrap_or_else(|| panic!("unterminated ${{ in {expr:?}"));
            let name = inner[..end].split(':').next().unwrap_or("");
            out.push_str(&value_of(name));
            rest = &inner[end + 1..];
        } else if let Some(inner) = tail.strip_prefix("[[") {
            let end = inner
                .find("]]")
                .unwrap_or_else(|| panic!("unterminated [[ in {expr:?}"));
            let name = inner[..end].split(':').next().unwrap_or("");
            out.push_str(&value_of(name));
            rest = &inner[end + 2..];
        } else if let Some(inner) = tail.strip_prefix('$') {
            let len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(&value_of(&inner[..len]));
            }
            rest = &inner[len..];
        } else {
            // A plain '[' (range selector).
            out.push('[');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn grafana_variables_are_substituted() {
    let vars = vec!["account".to_string(), "region".to_string()];
    assert_eq!(
        substitute(
            r#"sum(rate(x{a=~"$account",r=~"${region}",s=~"${region:regex}",t=~"[[account]]"}[$__rate_interval])) [5m]"#,
            &vars
        ),
        r#"sum(rate(x{a=~".*",r=~".*",s=~".*",t=~".*"}[1m])) [5m]"#
    );
    assert_eq!(substitute("x[$__range] + $__interval", &vars), "x[5m] + 1m");
    assert_eq!(substitute("$accounts_2", &["accounts_2".into()]), ".*");
}

/// `label_values(selector, label)` or `label_values(label)`: (label, selector).
fn parse_label_values(query: &str) -> (String, Option<String>) {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unsupported variable query {query:?} (only label_values)"));
    match inner.rsplit_once(',') {
        Some((selector, label)) => (label.trim().to_string(), Some(selector.trim().to_string())),
        None => (inner.trim().to_string(), None),
    }
}

/// A short rendering of a query result (type, number of series, first value).
fn describe_result(data: &Value) -> String {
    let kind = data["resultType"].as_str().unwrap_or("?");
    match &data["result"] {
        Value::Array(series) if kind == "vector" || kind == "matrix" => {
            let first = series.first().map_or(String::new(), |s| {
                let value = if kind == "vector" {
                    s["value"][1].clone()
                } else {
                    s["values"]
                        .as_array()
                        .and_then(|v| v.last())
                        .map_or(Value::Null, |v| v[1].clone())
                };
                format!(" first {} = {value}", s["metric"])
            });
            format!("{kind}, {} series{first}", series.len())
        }
        other => format!("{kind} {other}"),
    }
}

fn result_is_empty(data: &Value) -> bool {
    match &data["result"] {
        Value::Array(items) => {
            let kind = data["resultType"].as_str().unwrap_or("");
            if kind == "vector" || kind == "matrix" {
                items.is_empty()
            } else {
                // scalar / string: [time, "value"]
                items.len() != 2
            }
        }
        _ => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_and_returns_data_against_a_real_prometheus() {
    let stack = Stack::start("dashboard", Seed::Dashboard).await;
    let prometheus = &stack.prometheus;
    stack.exporter.wait_ready(EXPORTER_READY_TIMEOUT).await;

    // --- Enough data for 1m rate windows: the target is up and was scraped >= 5 times.
    let up = format!("up{{job=\"{JOB}\"}}");
    let deadline = Instant::now() + DATA_TIMEOUT;
    loop {
        let up_now = prometheus.query_value(&up).await;
        let scrapes = prometheus
            .query_value(&format!("count_over_time({up}[1m])"))
            .await;
        if up_now == Some(1.0) && scrapes.is_some_and(|n| n >= 5.0) {
            break;
        }
        if Instant::now() >= deadline {
            stack.fail(&format!(
                "{up} not 1 with 5 scrapes within {DATA_TIMEOUT:?}: up {up_now:?}, scrapes {scrapes:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    stack.clock.mark("prometheus has 5 scrapes of the exporter");

    // --- Every rule of alerts.yml evaluates without error on the real series.
    let deadline = Instant::now() + DATA_TIMEOUT;
    loop {
        let rules = prometheus
            .prometheus_rules()
            .await
            .unwrap_or_else(|e| stack.fail(&format!("GET /api/v1/rules: {e}")));
        if let Some(bad) = rules.iter().find(|r| r["health"].as_str() == Some("err")) {
            stack.fail(&format!("rule evaluation failed: {bad:#}"));
        }
        if rules.iter().all(|r| r["health"].as_str() == Some("ok")) {
            break;
        }
        if Instant::now() >= deadline {
            stack.fail(&format!(
                "rules not all healthy within {DATA_TIMEOUT:?}: {rules:#?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    stack
        .clock
        .mark("every rule of alerts.yml evaluated with health ok");

    let dashboard: Value =
        serde_json::from_str(&read_repo_file("deploy/grafana/app-tier-cmk.json"))
            .expect("dashboard JSON");

    // --- Template variables: label_values(...) through the label values API.
    let mut template_vars = Vec::new();
    let expected_values: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("account", vec![DEFAULT_ACCOUNT]),
        ("region", vec![EAST, WEST]),
    ]);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for variable in &variables {
        let name = variable["name"]
            .as_str()
            .expect("variable name")
            .to_string();
        match variable["type"].as_str() {
            Some("datasource") => {
                assert_eq!(
                    variable["query"].as_str(),
                    Some("prometheus"),
                    "{variable:#}"
                );
            }
            Some("query") => template_vars.push(name),
            other => panic!("unsupported variable type {other:?}: {variable:#}"),
        }
    }
    for variable in variables
        .iter()
        .filter(|v| v["type"].as_str() == Some("query"))
    {
        let name = variable["name"].as_str().unwrap_or_default();
        let query = match &variable["query"] {
            Value::String(q) => q.clone(),
            Value::Object(o) => o["query"].as_str().unwrap_or_default().to_string(),
            other => panic!("variable {name}: unsupported query {other}"),
        };
        let (label, selector) = parse_label_values(&substitute(&query, &template_vars));
        let path = format!("/api/v1/label/{label}/values");
        let params: Vec<(&str, &str)> = selector
            .as_deref()
            .map(|s| vec![("match[]", s)])
            .unwrap_or_default();
        let values = prometheus_data(
            prometheus
                .api(&path, &params)
                .await
                .unwrap_or_else(|e| stack.fail(&format!("variable {name}: {e}"))),
        )
        .unwrap_or_else(|e| stack.fail(&format!("variable {name}: {e}")));
        let values: Vec<&str> = values
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!("variable {name}: {query} -> {values:?}");
        assert!(
            !values.is_empty(),
            "variable {name} ({query}) has no values"
        );
        for expected in expected_values.get(name).into_iter().flatten() {
            assert!(
                values.contains(expected),
                "variable {name} ({query}): {expected} missing from {values:?}"
            );
        }
    }

    // --- Every panel target: instant query, and range query for time series.
    let queries = panel_queries(&dashboard);
    assert!(!queries.is_empty(), "no panel queries in the dashboard");
    let mut pending: Vec<(&PanelQuery, String, bool)> = Vec::new();
    for q in &queries {
        let expr = substitute(&q.expr, &template_vars);
        pending.push((q, expr.clone(), false));
        if q.range {
            pending.push((q, expr, true));
        }
    }
    let total = pending.len();
    let deadline = Instant::now() + QUERY_TIMEOUT;
    let mut empty: Vec<String>;
    loop {
        empty = Vec::new();
        let mut still_pending = Vec::new();
        for (q, expr, range) in pending {
            let answer = if range {
                prometheus.query_range(&expr, 30.0).await
            } else {
                prometheus.query(&expr).await
            };
            let kind = if range { "range" } else { "instant" };
            match answer {
                Err(e) => stack.fail(&format!("{} ({kind}): {expr}\nfailed: {e}", q.origin)),
                Ok(data) if result_is_empty(&data) => {
                    empty.push(format!("{} ({kind}): {expr}", q.origin));
                    still_pending.push((q, expr, range));
                }
                Ok(data) => println!(
                    "ok {} ({kind}): {expr}\n    -> {}",
                    q.origin,
                    describe_result(&data)
                ),
            }
        }
        pending = still_pending;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !empty.is_empty() {
        stack.fail(&format!(
            "{} of {total} dashboard queries returned no data within {QUERY_TIMEOUT:?}:\n{}",
            empty.len(),
            empty.join("\n")
        ));
    }
    stack.clock.mark(&format!(
        "all {} panel targets ({total} queries) and {} variables returned data",
        queries.len(),
        template_vars.len()
    ));
    stack.stop().await;
}
