//! Configuration reload (SIGHUP, `POST /-/reload`): the request type, the reload gauges named
//! like Prometheus' own, and the carry-over of what is known about targets that stay.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntGauge};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::targets::{AccountSpec, Plan};

/// One reload request; `reply` (from `/-/reload`) gets the outcome.
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: Option<oneshot::Sender<Result<(), String>>>,
}

/// `app_tier_cmk_config_last_reload_successful` and `..._success_timestamp_seconds`.
pub struct ReloadMetrics {
    successful: IntGauge,
    success_timestamp: Gauge,
}

impl ReloadMetrics {
    /// Registers the gauges; the configuration loaded at start counts as a successful load.
    pub fn register(metrics: &Metrics) -> ReloadMetrics {
        let successful = IntGauge::new(
            "app_tier_cmk_config_last_reload_successful",
            "1 when the last configuration (re)load succeeded, else 0 (the previous configuration stays in force).",
        )
        .expect("static metric definition is valid");
        let success_timestamp = Gauge::new(
            "app_tier_cmk_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load.",
        )
        .expect("static metric definition is valid");
        metrics.register(Box::new(successful.clone()));
        metrics.register(Box::new(success_timestamp.clone()));
        let gauges = ReloadMetrics {
            successful,
            success_timestamp,
        };
        gauges.succeeded();
        gauges
    }

    pub fn succeeded(&self) {
        self.successful.set(1);
        self.success_timestamp.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
    }

    pub fn failed(&self) {
        self.successful.set(0);
    }
}

/// What makes an account the same across configurations: its role, or the default credentials.
fn identity(spec: &AccountSpec) -> String {
    spec.role_arn.as_ref().map_or_else(
        || "default credentials".to_owned(),
        |r| r.as_str().to_owned(),
    )
}

/// The snapshot for `new_plan`, keeping the state of every (account, region) that both plans
/// share: values, errors and readiness survive a reload, removed targets' series disappear.
pub fn carry_over(old_plan: &Plan, old: &Snapshot, new_plan: &Plan) -> Snapshot {
    let mut next = Snapshot::new(new_plan);
    next.generation = old.generation + 1;
    let old_accounts: HashMap<String, usize> = old_plan
        .accounts
        .iter()
        .enumerate()
        .map(|(i, spec)| (identity(spec), i))
        .collect();
    let mut account_map = HashMap::new();
    for (new_index, spec) in new_plan.accounts.iter().enumerate() {
        let Some(&old_index) = old_accounts.get(&identity(spec)) else {
            continue;
        };
        account_map.insert(old_index, new_index);
        if let (Some(view), Some(old_view)) = (
            next.accounts.get_mut(new_index),
            old.accounts.get(old_index),
        ) && view.id.is_none()
        {
            // A learned ID (GetCallerIdentity) need not be asked again.
            view.id = old_view.id.clone();
        }
    }
    for target in &mut next.targets {
        let kept = old.targets.iter().find(|t| {
            t.region == target.region && account_map.get(&t.account) == Some(&target.account)
        });
        if let Some(kept) = kept {
            let account = target.account;
            *target = kept.clone();
            target.account = account;
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccountConfig, Config, Region, RoleArn};
    use crate::error::{AwsError, ErrorKind};
    use crate::targets::plan;

    fn config(accounts: &[(&str, &[&str])]) -> Config {
        Config {
            accounts: accounts
                .iter()
                .map(|(account, regions)| AccountConfig {
                    role_arn: Some(
                        RoleArn::try_from(format!("arn:aws:iam::{account}:role/r")).expect("arn"),
                    ),
                    regions: Some(
                        regions
                            .iter()
                            .map(|r| Region::parse(r).expect("region"))
                            .collect(),
                    ),
                    ..AccountConfig::default()
                })
                .collect(),
            ..Config::default()
        }
    }

    #[test]
    fn kept_targets_keep_their_state_and_removed_ones_go() {
        let old_plan = plan(
            &config(&[
                ("111111111111", &["us-east-1", "eu-west-1"]),
                ("222222222222", &["us-east-1"]),
            ]),
            None,
        )
        .expect("plan");
        let mut old = Snapshot::new(&old_plan);
        for i in 0..old.targets.len() {
            old.record_failure(i, AwsError::new("ListKeys", ErrorKind::Network, "x"), 0.5);
        }
        // Account 222... moves to the front, 111... loses eu-west-1, 333... is new.
        let new_plan = plan(
            &config(&[
                ("222222222222", &["us-east-1"]),
                ("111111111111", &["us-east-1"]),
                ("333333333333", &["us-east-1"]),
            ]),
            None,
        )
        .expect("plan");
        let next = carry_over(&old_plan, &old, &new_plan);
        assert_eq!(next.targets.len(), 3);
        assert!(next.generation > old.generation);
        for (i, scanned) in [(0, true), (1, true), (2, false)] {
            assert_eq!(next.targets[i].scanned, scanned, "target {i}");
            assert_eq!(
                next.targets[i].account, i,
                "target {i} points at its new account"
            );
        }
        assert_eq!(next.targets[0].errors_total[&ErrorKind::Network], 1);
        assert_eq!(next.accounts[0].label(), "222222222222");
    }
}
