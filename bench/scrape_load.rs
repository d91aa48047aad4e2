//! Scrape benchmark: an exporter holding 3,000 targets (1,000 accounts x 3 regions through
//! AssumeRole into moto, about 22,000 series), its memory, then an open-loop load of 16
//! scrapers, each on its own keep-alive connection, each scraping every 50 ms from a random
//! start (320 scrapes/s), reporting latency percentiles; then `wrk -c16` as the closed-loop
//! throughput ceiling.
//!
//! `cargo bench --bench scrape_load` (`-- --seconds 20 --accounts 1000`); under `cargo test`
//! a small exporter and a one-second load, as a smoke test. Output: Markdown on stdout.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const SCRAPERS: usize = 16;
const SCRAPE_EVERY: Duration = Duration::from_millis(50);
const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-2"];

fn config(accounts: usize) -> String {
    let mut toml = format!(
        "regions = [\"{}\"]\n[scan]\ninterval = \"1h\"\ntimeout = \"30m\"\n",
        REGIONS.join("\", \"")
    );
    for i in 0..accounts {
        let account = format!("{:012}", 200_000_000_000u64 + i as u64 * 7919);
        toml.push_str(&format!(
            "[[accounts]]\nname = \"account-{i}\"\nrole_arn = \"{}\"\n",
            scanner_role_arn(&account)
        ));
    }
    toml
}

/// One keep-alive HTTP/1.1 connection that GETs a path and reads the whole body.
struct Scraper {
    stream: TcpStream,
    buffer: Vec<u8>,
    request: Vec<u8>,
}

impl Scraper {
    async fn connect(port: u16, path: &str) -> Scraper {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the exporter");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Scraper {
            stream,
            buffer: Vec::with_capacity(4 << 20),
            request: format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: scrape-load\r\n\r\n"
            )
            .into_bytes(),
        }
    }

    /// One request; returns the body's length.
    async fn scrape(&mut self) -> usize {
        self.stream
            .write_all(&self.request)
            .await
            .expect("send request");
        self.buffer.clear();
        let (header_end, length) = loop {
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await.expect("read answer");
            assert!(n > 0, "exporter closed the connection");
            self.buffer.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "answer: {head}");
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("Content-Length header");
                break (end + 4, length);
            }
        };
        let total = header_end + length;
        if self.buffer.len() < total {
            let have = self.buffer.len();
            self.buffer.resize(total, 0);
            self.stream
                .read_exact(&mut self.buffer[have..])
                .await
                .expect("read body");
        }
        length
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A small deterministic generator for the scrapers' start offsets.
fn offsets(count: usize, within: Duration) -> Vec<Duration> {
    let mut state: u64 = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            within.mul_f64((state % 10_000) as f64 / 10_000.0)
        })
        .collect()
}

/// Latencies measured from each request's scheduled time (so that a slow answer also counts
/// against the requests it delayed: no coordinated omission).
async fn open_loop(port: u16, duration: Duration) -> (Vec<Duration>, usize) {
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let tasks: Vec<_> = offsets(SCRAPERS, SCRAPE_EVERY)
        .into_iter()
        .map(|offset| {
            tokio::spawn(async move {
                let mut scraper = Scraper::connect(port, "/metrics").await;
                let mut latencies = Vec::new();
                let mut bytes = 0;
                let mut due = start + offset;
                while due < start + duration {
                    tokio::time::sleep_until(due).await;
                    bytes = scraper.scrape().await;
                    latencies.push(due.elapsed());
                    due += SCRAPE_EVERY;
                }
                (latencies, bytes)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut bytes = 0;
    for task in tasks {
        let (latencies, b) = task.await.expect("scraper task");
        all.extend(latencies);
        bytes = b;
    }
    all.sort();
    (all, bytes)
}

/// `wrk -c16 -t2 -dNs --latency`: requests/s, transfer/s and the latency lines.
fn wrk(port: u16, seconds: u64) -> Option<String> {
    let output = Command::new("wrk")
        .args([
            "-c16",
            "-t2",
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = full_run();
    let accounts: usize = flag("accounts")
        .and_then(|a| a.parse().ok())
        .unwrap_or(if full { 1000 } else { 20 });
    let seconds: u64 = flag("seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 20 } else { 1 });
    println!("# Scrape benchmark\n\n{}", machine());

    let moto = Moto::start().await;
    let started = Instant::now();
    let exporter = Exporter::builder(&config(accounts))
        .moto(&moto.endpoint())
        .args(&["--config", "{config}", "--log.format", "json"])
        .start()
        .await;
    exporter.wait_ready(Duration::from_secs(3600)).await;
    let ready = started.elapsed();
    let pid = exporter.pid().expect("exporter running");
    let (peak_mib, rss_mib) = memory_mib(pid);
    let body = exporter.metrics().await;
    let targets = accounts * REGIONS.len();
    println!(
        "## Exporter with {targets} targets ({accounts} accounts x {} regions, AssumeRole into each)\n",
        REGIONS.len()
    );
    println!("| figure | value |\n|---|---:|");
    println!(
        "| first round: process start to `/readyz` 200 | {:.1} s |",
        ready.as_secs_f64()
    );
    println!(
        "| round wall time | {:.1} s |",
        round_seconds(&exporter.logs()).unwrap_or(f64::NAN)
    );
    let calls = calls_by_operation(&body);
    let described: Vec<String> = calls.iter().map(|(op, n)| format!("{op} {n}")).collect();
    println!("| AWS calls | {} |", described.join(", "));
    println!("| series on `/metrics` | {} |", series(&body));
    println!("| body size | {:.2} MiB |", body.len() as f64 / 1_048_576.0);
    println!("| RSS after the first round (VmRSS) | {rss_mib:.1} MiB |");
    println!("| peak RSS so far (VmHWM) | {peak_mib:.1} MiB |");
    assert!(
        !full || series(&body) >= 10_000,
        "the load test needs at least 10,000 series"
    );

    let cpu_before = cpu_time(pid);
    let load = Duration::from_secs(seconds);
    let (latencies, bytes) = open_loop(exporter.port(), load).await;
    let cpu_used = cpu_time(pid).saturating_sub(cpu_before);
    let (peak_after, rss_after) = memory_mib(pid);
    println!(
        "\n## Open loop: {SCRAPERS} scrapers x 1 every {} ms ({:.0} scrapes/s) for {seconds} s\n",
        SCRAPE_EVERY.as_millis(),
        SCRAPERS as f64 * 1000.0 / SCRAPE_EVERY.as_millis() as f64
    );
    println!("| figure | value |\n|---|---:|");
    println!("| scrapes | {} ({bytes} bytes each) |", latencies.len());
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        println!("| {label} latency | {} |", ms(quantile(&latencies, q)));
    }
    println!(
        "| max latency | {} |",
        ms(latencies.last().copied().unwrap_or_default())
    );
    println!(
        "| exporter CPU during the load | {:.2} s of {seconds} s ({:.0}% of one core) |",
        cpu_used.as_secs_f64(),
        cpu_used.as_secs_f64() * 100.0 / seconds as f64
    );
    println!("| RSS after the load (VmRSS / VmHWM) | {rss_after:.1} / {peak_after:.1} MiB |");
    let p99 = quantile(&latencies, 0.99);
    if full {
        println!(
            "\np99 {} the 5 ms target.",
            if p99 < Duration::from_millis(5) {
                "meets"
            } else {
                "misses"
            }
        );
    }

    let wrk_seconds = if full { 10 } else { 1 };
    println!("\n## Closed loop: `wrk -c16 -t2 -d{wrk_seconds}s --latency`\n");
    match wrk(exporter.port(), wrk_seconds) {
        Some(out) => println!("```\n{}\n```", out.trim_end()),
        None => println!("(wrk is not installed: apt-get install wrk)"),
    }
    let (peak_end, rss_end) = memory_mib(pid);
    println!("\nRSS after wrk (VmRSS / VmHWM): {rss_end:.1} / {peak_end:.1} MiB");
    assert!(!latencies.is_empty(), "no scrape answered");
}
