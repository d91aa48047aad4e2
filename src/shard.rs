//! Horizontal sharding, the way kube-state-metrics does it: each replica (`--shard N
//! --total-shards M`) scans only the accounts that a jump consistent hash of the account ID
//! assigns to it, all regions of an account together. Pure code.
//!
//! An account whose ID is not known before it is scanned (the default credentials' account
//! without `account_id`) belongs to shard 0, so that exactly one replica scans it.

use std::fmt;

use crate::config::{AccountId, Config};
use crate::targets::{AccountSpec, Plan};

/// Which part of the accounts this replica owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    ordinal: u32,
    total: u32,
}

/// A shard assignment that cannot be.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("total_shards is 0; use 1 (no sharding) or the number of replicas")]
    NoShards,
    #[error(
        "shard {ordinal} does not exist with total_shards {total}; shards are numbered 0 to {}",
        total - 1
    )]
    OutOfRange { ordinal: u32, total: u32 },
}

impl Shard {
    /// The only shard of an unsharded exporter.
    pub const ALL: Shard = Shard {
        ordinal: 0,
        total: 1,
    };

    pub fn new(ordinal: u32, total: u32) -> Result<Shard, ShardError> {
        if total == 0 {
            Err(ShardError::NoShards)
        } else if ordinal >= total {
            Err(ShardError::OutOfRange { ordinal, total })
        } else {
            Ok(Shard { ordinal, total })
        }
    }

    pub fn ordinal(self) -> u32 {
        self.ordinal
    }

    pub fn total(self) -> u32 {
        self.total
    }

    /// True when this shard scans the account. `None`: the ID is learned only while
    /// scanning (default credentials), and shard 0 owns it.
    pub fn owns(self, account: Option<&AccountId>) -> bool {
        match account {
            Some(id) => shard_of(id, self.total) == self.ordinal,
            None => self.ordinal == 0,
        }
    }

    /// The plan restricted to the accounts this shard owns, with all their regions.
    pub fn restrict(self, plan: Plan) -> Plan {
        let mut accounts = plan.accounts;
        self.retain_owned(&mut accounts);
        Plan::expand(accounts)
    }

    /// Drops the accounts this shard does not own.
    pub fn retain_owned(self, accounts: &mut Vec<AccountSpec>) {
        accounts.retain(|a| self.owns(a.known_id.as_ref()));
    }
}

/// `--shard` and `--total-shards` (or `--shard-from-hostname`): they beat the configuration,
/// also when it is reloaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardFlags {
    pub shard: Option<u32>,
    pub total_shards: Option<u32>,
}

impl ShardFlags {
    pub fn apply(self, config: &mut Config) {
        if let Some(shard) = self.shard {
            config.shard = shard;
        }
        if let Some(total) = self.total_shards {
            config.total_shards = total;
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {}", self.ordinal, self.total)
    }
}

/// The shard (0..`total`) that owns `account`: jump consistent hash (Lamping & Veach, 2014)
/// of [`stable_hash`] of the 12 digits. Growing from M to M+1 shards moves only the accounts
/// that the new shard takes over, about 1/(M+1) of them. Changing this function reshuffles
/// every sharded deployment: keep it stable.
pub fn shard_of(account: &AccountId, total: u32) -> u32 {
    jump_consistent_hash(stable_hash(account.0.bytes()), total)
}

/// A 64-bit hash that is the same on every platform and release (std's hasher is seeded at
/// random): FNV-1a, then MurmurHash3's finalizer so that inputs differing only in their last
/// byte land far apart.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// Lamping & Veach's jump consistent hash: a bucket in 0..`buckets` (0 when `buckets` is 0).
fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(buckets) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket.max(0) as u32
}

/// The ordinal at the end of a StatefulSet pod's hostname (`app-tier-cmk-exporter-2` -> 2).
pub fn ordinal_from_hostname(hostname: &str) -> Option<u32> {
    let hostname = hostname.trim();
    // A FQDN (pod.service.namespace...) keeps the pod name first.
    let name = hostname.split('.').next().unwrap_or(hostname);
    let (_, digits) = name.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Region;

    /// Deterministic 12-digit account IDs (xorshift64*), so that the figures are stable.
    fn account_ids(count: usize) -> Vec<AccountId> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..count)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let n = state.wrapping_mul(0x2545_f491_4f6c_dd1d) % 1_000_000_000_000;
                AccountId::parse(&format!("{n:012}")).expect("12 digits")
            })
            .collect()
    }

    #[test]
    fn every_account_lands_on_exactly_one_shard() {
        let ids = account_ids(2_000);
        for total in 1..=12 {
            for id in &ids {
                let owners = (0..total)
                    .filter(|&n| Shard::new(n, total).expect("valid").owns(Some(id)))
                    .count();
                assert_eq!(owners, 1, "account {id} with {total} shards");
            }
        }
    }

    #[test]
    fn growing_by_one_shard_moves_about_one_share_of_the_accounts() {
        let ids = account_ids(10_000);
        for total in 1..=16u32 {
            let moved: Vec<&AccountId> = ids
                .iter()
                .filter(|id| shard_of(id, total) != shard_of(id, total + 1))
                .collect();
            let expected = ids.len() as f64 / f64::from(total + 1);
            let ratio = moved.len() as f64 / expected;
            assert!(
                (0.8..=1.2).contains(&ratio),
                "{total} -> {} shards moved {} accounts, expected about {expected:.0}",
                total + 1,
                moved.len()
            );
            // Consistent: what moves, moves to the new shard only.
            assert!(moved.iter().all(|id| shard_of(id, total + 1) == total));
        }
    }

    #[test]
    fn accounts_spread_evenly_over_the_shards() {
        let ids = account_ids(10_000);
        for total in [2u32, 3, 5, 8] {
            let mut counts = vec![0usize; total as usize];
            for id in &ids {
                counts[shard_of(id, total) as usize] += 1;
            }
            let expected = ids.len() as f64 / f64::from(total);
            for (shard, n) in counts.iter().enumerate() {
                let ratio = *n as f64 / expected;
                assert!(
                    (0.9..=1.1).contains(&ratio),
                    "shard {shard} of {total} holds {n}, expected about {expected:.0}"
                );
            }
        }
    }

    #[test]
    fn assignment_is_stable_across_releases() {
        // Pinned: a change here reshuffles every sharded deployment.
        let pinned: Vec<u32> = [
            "123456789012",
            "111111111111",
            "000000000001",
            "999999999999",
        ]
        .iter()
        .map(|id| shard_of(&AccountId::parse(id).expect("id"), 10))
        .collect();
        assert_eq!(pinned, [1, 1, 2, 2]);
    }

    #[test]
    fn jump_hash_matches_the_reference_vectors() {
        // Lamping & Veach's reference implementation gives these.
        assert_eq!(jump_consistent_hash(256, 1024), 520);
        assert_eq!(jump_consistent_hash(0xDEAD_10CC, 666), 361);
        assert_eq!(jump_consistent_hash(42, 57), 43);
        assert_eq!(jump_consistent_hash(7, 1), 0);
    }

    #[test]
    fn invalid_assignments_are_refused() {
        assert_eq!(Shard::new(0, 0), Err(ShardError::NoShards));
        assert_eq!(
            Shard::new(3, 3),
            Err(ShardError::OutOfRange {
                ordinal: 3,
                total: 3
            })
        );
        assert!(
            ShardError::OutOfRange {
                ordinal: 3,
                total: 3
            }
            .to_string()
            .contains("0 to 2")
        );
        assert_eq!(Shard::new(2, 3).map(Shard::ordinal), Ok(2));
    }

    #[test]
    fn account_without_known_id_belongs_to_shard_zero() {
        assert!(Shard::new(0, 4).expect("valid").owns(None));
        assert!(!Shard::new(1, 4).expect("valid").owns(None));
    }

    #[test]
    fn restricting_a_plan_keeps_owned_accounts_with_all_their_regions() {
        let ids = account_ids(20);
        let regions = [
            Region::parse("us-east-1").expect("r"),
            Region::parse("eu-west-1").expect("r"),
        ];
        let accounts: Vec<AccountSpec> = ids
            .iter()
            .map(|id| AccountSpec {
                key: id.0.clone(),
                name: None,
                known_id: Some(id.clone()),
                role_arn: None,
                external_id: None,
                session_duration: None,
                regions: regions.to_vec(),
                all_enabled_except: None,
                from_organization: true,
            })
            .collect();
        let plan = Plan::expand(accounts);
        let mut seen = 0;
        for ordinal in 0..3 {
            let part = Shard::new(ordinal, 3)
                .expect("valid")
                .restrict(plan.clone());
            assert_eq!(part.targets.len(), part.accounts.len() * 2);
            for target in &part.targets {
                let id = part.accounts[target.account].known_id.as_ref().expect("id");
                assert_eq!(shard_of(id, 3), ordinal);
            }
            seen += part.accounts.len();
        }
        assert_eq!(seen, 20);
    }

    #[test]
    fn statefulset_hostnames_give_their_ordinal() {
        assert_eq!(ordinal_from_hostname("app-tier-cmk-exporter-0"), Some(0));
        assert_eq!(
            ordinal_from_hostname("app-tier-cmk-exporter-12\n"),
            Some(12)
        );
        assert_eq!(
            ordinal_from_hostname("exporter-3.exporter.monitoring.svc.cluster.local"),
            Some(3)
        );
        assert_eq!(ordinal_from_hostname("exporter"), None);
        assert_eq!(ordinal_from_hostname("exporter-7f9c8d"), None);
        assert_eq!(ordinal_from_hostname("exporter-"), None);
    }
}
