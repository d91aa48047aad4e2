//! The exporter's state: what the last scans found, per target. Written by the scanner,
//! read by the metrics renderer and the one-shot report. Plain data, no I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::config::{AccountId, Region};
use crate::error::{AwsError, ErrorKind};
use crate::evaluate::Verdict;
use crate::targets::Plan;

/// Label value of `account` while the account ID is not known yet.
pub const UNKNOWN_ACCOUNT: &str = "unknown";

#[derive(Clone, Debug, PartialEq)]
pub struct AccountView {
    /// Identity across re-plans ([`crate::targets::AccountSpec::key`]).
    pub key: String,
    pub id: Option<AccountId>,
    pub name: Option<String>,
}

impl AccountView {
    pub fn label(&self) -> &str {
        self.id.as_ref().map_or(UNKNOWN_ACCOUNT, |id| id.0.as_str())
    }
}

/// What is known of one target.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetState {
    pub account: usize,
    pub region: Region,
    /// At least one scan finished (success or not).
    pub scanned: bool,
    /// The last scan succeeded.
    pub last_scan_ok: bool,
    pub last_duration_seconds: f64,
    pub last_success_timestamp: Option<f64>,
    /// From the last successful scan: kept when a later scan fails.
    pub verdict: Option<Verdict>,
    pub errors_total: BTreeMap<ErrorKind, u64>,
    /// Why the last scan failed, for the one-shot report.
    pub last_error: Option<AwsError>,
}

/// The last reads of the organization's account list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OrganizationView {
    /// The last ListAccounts succeeded; `None` before the first attempt.
    pub refresh_ok: Option<bool>,
    /// Accounts taken from the last successful list (after include/exclude).
    pub accounts: usize,
    pub last_success_timestamp: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub accounts: Vec<AccountView>,
    pub targets: Vec<TargetState>,
    /// Bumped on every change, so that renderers can cache.
    pub generation: u64,
    /// Accounts or regions are still to be discovered (organization, `regions = "all"`)
    /// before the target list is complete.
    pub pending_discovery: bool,
    /// Present when an organization is configured.
    pub organization: Option<OrganizationView>,
}

fn fresh_target(account: usize, region: Region) -> TargetState {
    TargetState {
        account,
        region,
        scanned: false,
        last_scan_ok: false,
        last_duration_seconds: 0.0,
        last_success_timestamp: None,
        verdict: None,
        errors_total: BTreeMap::new(),
        last_error: None,
    }
}

impl Snapshot {
    pub fn new(plan: &Plan) -> Snapshot {
        Snapshot {
            accounts: plan
                .accounts
                .iter()
                .map(|a| AccountView {
                    key: a.key.clone(),
                    id: a.known_id.clone(),
                    name: a.name.clone(),
                })
                .collect(),
            targets: plan
                .targets
                .iter()
                .map(|t| fresh_target(t.account, t.region.clone()))
                .collect(),
            generation: 0,
            pending_discovery: false,
            organization: None,
        }
    }

    /// Lays the snapshot out for a new plan: targets that stay keep their state, removed
    /// accounts and targets disappear (with their series), new ones start unscanned.
    pub fn apply_plan(&mut self, plan: &Plan) {
        let mut old_targets: HashMap<(String, Region), TargetState> = HashMap::new();
        for target in self.targets.drain(..) {
            if let Some(account) = self.accounts.get(target.account) {
                old_targets.insert((account.key.clone(), target.region.clone()), target);
            }
        }
        let old_accounts: HashMap<String, AccountView> = self
            .accounts
            .drain(..)
            .map(|a| (a.key.clone(), a))
            .collect();
        self.accounts = plan
            .accounts
            .iter()
            .map(|spec| AccountView {
                key: spec.key.clone(),
                // A learned ID stays; a known one (role ARN, organization) wins.
                id: spec
                    .known_id
                    .clone()
                    .or_else(|| old_accounts.get(&spec.key).and_then(|a| a.id.clone())),
                name: spec.name.clone(),
            })
            .collect();
        self.targets = plan
            .targets
            .iter()
            .map(|t| {
                let key = (plan.accounts[t.account].key.clone(), t.region.clone());
                match old_targets.remove(&key) {
                    Some(mut state) => {
                        state.account = t.account;
                        state
                    }
                    None => fresh_target(t.account, t.region.clone()),
                }
            })
            .collect();
        self.pending_discovery = false;
        self.generation += 1;
    }

    /// Records a read of the organization's account list.
    pub fn record_organization_refresh(&mut self, ok: bool, accounts: usize, now: f64) {
        let view = self.organization.get_or_insert_with(Default::default);
        view.refresh_ok = Some(ok);
        if ok {
            view.accounts = accounts;
            view.last_success_timestamp = Some(now);
        }
        self.generation += 1;
    }

    pub fn set_account_id(&mut self, account: usize, id: AccountId) {
        if let Some(view) = self.accounts.get_mut(account)
            && view.id.as_ref() != Some(&id)
        {
            view.id = Some(id);
            self.generation += 1;
        }
    }

    /// A scan that finished; `soft_errors` were counted without failing it.
    pub fn record_success(
        &mut self,
        target: usize,
        verdict: Verdict,
        soft_errors: &[AwsError],
        duration_seconds: f64,
        now: f64,
    ) {
        let Some(state) = self.targets.get_mut(target) else {
            return;
        };
        state.scanned = true;
        state.last_scan_ok = true;
        state.last_duration_seconds = duration_seconds;
        state.last_success_timestamp = Some(now);
        state.verdict = Some(verdict);
        state.last_error = None;
        for e in soft_errors {
            *state.errors_total.entry(e.kind).or_insert(0) += 1;
        }
        self.generation += 1;
    }

    /// A scan that failed: the last known verdict stays.
    pub fn record_failure(&mut self, target: usize, error: AwsError, duration_seconds: f64) {
        let Some(state) = self.targets.get_mut(target) else {
            return;
        };
        state.scanned = true;
        state.last_scan_ok = false;
        state.last_duration_seconds = duration_seconds;
        *state.errors_total.entry(error.kind).or_insert(0) += 1;
        state.last_error = Some(error);
        self.generation += 1;
    }

    /// Discovery settled and every current target was scanned at least once.
    pub fn all_scanned(&self) -> bool {
        !self.pending_discovery && self.targets.iter().all(|t| t.scanned)
    }
}

/// The snapshot shared between the scanner (writer) and the HTTP server (readers).
#[derive(Clone, Debug)]
pub struct SharedSnapshot(Arc<RwLock<Snapshot>>);

impl SharedSnapshot {
    pub fn new(snapshot: Snapshot) -> SharedSnapshot {
        SharedSnapshot(Arc::new(RwLock::new(snapshot)))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        // A writer that panicked left plain data behind; reading it is still sound.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Snapshot> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::evaluate::{Matcher, evaluate};
    use crate::targets::plan;

    fn snapshot() -> Snapshot {
        let config = Config {
            regions: vec![
                Region::parse("us-east-1").expect("r"),
                Region::parse("eu-west-1").expect("r"),
            ]
            .into(),
            ..Config::default()
        };
        Snapshot::new(&plan(&config, None).expect("plan"))
    }

    fn verdict() -> Verdict {
        evaluate(
            &[],
            &Matcher::new("app_tier", &[], false, &["Enabled".into()]),
        )
    }

    #[test]
    fn failure_keeps_the_last_verdict() {
        let mut s = snapshot();
        s.record_success(0, verdict(), &[], 0.5, 100.0);
        s.record_failure(
            0,
            AwsError::new("ListKeys", ErrorKind::Network, "refused"),
            0.1,
        );
        let t = &s.targets[0];
        assert!(!t.last_scan_ok);
        assert!(t.verdict.is_some());
        assert_eq!(t.last_success_timestamp, Some(100.0));
        assert_eq!(t.errors_total[&ErrorKind::Network], 1);
    }

    #[test]
    fn ready_only_when_every_target_was_scanned() {
        let mut s = snapshot();
        assert!(!s.all_scanned());
        s.record_failure(0, AwsError::new("ListKeys", ErrorKind::Network, "x"), 0.1);
        assert!(!s.all_scanned());
        s.record_success(1, verdict(), &[], 0.1, 1.0);
        assert!(s.all_scanned());
    }

    #[test]
    fn generation_moves_on_every_change() {
        let mut s = snapshot();
        let g = s.generation;
        s.set_account_id(0, AccountId::parse("123456789012").expect("id"));
        assert!(s.generation > g);
        let g = s.generation;
        s.set_account_id(0, AccountId::parse("123456789012").expect("id"));
        assert_eq!(s.generation, g, "same id: no change");
        assert_eq!(s.accounts[0].label(), "123456789012");
    }

    fn spec(key: &str, regions: &[&str]) -> crate::targets::AccountSpec {
        crate::targets::AccountSpec {
            key: key.to_owned(),
            name: Some(key.to_owned()),
            known_id: None,
            role_arn: None,
            external_id: None,
            session_duration: None,
            regions: regions
                .iter()
                .map(|r| Region::parse(r).expect("r"))
                .collect(),
            all_enabled_except: None,
            from_organization: true,
        }
    }

    #[test]
    fn new_plan_keeps_state_of_remaining_targets_and_drops_the_others() {
        let plan1 = Plan::expand(vec![
            spec("a", &["us-east-1", "eu-west-1"]),
            spec("b", &["us-east-1"]),
        ]);
        let mut s = Snapshot::new(&plan1);
        s.set_account_id(0, AccountId::parse("111111111111").expect("id"));
        s.record_success(1, verdict(), &[], 0.1, 5.0);
        s.record_success(2, verdict(), &[], 0.1, 5.0);
        let g = s.generation;
        let plan2 = Plan::expand(vec![spec("c", &["us-west-2"]), spec("a", &["eu-west-1"])]);
        s.apply_plan(&plan2);
        assert!(s.generation > g);
        assert_eq!(s.accounts.len(), 2);
        assert_eq!(s.accounts[1].key, "a");
        assert_eq!(s.accounts[1].label(), "111111111111", "learned ID is kept");
        assert_eq!(s.targets.len(), 2);
        assert!(!s.targets[0].scanned, "new target starts unscanned");
        assert_eq!(s.targets[1].account, 1);
        assert_eq!(s.targets[1].last_success_timestamp, Some(5.0));
        assert!(!s.all_scanned());
    }

    #[test]
    fn pending_discovery_blocks_readiness_until_a_plan_is_applied() {
        let mut s = Snapshot::new(&Plan::expand(vec![]));
        s.pending_discovery = true;
        assert!(!s.all_scanned());
        s.apply_plan(&Plan::expand(vec![]));
        assert!(s.all_scanned());
    }

    #[test]
    fn soft_errors_are_counted_on_success() {
        let mut s = snapshot();
        let e = AwsError::new("DescribeKey", ErrorKind::AccessDenied, "denied");
        s.record_success(0, verdict(), &[e.clone(), e], 0.1, 1.0);
        assert_eq!(s.targets[0].errors_total[&ErrorKind::AccessDenied], 2);
        assert!(s.targets[0].last_scan_ok);
    }
}
