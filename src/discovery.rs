//! What to scan this round: the static accounts, the organization's accounts and the enabled
//! regions of `regions = "all"` accounts. Lists are read again every refresh interval; a read
//! that fails keeps the last known list. The result is the round's [`Fleet`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::aws::{AccountAccess, AwsClients};
use crate::config::{AccountId, Region};
use crate::error::{AwsError, ErrorKind};
use crate::organization::{self, OrgAccount, OrgSettings};
use crate::regions::{self, ReportedRegion};
use crate::shard::Shard;
use crate::snapshot::SharedSnapshot;
use crate::targets::{AccountSpec, Plan};

/// The round's accounts and targets, with what is needed to scan them.
pub struct Fleet {
    pub plan: Plan,
    /// Credentials of each account, in plan order.
    pub access: Vec<Arc<AccountAccess>>,
    /// Why an account cannot be scanned this round (its regions are not known yet).
    pub blocked: Vec<Option<AwsError>>,
}

pub struct Discovery {
    static_accounts: Vec<AccountSpec>,
    organization: Option<OrgSettings>,
    refresh_interval: Duration,
    own_id: Option<AccountId>,
    /// Last known list of the organization.
    org_accounts: Vec<OrgAccount>,
    org_read_at: Option<Instant>,
    /// Last known regions of `regions = "all"` accounts, by account key, and when read.
    enabled_regions: HashMap<String, (Vec<ReportedRegion>, Instant)>,
    access: HashMap<String, Arc<AccountAccess>>,
    /// Only this shard's accounts are scanned.
    shard: Shard,
}

impl Discovery {
    pub fn new(
        static_accounts: Vec<AccountSpec>,
        organization: Option<OrgSettings>,
        refresh_interval: Duration,
    ) -> Discovery {
        Discovery {
            static_accounts,
            organization,
            refresh_interval,
            own_id: None,
            org_accounts: Vec::new(),
            org_read_at: None,
            enabled_regions: HashMap::new(),
            access: HashMap::new(),
            shard: Shard::ALL,
        }
    }

    /// Scans only the accounts that `shard` owns (static and organization ones alike). The
    /// static list stays whole, so that an organization account that is also configured is
    /// still recognised as such on every shard.
    pub fn with_shard(mut self, shard: Shard) -> Discovery {
        self.shard = shard;
        self
    }

    /// Targets are only complete after the first round's discovery.
    pub fn pending(&self) -> bool {
        self.organization.is_some()
            || self
                .static_accounts
                .iter()
                .any(|a| a.all_enabled_except.is_some())
    }

    /// Reads what is due and returns the round's fleet.
    pub async fn plan_round(
        &mut self,
        clients: &AwsClients,
        snapshot: &SharedSnapshot,
        permits: &Semaphore,
        concurrency: usize,
    ) -> Fleet {
        let now = Instant::now();
        let mut accounts = self.static_accounts.clone();
        if self.organization.is_some() {
            let refreshed = if self.due(self.org_read_at, now) {
                self.org_read_at = Some(now);
                Some(self.read_organization(clients).await)
            } else {
                None
            };
            let from_organization = match (&self.organization, &self.own_id) {
                (Some(org), Some(own)) => organization::accounts_to_scan(
                    &self.org_accounts,
                    org,
                    own,
                    &self.static_accounts,
                ),
                _ => Vec::new(),
            };
            if let Some(ok) = refreshed {
                if ok {
                    info!(
                        listed = self.org_accounts.len(),
                        scanned = from_organization.len(),
                        "organization account list read"
                    );
                }
                snapshot.write().record_organization_refresh(
                    ok,
                    from_organization.len(),
                    crate::scanner::unix_now(),
                );
            }
            accounts.extend(from_organization);
        }
        self.shard.retain_owned(&mut accounts);

        let access: Vec<Arc<AccountAccess>> = accounts
            .iter()
            .map(|spec| {
                Arc::clone(self.access.entry(spec.key.clone()).or_insert_with(|| {
                    clients.account_access(
                        spec.label(),
                        spec.role_arn
                            .as_ref()
                            .map(|arn| (arn, spec.external_id.as_deref())),
                        spec.session_duration,
                    )
                }))
            })
            .collect();
        self.access
            .retain(|key, _| accounts.iter().any(|a| &a.key == key));
        self.enabled_regions
            .retain(|key, _| accounts.iter().any(|a| &a.key == key));

        let failures = self
            .read_enabled_regions(clients, &accounts, &access, permits, concurrency, now)
            .await;
        let home = Region::parse(clients.home_region());
        let mut blocked = Vec::with_capacity(accounts.len());
        for spec in &mut accounts {
            let Some(except) = &spec.all_enabled_except else {
                blocked.push(None);
                continue;
            };
            match self.enabled_regions.get(&spec.key) {
                Some((reported, _)) => {
                    spec.regions = regions::scannable(reported, except);
                    blocked.push(None);
                }
                None => {
                    // Keep the account visible: one target in the home region, failed with
                    // the reason, until its regions are known (retried every round).
                    spec.regions = home.clone().into_iter().collect();
                    blocked.push(Some(failures.get(&spec.key).cloned().unwrap_or_else(
                        || {
                            AwsError::new(
                                "ListRegions",
                                ErrorKind::Other,
                                "the enabled regions are not known yet",
                            )
                        },
                    )));
                }
            }
        }
        Fleet {
            plan: Plan::expand(accounts),
            access,
            blocked,
        }
    }

    fn due(&self, last: Option<Instant>, now: Instant) -> bool {
        last.is_none_or(|t| now.duration_since(t) >= self.refresh_interval)
    }

    /// Reads the organization's account list (and, the first time, the exporter's own
    /// account ID). False when that failed: the last known list stays.
    async fn read_organization(&mut self, clients: &AwsClients) -> bool {
        let result = async {
            if self.own_id.is_none() {
                self.own_id = Some(clients.default_account_id().await?);
            }
            organization::list_accounts(clients.organizations()).await
        }
        .await;
        match result {
            Ok(listed) => {
                self.org_accounts = listed;
                true
            }
            Err(e) => {
                warn!(
                    operation = e.operation,
                    error = %e.kind,
                    detail = %e.message,
                    hint = "the exporter's own credentials need organizations:ListAccounts in the management or a delegated-admin account",
                    known_accounts = self.org_accounts.len(),
                    "cannot read the organization's account list; keeping the last known list"
                );
                false
            }
        }
    }

    /// Reads the enabled regions of the accounts that need them (never read, or older than
    /// the refresh interval). Returns the failures of accounts with no known list.
    async fn read_enabled_regions(
        &mut self,
        clients: &AwsClients,
        accounts: &[AccountSpec],
        access: &[Arc<AccountAccess>],
        permits: &Semaphore,
        concurrency: usize,
        now: Instant,
    ) -> HashMap<String, AwsError> {
        let due: Vec<usize> = (0..accounts.len())
            .filter(|&i| {
                accounts[i].all_enabled_except.is_some()
                    && self.due(
                        self.enabled_regions.get(&accounts[i].key).map(|(_, t)| *t),
                        now,
                    )
            })
            .collect();
        if due.is_empty() {
            return HashMap::new();
        }
        let client = clients.account_api();
        let results: Vec<(usize, Result<Vec<ReportedRegion>, AwsError>)> =
            futures::stream::iter(due)
                .map(|i| {
                    let access = &access[i];
                    async move {
                        let result = async {
                            access.credentials().await?;
                            access.scope(regions::list_regions(client, permits)).await
                        }
                        .await;
                        (i, result)
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        let mut failures = HashMap::new();
        for (i, result) in results {
            let spec = &accounts[i];
            match result {
                Ok(reported) => {
                    self.enabled_regions
                        .insert(spec.key.clone(), (reported, now));
                }
                Err(e) => {
                    let known = self.enabled_regions.contains_key(&spec.key);
                    warn!(
                        account = spec.label(),
                        operation = e.operation,
                        error = %e.kind,
                        detail = %e.message,
                        hint = %e.hint(),
                        keeping_last_known = known,
                        "cannot read the account's enabled regions (regions = \"all\")"
                    );
                    if !known {
                        failures.insert(spec.key.clone(), e);
                    }
                }
            }
        }
        failures
    }
}
