//! Wiring of the two modes: the long-running exporter and the one-shot `scan`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::aws::AwsClients;
use crate::cloudsploit;
use crate::config::{Config, ConfigError, DEFAULT_REFRESH_INTERVAL};
use crate::discovery::Discovery;
use crate::evaluate::Matcher;
use crate::metrics::Metrics;
use crate::organization::OrgSettings;
use crate::report;
use crate::scanner::Scanner;
use crate::server::{self, AppState};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::targets;

/// Why a mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(
        "cannot listen on {address}: {source}; is another process using the port? (listen_address)"
    )]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Output formats of `scan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    /// CloudSploit's JSON results (`--json=FILE` of CloudSploit).
    CloudSploitJson,
    /// CloudSploit's CSV results (`--csv=FILE` of CloudSploit).
    Csv,
}

/// How `scan` chooses its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCodeStyle {
    /// 0 all PASS, 1 a FAIL, 2 an UNKNOWN.
    Verdict,
    /// CloudSploit's `--exit-code`: the worst status, 0 OK, 2 FAIL, 3 UNKNOWN.
    CloudSploit,
}

async fn build_scanner(config: &Config, metrics: &Metrics) -> Result<Scanner, AppError> {
    let first_region = config.regions.listed().first().or_else(|| {
        config
            .accounts
            .iter()
            .find_map(|a| a.regions.as_ref()?.listed().first())
    });
    let clients =
        Arc::new(AwsClients::load(metrics.aws_requests_total.clone(), first_region).await);
    let default_region = clients.default_region();
    let plan = targets::plan(config, default_region.as_deref())?;
    let default_regions = targets::default_regions(config, default_region.as_deref())?;
    let organization = OrgSettings::from_config(
        config.organization.as_ref(),
        &default_regions,
        &config.exclude_regions,
    );
    if let Some(org) = &organization
        && matches!(&org.regions, crate::config::RegionSelection::Listed(r) if r.is_empty())
    {
        return Err(ConfigError(
            "no region to scan for the organization's accounts: set `regions` (top level or \
             in [organization]), or a default region with AWS_REGION or the profile"
                .to_owned(),
        )
        .into());
    }
    let refresh_interval = config
        .organization
        .as_ref()
        .map_or(DEFAULT_REFRESH_INTERVAL, |o| o.refresh_interval.0);
    let snapshot = SharedSnapshot::new(Snapshot::new(&plan));
    let discovery = Discovery::new(plan.accounts, organization, refresh_interval);
    Ok(Scanner::new(
        clients,
        discovery,
        Matcher::from_config(&config.matching),
        config.scan.clone(),
        snapshot,
    ))
}

/// Runs the exporter until `shutdown` is cancelled.
pub async fn run_exporter(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new());
    let scanner = Arc::new(build_scanner(&config, &metrics).await?);
    let address = config.listen_address.0;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| AppError::Bind { address, source })?;
    let local = listener.local_addr().unwrap_or(address);
    info!(
        address = %local,
        metrics_path = %config.metrics_path.0,
        targets = scanner.snapshot().read().targets.len(),
        interval = %humantime::format_duration(config.scan.interval.0),
        "exporter listening; first scan round starts now"
    );
    let state = Arc::new(AppState {
        snapshot: scanner.snapshot().clone(),
        metrics,
        metrics_path: config.metrics_path.0.clone(),
    });
    let scanning = {
        let scanner = Arc::clone(&scanner);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { scanner.run(shutdown).await })
    };
    server::serve(listener, state, shutdown.clone()).await;
    shutdown.cancel();
    let _ = scanning.await;
    info!("exporter stopped");
    Ok(())
}

/// Scans every target once, prints the report and returns the exit code.
pub async fn run_scan(
    config: Config,
    output: Output,
    exit: ExitCodeStyle,
) -> Result<i32, AppError> {
    let metrics = Metrics::new();
    let scanner = build_scanner(&config, &metrics).await?;
    scanner.run_round().await;
    let rows = report::rows(&scanner.snapshot().read());
    let text = match output {
        Output::Table => report::render_table(&rows),
        Output::Json => report::render_json(&rows) + "\n",
        Output::CloudSploitJson => cloudsploit::render_json(&cloudsploit::results(&rows)) + "\n",
        Output::Csv => cloudsploit::render_csv(&cloudsploit::results(&rows)),
    };
    print!("{text}");
    Ok(match exit {
        ExitCodeStyle::Verdict => report::exit_code(&rows),
        ExitCodeStyle::CloudSploit => cloudsploit::exit_code(&rows),
    })
}
