//! When each target starts within a scan round: all at once in the first round (so that
//! `/readyz` comes quickly), spread evenly over the interval in later rounds (so that AWS
//! sees a steady trickle instead of a burst). Pure code.

use std::time::Duration;

use crate::shard::stable_hash;

/// Share of `scan.interval` over which later rounds spread their targets' starts.
pub const SPREAD_SHARE: f64 = 0.8;

/// The window over which a later round spreads its targets: 80% of the interval, and never
/// so late that a target started last could run past the next round's start
/// (`interval - timeout`). Zero (no spreading) when the timeout fills the interval.
pub fn spread_window(interval: Duration, timeout: Duration) -> Duration {
    interval
        .mul_f64(SPREAD_SHARE)
        .min(interval.saturating_sub(timeout))
}

/// Start offset of each target within a round, given one stable key per target (a hash of
/// account and region, see [`target_key`]). Targets are ranked by key and spaced evenly over
/// `window`, so each target keeps about the same slot from round to round (a steady
/// `interval` between two scans of it) and no two targets start together.
pub fn start_offsets(keys: &[u64], window: Duration) -> Vec<Duration> {
    let count = keys.len();
    let mut order: Vec<usize> = (0..count).collect();
    // The index breaks ties, so that equal keys still get distinct slots.
    order.sort_by_key(|&i| (keys[i], i));
    let mut offsets = vec![Duration::ZERO; count];
    if count == 0 || window.is_zero() {
        return offsets;
    }
    let step = window.div_f64(count as f64);
    for (rank, index) in order.into_iter().enumerate() {
        offsets[index] = step.mul_f64(rank as f64);
    }
    offsets
}

/// A stable key for a target: [`stable_hash`] of "account/region". Hashing (rather than
/// keeping configuration order) interleaves accounts and regions, so that one account's
/// regions do not start back to back.
pub fn target_key(account: &str, region: &str) -> u64 {
    stable_hash(account.bytes().chain([b'/']).chain(region.bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(count: usize) -> Vec<u64> {
        (0..count)
            .map(|i| {
                target_key(
                    &format!("{:012}", 100_000_000_000 + i / 3),
                    &format!("r-{}", i % 3),
                )
            })
            .collect()
    }

    #[test]
    fn later_rounds_spread_over_eighty_percent_of_the_interval() {
        let window = spread_window(Duration::from_secs(300), Duration::from_secs(30));
        assert_eq!(window, Duration::from_secs(240));
        let offsets = start_offsets(&keys(1_000), window);
        let last = offsets.iter().max().copied().unwrap_or_default();
        assert!(last < window, "{last:?} must start before {window:?}");
        assert!(
            last > window.mul_f64(0.99),
            "{last:?} should reach the window's end"
        );
    }

    #[test]
    fn spread_leaves_room_for_the_last_target_to_time_out() {
        assert_eq!(
            spread_window(Duration::from_secs(300), Duration::from_secs(120)),
            Duration::from_secs(180)
        );
        assert_eq!(
            spread_window(Duration::from_secs(60), Duration::from_secs(120)),
            Duration::ZERO
        );
    }

    #[test]
    fn starts_are_evenly_spaced_and_distinct() {
        let window = Duration::from_secs(100);
        let mut offsets = start_offsets(&keys(400), window);
        offsets.sort();
        let step = Duration::from_millis(250);
        for pair in offsets.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap.abs_diff(step) < Duration::from_micros(1),
                "gap {gap:?} != {step:?}"
            );
        }
        // Within any tenth of the window, a tenth of the targets start.
        for tenth in 0..10u32 {
            let from = window / 10 * tenth;
            let to = window / 10 * (tenth + 1);
            let n = offsets.iter().filter(|o| **o >= from && **o < to).count();
            assert_eq!(n, 40, "tenth {tenth}");
        }
    }

    #[test]
    fn each_target_keeps_its_slot_from_round_to_round() {
        let k = keys(50);
        let window = Duration::from_secs(240);
        assert_eq!(start_offsets(&k, window), start_offsets(&k, window));
        // The slot follows the target, not its position in the list.
        let mut reversed = k.clone();
        reversed.reverse();
        let mut again = start_offsets(&reversed, window);
        again.reverse();
        assert_eq!(start_offsets(&k, window), again);
    }

    #[test]
    fn one_accounts_regions_do_not_start_back_to_back() {
        let k = keys(300);
        let offsets = start_offsets(&k, Duration::from_secs(300));
        let mut order: Vec<usize> = (0..k.len()).collect();
        order.sort_by_key(|&i| offsets[i]);
        let adjacent_same_account = order.windows(2).filter(|p| p[0] / 3 == p[1] / 3).count();
        assert!(adjacent_same_account < 10, "{adjacent_same_account}");
    }

    #[test]
    fn zero_window_starts_everything_at_once() {
        assert!(
            start_offsets(&keys(10), Duration::ZERO)
                .iter()
                .all(|o| o.is_zero())
        );
        assert!(start_offsets(&[], Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn equal_keys_still_get_distinct_slots() {
        let offsets = start_offsets(&[7, 7, 7, 7], Duration::from_secs(4));
        assert_eq!(offsets, [0, 1, 2, 3].map(Duration::from_secs).to_vec());
    }
}
