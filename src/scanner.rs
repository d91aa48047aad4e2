//! Scan rounds: plan the round (discovery), resolve each account (ID, credentials), then scan
//! every target with a time bound and a global bound on AWS calls in flight, and write each
//! result to the snapshot. Rounds never overlap; a failure in one target never stops the others.
//! The first round starts every target at once; later ones spread them over the interval
//! ([`schedule`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aws::AwsClients;
use crate::config::{KeyDiscovery, ScanConfig};
use crate::discovery::{Discovery, Fleet};
use crate::error::{AwsError, ErrorKind};
use crate::evaluate::{Matcher, apply_requirement, evaluate};
use crate::inventory;
use crate::schedule;
use crate::snapshot::SharedSnapshot;
use crate::tag_usage;
use crate::targets::Target;

/// Per-key calls of one target waiting for a permit at once.
const MAX_FANOUT: usize = 8;

pub struct Scanner {
    clients: Arc<AwsClients>,
    discovery: tokio::sync::Mutex<Discovery>,
    /// Keys of default-credential accounts whose ID was confirmed with GetCallerIdentity.
    identity_checked: std::sync::Mutex<HashSet<String>>,
    matcher: Matcher,
    permits: Semaphore,
    settings: ScanConfig,
    snapshot: SharedSnapshot,
}

impl Scanner {
    pub fn new(
        clients: Arc<AwsClients>,
        discovery: Discovery,
        matcher: Matcher,
        settings: ScanConfig,
        snapshot: SharedSnapshot,
    ) -> Scanner {
        if discovery.pending() {
            snapshot.write().pending_discovery = true;
        }
        Scanner {
            identity_checked: std::sync::Mutex::new(HashSet::new()),
            clients,
            discovery: tokio::sync::Mutex::new(discovery),
            matcher,
            permits: Semaphore::new(settings.concurrency.0),
            settings,
            snapshot,
        }
    }

    pub fn snapshot(&self) -> &SharedSnapshot {
        &self.snapshot
    }

    /// Scans every target once, all starting at once. Returns when all are recorded in the
    /// snapshot.
    pub async fn run_round(&self) {
        self.round(Duration::ZERO).await;
    }

    /// Scans every target once, their starts spread evenly over `window`.
    ///
    /// An account is prepared (ID, credentials) by its first target, once per round and
    /// within `scan.timeout`; its other targets wait for that, and other accounts go on.
    async fn round(&self, window: Duration) {
        let started = Instant::now();
        let concurrency = self.settings.concurrency.0;
        let fleet = self
            .discovery
            .lock()
            .await
            .plan_round(&self.clients, &self.snapshot, &self.permits, concurrency)
            .await;
        self.apply_plan(&fleet);
        let prepared: Vec<OnceCell<Result<(), AwsError>>> = fleet
            .plan
            .accounts
            .iter()
            .map(|_| OnceCell::new())
            .collect();
        let offsets = self.start_offsets(&fleet, window);
        let mut order: Vec<usize> = (0..fleet.plan.targets.len()).collect();
        // In start order, so that targets waiting for their slot never hold back earlier ones.
        order.sort_by_key(|&i| offsets[i]);
        let round_start = tokio::time::Instant::now();
        futures::stream::iter(order)
            .for_each_concurrent(concurrency, |i| {
                let target = &fleet.plan.targets[i];
                let prepared = &prepared[target.account];
                let fleet = &fleet;
                let start = round_start + offsets[i];
                async move {
                    tokio::time::sleep_until(start).await;
                    let started = Instant::now();
                    let ready = prepared
                        .get_or_init(|| self.prepare_account_in_time(fleet, target.account))
                        .await;
                    self.scan_target(fleet, i, target, ready, started).await
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

    /// Start offset of every target of the round: hashed from account and region, spread
    /// evenly over `window`; a target never scanned yet (new account or region) starts at
    /// once, so that `/readyz` does not wait for its slot.
    fn start_offsets(&self, fleet: &Fleet, window: Duration) -> Vec<Duration> {
        let targets = &fleet.plan.targets;
        if window.is_zero() {
            return vec![Duration::ZERO; targets.len()];
        }
        let keys: Vec<u64> = targets
            .iter()
            .map(|t| {
                let account = fleet
                    .plan
                    .accounts
                    .get(t.account)
                    .map_or("", |a| a.key.as_str());
                schedule::target_key(account, t.region.as_str())
            })
            .collect();
        let mut offsets = schedule::start_offsets(&keys, window);
        // The snapshot is laid out in plan order (apply_plan).
        let snapshot = self.snapshot.read();
        for (offset, state) in offsets.iter_mut().zip(&snapshot.targets) {
            if !state.scanned {
                *offset = Duration::ZERO;
            }
        }
        offsets
    }

    /// Runs rounds every `scan.interval` until `shutdown`: the first starts every target at
    /// once (so that `/readyz` comes quickly), later ones spread them over the interval.
    pub async fn run(&self, shutdown: CancellationToken) {
        let spread = schedule::spread_window(self.settings.interval.0, self.settings.timeout.0);
        let mut window = Duration::ZERO;
        loop {
            let started = tokio::time::Instant::now();
            tokio::select! {
                _ = self.round(window) => {}
                _ = shutdown.cancelled() => return,
            }
            window = spread;
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

    /// Lays the snapshot out for the round's plan, logging what changed.
    fn apply_plan(&self, fleet: &Fleet) {
        let mut snapshot = self.snapshot.write();
        let before: Vec<String> = snapshot.accounts.iter().map(|a| a.key.clone()).collect();
        let targets_before = snapshot.targets.len();
        snapshot.apply_plan(&fleet.plan);
        let added = fleet
            .plan
            .accounts
            .iter()
            .filter(|a| !before.contains(&a.key))
            .count();
        let removed = before
            .iter()
            .filter(|k| !fleet.plan.accounts.iter().any(|a| &a.key == *k))
            .count();
        if added > 0 || removed > 0 || targets_before != fleet.plan.targets.len() {
            info!(
                accounts = fleet.plan.accounts.len(),
                targets = fleet.plan.targets.len(),
                accounts_added = added,
                accounts_removed = removed,
                "scan plan changed"
            );
        }
    }

    async fn prepare_account_in_time(&self, fleet: &Fleet, index: usize) -> Result<(), AwsError> {
        let timeout = self.settings.timeout.0;
        match tokio::time::timeout(timeout, self.prepare_account(fleet, index)).await {
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
                    account = fleet.plan.accounts[index].label(),
                    operation = e.operation,
                    error = %e.kind,
                    detail = %e.message,
                    hint = %e.hint(),
                    "cannot prepare the account; its targets are not scanned this round"
                );
                Err(e)
            }
        }
    }

    /// Learns (or, for the default credentials, checks) the account ID and gets credentials.
    async fn prepare_account(&self, fleet: &Fleet, index: usize) -> Result<(), AwsError> {
        if let Some(Some(e)) = fleet.blocked.get(index) {
            return Err(e.clone());
        }
        let spec = &fleet.plan.accounts[index];
        let needs_identity = spec.role_arn.is_none()
            && !self
                .identity_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&spec.key);
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
                    self.identity_checked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(spec.key.clone());
                    self.snapshot.write().set_account_id(index, id);
                }
                Err(e) => {
                    warn!(
                        account = spec.label(),
                        operation = e.operation,
                        error = %e.kind,
                        detail = %e.message,
                        hint = %e.hint(),
                        "cannot learn the account ID; its targets are exported with account=\"unknown\""
                    );
                    return Err(e);
                }
            }
        }
        let access = &fleet.access[index];
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
        fleet: &Fleet,
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
        let access = &fleet.access[target.account];
        let kms = self.clients.kms(&target.region);
        let fanout = self.settings.concurrency.0.min(MAX_FANOUT);
        let tag_usage = async {
            if !self.matcher.checks_tag_in_use() {
                return None;
            }
            let tagging = self.clients.tagging(&target.region);
            Some(tag_usage::tag_key_in_use(&tagging, &self.matcher, &self.permits).await)
        };
        let scan = access.scope(async {
            let keys = async {
                match self.settings.discovery {
                    KeyDiscovery::Kms => {
                        inventory::scan_target(&kms, &self.matcher, &self.permits, fanout).await
                    }
                    KeyDiscovery::Tagging => {
                        let tagging = self.clients.tagging(&target.region);
                        inventory::tagging::scan_target(
                            &tagging,
                            &kms,
                            &self.matcher,
                            &self.permits,
                            fanout,
                        )
                        .await
                    }
                }
            };
            let (inventory, tag_in_use) = futures::join!(keys, tag_usage);
            inventory.map(|mut inventory| {
                // Tag usage is secondary: its failure is counted, and only matters for
                // match.require = "when_tag_in_use" (the verdict then says so).
                let tag_in_use = match tag_in_use {
                    Some(Ok(in_use)) => Some(in_use),
                    Some(Err(e)) => {
                        inventory.soft_errors.push(e);
                        None
                    }
                    None => None,
                };
                (inventory, tag_in_use)
            })
        });
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
            Ok((inventory, tag_in_use)) => {
                for e in &inventory.soft_errors {
                    warn!(
                        account,
                        region,
                        operation = e.operation,
                        error = %e.kind,
                        detail = %e.message,
                        hint = %e.hint(),
                        "a secondary call failed (a key not fully read, or the tag keys); the scan goes on"
                    );
                }
                let verdict = apply_requirement(
                    evaluate(&inventory.keys, &self.matcher),
                    &self.matcher,
                    tag_in_use,
                );
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
                    hint = %e.hint(),
                    "scan failed; keeping the last known values"
                );
                self.snapshot.write().record_failure(index, e, duration);
            }
        }
    }
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
