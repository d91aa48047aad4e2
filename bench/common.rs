//! What the benchmarks share: the machine they ran on, process figures from /proc, AWS call
//! counts from `/metrics`, and the run mode (`cargo bench` runs the full benchmark; `cargo
//! test` runs the same code on a tiny inventory, as a smoke test).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::support::matching_samples;

/// True under `cargo bench` (cargo passes `--bench`); false under `cargo test`.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The value of `--NAME VALUE` on the command line (`cargo bench --bench X -- --NAME VALUE`).
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == &format!("--{name}"))
        .and_then(|i| args.get(i + 1).cloned())
}

/// `nproc`, CPU model, `free -h`, load average and tool versions, as Markdown lines.
pub fn machine() -> String {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_owned())
            .unwrap_or_else(|e| format!("<{cmd}: {e}>"))
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let moto = run("python3", &["-c", "import moto; print(moto.__version__)"]);
    format!(
        "- `nproc`: {}\n- CPU: {cpu}\n- `free -h`:\n\n```\n{}\n```\n\n- load average at start (1, 5, 15 min): {}\n- moto_server {moto}; {}\n",
        run("nproc", &[]),
        run("free", &["-h"]),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", "),
        run("rustc", &["--version"]),
    )
}

/// Peak and current resident memory of a process, from /proc/PID/status (MiB).
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// User + system CPU time of a process so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the command.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // Linux's USER_HZ is 100 on every mainstream architecture.
    Duration::from_millis(ticks * 10)
}

/// `app_tier_cmk_aws_requests_total` summed over outcomes, by operation.
pub fn calls_by_operation(metrics: &str) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for sample in matching_samples(metrics, "app_tier_cmk_aws_requests_total", &[]) {
        if let Some(operation) = sample.labels.get("operation") {
            *calls.entry(operation.clone()).or_insert(0) += sample.value as u64;
        }
    }
    calls
}

/// Failed AWS attempts (any outcome but success).
pub fn failed_calls(metrics: &str) -> u64 {
    matching_samples(metrics, "app_tier_cmk_aws_requests_total", &[])
        .iter()
        .filter(|s| s.labels.get("outcome").map(String::as_str) != Some("success"))
        .map(|s| s.value as u64)
        .sum()
}

/// Sample lines (series) of a text exposition.
pub fn series(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// Duration of the last finished round, from the exporter's JSON log.
pub fn round_seconds(logs: &str) -> Option<f64> {
    logs.lines()
        .filter(|l| l.contains("scan round finished"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["duration_seconds"].as_f64())
        .next_back()
}

/// The q-quantile (0..=1) of sorted durations.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A moto server for the benchmarks, started through `bench/moto_server_fast_keys.py` (cheap
/// CreateKey, see there); killed on drop.
pub struct BenchMoto {
    child: tokio::process::Child,
    port: u16,
}

impl BenchMoto {
    pub async fn start() -> BenchMoto {
        let launcher = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bench/moto_server_fast_keys.py"
        );
        let port = crate::support::free_port();
        let mut command = tokio::process::Command::new("python3");
        command
            .args([launcher, "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("MOTO_") || k.starts_with("AWS_") {
                command.env_remove(&key);
            }
        }
        let mut child = command.spawn().expect("start python3 (moto)");
        let url = format!("http://127.0.0.1:{port}/moto-api/");
        let client = crate::support::http_client();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return BenchMoto { child, port };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto exited ({status}); is moto installed? pip install 'moto[server]'");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not answer {url} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for BenchMoto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
