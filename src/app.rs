//! Wiring of the two modes: the long-running exporter and the one-shot `scan`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::aws::AwsClients;
use crate::config::{Config, ConfigError};
use crate::evaluate::Matcher;
use crate::metrics::Metrics;
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
}

async fn build_scanner(config: &Config, metrics: &Metrics) -> Result<Scanner, AppError> {
    let first_region = config.regions.first().or_else(|| {
        config
            .accounts
            .iter()
            .find_map(|a| a.regions.as_ref()?.first())
    });
    let clients =
        Arc::new(AwsClients::load(metrics.aws_requests_total.clone(), first_region).await);
    let shard = config.shard().map_err(|e| ConfigError(e.to_string()))?;
    let full = targets::plan(config, clients.default_region().as_deref())?;
    let configured = full.accounts.len();
    let plan = shard.restrict(full);
    if shard.total() > 1 {
        info!(
            shard = shard.ordinal(),
            total_shards = shard.total(),
            accounts = plan.accounts.len(),
            configured_accounts = configured,
            "sharded: scanning only the accounts this shard owns"
        );
    }
    let snapshot = SharedSnapshot::new(Snapshot::new(&plan));
    Ok(Scanner::new(
        clients,
        plan,
        Matcher::from_config(&config.matching),
        config.scan.clone(),
        snapshot,
    ))
}

/// Runs the exporter until `shutdown` is cancelled.
pub async fn run_exporter(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let shard = config.shard().map_err(|e| ConfigError(e.to_string()))?;
    let metrics = Arc::new(Metrics::for_shard(shard));
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
pub async fn run_scan(config: Config, output: Output) -> Result<i32, AppError> {
    let metrics = Metrics::new();
    let scanner = build_scanner(&config, &metrics).await?;
    scanner.run_round().await;
    let rows = report::rows(&scanner.snapshot().read());
    let text = match output {
        Output::Table => report::render_table(&rows),
        Output::Json => report::render_json(&rows) + "\n",
    };
    print!("{text}");
    Ok(report::exit_code(&rows))
}
