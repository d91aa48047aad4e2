//! Wiring of the two modes: the long-running exporter and the one-shot `scan`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::aws::AwsClients;
use crate::cloudsploit;
use crate::config::{Config, ConfigError, DEFAULT_REFRESH_INTERVAL, ListenAddress, ScanConfig};
use crate::discovery::Discovery;
use crate::evaluate::Matcher;
use crate::metrics::Metrics;
use crate::organization::OrgSettings;
use crate::reload::{ReloadMetrics, ReloadRequest};
use crate::report;
use crate::scanner::Scanner;
use crate::server::{self, AppState, Limits};
use crate::shard::{Shard, ShardFlags};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::targets::{self, Plan};
use crate::web_config::{Authenticator, WebConfigError, WebConfigWatcher};

/// Why a mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    WebConfig(#[from] WebConfigError),
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

/// How the exporter runs, beyond the configuration file.
#[derive(Clone, Debug, Default)]
pub struct ExporterOptions {
    /// `--config`, re-read on every reload.
    pub config_path: Option<PathBuf>,
    /// `--web.listen-address`: beats the file's `listen_address`.
    pub listen_address: Option<ListenAddress>,
    /// `--web.config.file`: TLS, basic auth, response headers.
    pub web_config_file: Option<PathBuf>,
    /// `--web.enable-lifecycle`: serve `POST /-/reload`.
    pub enable_lifecycle: bool,
    /// `--shard`, `--total-shards`: beat the file's `shard` and `total_shards`.
    pub shards: ShardFlags,
    pub limits: Limits,
}

impl ExporterOptions {
    /// Loads the configuration file and applies the flags that override it.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config_path.as_deref())?;
        if let Some(address) = self.listen_address {
            config.listen_address = address;
        }
        self.shards.apply(&mut config);
        config
            .shard()
            .map_err(|e| ConfigError(format!("shard (with --shard, --total-shards): {e}")))?;
        Ok(config)
    }
}

async fn load_clients(config: &Config, metrics: &Metrics) -> Arc<AwsClients> {
    let first_region = config.regions.listed().first().or_else(|| {
        config
            .accounts
            .iter()
            .find_map(|a| a.regions.as_ref()?.listed().first())
    });
    Arc::new(AwsClients::load(metrics.aws_requests_total.clone(), first_region).await)
}

/// Everything a scanner needs from a configuration, checked, before any scanner is touched
/// (so that a reload can be refused while the running scanner goes on).
struct ScannerSetup {
    shard: Shard,
    plan: Plan,
    discovery: Discovery,
    matcher: Matcher,
    settings: ScanConfig,
}

impl ScannerSetup {
    fn new(config: &Config, clients: &AwsClients) -> Result<ScannerSetup, ConfigError> {
        let default_region = clients.default_region();
        let shard = config.shard().map_err(|e| ConfigError(e.to_string()))?;
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
            ));
        }
        let refresh_interval = config
            .organization
            .as_ref()
            .map_or(DEFAULT_REFRESH_INTERVAL, |o| o.refresh_interval.0);
        // The static accounts go whole to discovery (which knows them when the organization
        // lists them too); the shard applies to the round's accounts.
        let discovery =
            Discovery::new(plan.accounts.clone(), organization, refresh_interval).with_shard(shard);
        let plan = shard.restrict(plan);
        if shard.total() > 1 {
            info!(
                shard = shard.ordinal(),
                total_shards = shard.total(),
                static_accounts = plan.accounts.len(),
                "sharded: scanning only the accounts this shard owns"
            );
        }
        Ok(ScannerSetup {
            shard,
            plan,
            discovery,
            matcher: Matcher::from_config(&config.matching),
            settings: config.scan.clone(),
        })
    }

    fn into_scanner(self, clients: Arc<AwsClients>, snapshot: SharedSnapshot) -> Scanner {
        Scanner::new(
            clients,
            self.discovery,
            self.matcher,
            self.settings,
            snapshot,
        )
    }
}

async fn build_scanner(config: &Config, metrics: &Metrics) -> Result<Scanner, AppError> {
    let clients = load_clients(config, metrics).await;
    let setup = ScannerSetup::new(config, &clients)?;
    let snapshot = SharedSnapshot::new(Snapshot::new(&setup.plan));
    Ok(setup.into_scanner(clients, snapshot))
}

/// Runs the exporter until `shutdown` is cancelled. `reloads` carries reload requests (SIGHUP
/// from `main`, `POST /-/reload` through `reload_sender` when the lifecycle API is enabled).
pub async fn run_exporter(
    config: Config,
    options: ExporterOptions,
    reload_sender: mpsc::Sender<ReloadRequest>,
    mut reloads: mpsc::Receiver<ReloadRequest>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let web = match &options.web_config_file {
        Some(path) => Some(Arc::new(WebConfigWatcher::load(path)?)),
        None => None,
    };
    let shard = config.shard().map_err(|e| ConfigError(e.to_string()))?;
    let metrics = Arc::new(Metrics::for_shard(shard));
    let reload_metrics = ReloadMetrics::register(&metrics);
    let clients = load_clients(&config, &metrics).await;
    let setup = ScannerSetup::new(&config, &clients)?;
    let snapshot = SharedSnapshot::new(Snapshot::new(&setup.plan));
    let address = config.listen_address.0;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| AppError::Bind { address, source })?;
    let local = listener.local_addr().unwrap_or(address);
    info!(
        address = %local,
        metrics_path = %config.metrics_path.0,
        targets = setup.plan.targets.len(),
        interval = %humantime::format_duration(config.scan.interval.0),
        tls = web.as_ref().is_some_and(|w| w.current().tls.is_some()),
        lifecycle_api = options.enable_lifecycle,
        "exporter listening; first scan round starts now"
    );
    let state = Arc::new(AppState {
        snapshot: snapshot.clone(),
        metrics: Arc::clone(&metrics),
        metrics_path: config.metrics_path.0.clone(),
        web: web.clone(),
        auth: Authenticator::default(),
        reload: options.enable_lifecycle.then(|| reload_sender.clone()),
    });
    let serving = tokio::spawn(server::serve(
        listener,
        state,
        options.limits,
        shutdown.clone(),
    ));

    let mut running = config;
    let mut setup = setup;
    loop {
        let scanner = Arc::new(setup.into_scanner(Arc::clone(&clients), snapshot.clone()));
        let stop = shutdown.child_token();
        let scanning = {
            let stop = stop.clone();
            tokio::spawn(async move { scanner.run(stop).await })
        };
        // Wait for shutdown or a reload whose configuration is valid; invalid ones leave the
        // running scanner alone.
        let next = loop {
            let request = tokio::select! {
                _ = shutdown.cancelled() => break None,
                request = reloads.recv() => request,
            };
            let Some(request) = request else {
                shutdown.cancelled().await;
                break None;
            };
            if let Some(web) = &web {
                // Errors are logged by the watcher; the running web config stays.
                let _ = web.reload();
            }
            match prepare_reload(&options, &clients, &running) {
                Ok((config, next_setup)) => break Some((config, next_setup, request.reply)),
                Err(e) => {
                    reload_metrics.failed();
                    error!(error = %e, "configuration not reloaded; the previous one stays in force");
                    reply(request.reply, Err(e.to_string()));
                }
            }
        };
        stop.cancel();
        let _ = scanning.await;
        let Some((config, next_setup, answer)) = next else {
            break;
        };
        // The new scanner's first round lays the snapshot out for the new plan: targets that
        // stay keep their state, removed ones disappear (Snapshot::apply_plan).
        info!(
            targets = next_setup.plan.targets.len(),
            interval = %humantime::format_duration(config.scan.interval.0),
            "configuration reloaded; a scan round starts now"
        );
        metrics.set_shard(next_setup.shard);
        setup = next_setup;
        running = config;
        reload_metrics.succeeded();
        reply(answer, Ok(()));
    }
    let _ = serving.await;
    info!("exporter stopped");
    Ok(())
}

/// Loads and checks the configuration for a reload. Settings that need a restart (the listen
/// address, the metrics path) keep their running values, with a warning.
fn prepare_reload(
    options: &ExporterOptions,
    clients: &AwsClients,
    running: &Config,
) -> Result<(Config, ScannerSetup), ConfigError> {
    let mut config = options.load_config()?;
    let setup = ScannerSetup::new(&config, clients)?;
    if config.listen_address != running.listen_address {
        warn!(
            running = %running.listen_address.0,
            configured = %config.listen_address.0,
            "listen_address changed; restart the exporter to apply it"
        );
        config.listen_address = running.listen_address;
    }
    if config.metrics_path != running.metrics_path {
        warn!(
            running = %running.metrics_path.0,
            configured = %config.metrics_path.0,
            "metrics_path changed; restart the exporter to apply it"
        );
        config.metrics_path = running.metrics_path.clone();
    }
    Ok((config, setup))
}

fn reply(to: Option<oneshot::Sender<Result<(), String>>>, outcome: Result<(), String>) {
    if let Some(to) = to {
        let _ = to.send(outcome);
    }
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
