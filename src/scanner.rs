//! Scan rounds: resolve each account (ID, credentials), then scan every target with a time
//! bound and a global bound on AWS calls in flight, and write each result to the snapshot.
//! Rounds never overlap; a failure in one target never stops the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aws::{AccountAccess, AwsClients};
use crate::config::ScanConfig;
use crate::error::{AwsError, ErrorKind};
use crate::evaluate::{Matcher, evaluate};
use crate::inventory;
use crate::snapshot::SharedSnapshot;
use crate::targets::{AccountSpec, Plan, Target};

/// Per-key calls of one target waiting for a permit at once.
const MAX_FANOUT: usize = 8;

pub struct Scanner {
    clients: Arc<AwsClients>,
    accounts: Vec<AccountSpec>,
    access: Vec<Arc<AccountAccess>>,
    /// The default credentials' account ID was confirmed with GetCallerIdentity.
    identity_checked: Vec<AtomicBool>,
    targets: Vec<Target>,
    matcher: Matcher,
    permits: Semaphore,
    settings: ScanConfig,
    snapshot: SharedSnapshot,
}

impl Scanner {
    pub fn new(
        clients: Arc<AwsClients>,
        plan: Plan,
        matcher: Matcher,
        settings: ScanConfig,
        snapshot: SharedSnapshot,
    ) -> Scanner {
        let access = plan
            .accounts
            .iter()
            .map(|a| {
                clients.account_access(
                    a.label(),
                    a.role_arn
                        .as_ref()
                        .map(|arn| (arn, a.external_id.as_deref())),
                    a.session_duration,
                )
            })
            .collect();
        Scanner {
            identity_checked: plan
                .accounts
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            clients,
            accounts: plan.accounts,
            access,
            targets: plan.targets,
            matcher,
            permits: Semaphore::new(settings.concurrency.0),
            settings,
            snapshot,
        }
    }

    pub fn snapshot(&self) -> &SharedSnapshot {
        &self.snapshot
    }

    /// Scans every target once. Returns when all are recorded in the snapshot.
    ///
    /// An account is prepared (ID, credentials) by its first target, once per round and
    /// within `scan.timeout`; its other targets wait for that, and other accounts go on.
    pub async fn run_round(&self) {
        let started = Instant::now();
        let concurrency = self.settings.concurrency.0;
        let prepared: Vec<OnceCell<Result<(), AwsError>>> =
            self.accounts.iter().map(|_| OnceCell::new()).collect();
        futures::stream::iter(self.targets.iter().enumerate())
            .for_each_concurrent(concurrency, |(i, target)| {
                let prepared = &prepared[target.account];
                async move {
                    let started = Instant::now();
                    let ready = prepared
                        .get_or_init(|| self.prepare_account_in_time(target.account))
                        .await;
                    self.scan_target(i, target, ready, started).await
                }
            })
            .await;
        let snapshot = self.snapshot.read();
        let failed = snapshot.targets.iter().filter(|t| !t.last_scan_ok).count();
        info!(
            targets = snapshot.targets.len(),
            failed,
            duration_seconds = started.elapsed().as_secs_f64(),
            "scan round finished"
        );
    }

    /// Runs rounds every `scan.interval` (the first at once) until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let started = tokio::time::Instant::now();
            tokio::select! {
                _ = self.run_round() => {}
                _ = shutdown.cancelled() => return,
            }
            let next = started + self.settings.interval.0;
            if tokio::time::Instant::now() > next {
                warn!(
                    interval = %humantime::format_duration(self.settings.interval.0),
                    "scan round took longer than scan.interval; starting the next one now"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn prepare_account_in_time(&self, index: usize) -> Result<(), AwsError> {
        let timeout = self.settings.timeout.0;
        match tokio::time::timeout(timeout, self.prepare_account(index)).await {
            Ok(result) => result,
            Err(_) => {
                let e = AwsError::new(
                    "PrepareAccount",
                    ErrorKind::Timeout,
                    format!(
                        "learning the account ID or getting credentials took longer than scan.timeout ({})",
                        humantime::format_duration(timeout)
                    ),
                );
                warn!(
                    account = self.accounts[index].label(),
                    operation = e.operation,
                    error = %e.kind,
                    detail = %e.message,
                    hint = e.kind.hint(),
                    "cannot prepare the account; its targets are not scanned this round"
                );
                Err(e)
            }
        }
    }

    /// Learns (or, for the default credentials, checks) the account ID and gets credentials.
    async fn prepare_account(&self, index: usize) -> Result<(), AwsError> {
        let spec = &self.accounts[index];
        let needs_identity =
            spec.role_arn.is_none() && !self.identity_checked[index].load(Ordering::Relaxed);
        if needs_identity {
            match self.clients.default_account_id().await {
                Ok(id) => {
                    if let Some(configured) = &spec.known_id
                        && configured != &id
                    {
                        let e = AwsError::new(
                            "GetCallerIdentity",
                            ErrorKind::Other,
                            format!(
                                "the default credentials belong to account {id}, but the configuration says account_id = {configured}; fix account_id or the credentials"
                            ),
                        );
                        warn!(account = spec.label(), detail = %e.message, "account ID mismatch; its targets are not scanned");
                        return Err(e);
                    }
                    self.identity_checked[index].store(true, Ordering::Relaxed);
                    self.snapshot.write().set_account_id(index, id);
                }
                Err(e) => {
                    warn!(
                        account = spec.label(),
                        operation = e.operation,
                        error = %e.kind,
                        detail = %e.message,
                        hint = e.kind.hint(),
                        "cannot learn the account ID; its targets are exported with account=\"unknown\""
                    );
                    return Err(e);
                }
            }
        }
        let access = &self.access[index];
        match access.credentials().await {
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(
                    account = spec.label(),
                    role_arn = spec.role_arn.as_ref().map(|r| r.as_str()),
                    operation = e.operation,
                    error = %e.kind,
                    detail = %e.message,
                    hint = ErrorKind::AssumeRole.hint(),
                    "cannot get credentials for the account; its targets are not scanned this round"
                );
                Err(e)
            }
        }
    }

    /// Scans one target; `started` is when it began waiting for its account's preparation.
    async fn scan_target(
        &self,
        index: usize,
        target: &Target,
        ready: &Result<(), AwsError>,
        started: Instant,
    ) {
        if let Err(e) = ready {
            let duration = started.elapsed().as_secs_f64();
            self.snapshot
                .write()
                .record_failure(index, e.clone(), duration);
            return;
        }
        let access = &self.access[target.account];
        let kms = self.clients.kms(&target.region);
        let fanout = self.settings.concurrency.0.min(MAX_FANOUT);
        let scan = access.scope(inventory::scan_target(
            &kms,
            &self.matcher,
            &self.permits,
            fanout,
        ));
        let result = match tokio::time::timeout(self.settings.timeout.0, scan).await {
            Ok(result) => result,
            Err(_) => Err(AwsError::new(
                "Scan",
                ErrorKind::Timeout,
                format!(
                    "the scan did not finish within scan.timeout ({})",
                    humantime::format_duration(self.settings.timeout.0)
                ),
            )),
        };
        let duration = started.elapsed().as_secs_f64();
        let account = access.label();
        let region = target.region.as_str();
        match result {
            Ok(inventory) => {
                for e in &inventory.soft_errors {
                    warn!(
                        account,
                        region,
                        operation = e.operation,
                        error = %e.kind,
                        detail = %e.message,
                        hint = e.kind.hint(),
                        "a key could not be fully read"
                    );
                }
                let verdict = evaluate(&inventory.keys, &self.matcher);
                tracing::debug!(account, region, verdict = verdict.status.as_str(), detail = %verdict.message, "target scanned");
                self.snapshot.write().record_success(
                    index,
                    verdict,
                    &inventory.soft_errors,
                    duration,
                    unix_now(),
                );
            }
            Err(e) => {
                warn!(
                    account,
                    region,
                    operation = e.operation,
                    error = %e.kind,
                    detail = %e.message,
                    hint = e.kind.hint(),
                    "scan failed; keeping the last known values"
                );
                self.snapshot.write().record_failure(index, e, duration);
            }
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
