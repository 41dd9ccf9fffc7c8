//! The rollups of a batch, counted in the writer before the batch is stored: one row per
//! (workspace, feature, UTC hour, result, cached, reason) for
//! `entitlements.entitlement_check_rollups`, and one per (workspace, UTC day, result, cached,
//! reason) for `entitlements.entitlement_check_daily`, each with how many checks had that
//! outcome and the last of them. Pure Rust, so the aggregation is unit-tested; the writer
//! adds the groups in the same subtransaction as the rows. Counting here rather than in SQL
//! keeps the rollups' cost per row to a hash-map update, and the SQL statements to one row
//! per group.

use super::record::Record;
use std::collections::HashMap;

/// Microseconds in an hour. PostgreSQL's timestamps count from 2000-01-01 00:00 UTC, a whole
/// hour, so flooring to a multiple of it is the start of the UTC hour.
pub const HOUR_US: i64 = 3_600_000_000;

/// Microseconds in a UTC day (no leap seconds in PostgreSQL's clock).
pub const DAY_US: i64 = 24 * HOUR_US;

/// The start of the UTC hour that `t` (PostgreSQL microseconds) falls in.
pub fn hour_of(t: i64) -> i64 {
    t - t.rem_euclid(HOUR_US)
}

/// The start of the UTC day that `t` falls in (PostgreSQL's epoch is a UTC midnight).
pub fn day_of(t: i64) -> i64 {
    t - t.rem_euclid(DAY_US)
}

/// One rollup row to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<'a> {
    pub workspace_id: [u8; 16],
    /// None for a day group, and for a record whose feature did not decode.
    pub feature: Option<&'a str>,
    /// The start of the group's hour (or day).
    pub start: i64,
    pub result: bool,
    pub cached: bool,
    /// `Reason::ordinal()`, 0 for none.
    pub reason: u8,
    pub checks: i64,
    pub last_checked_at: i64,
}

type Key<'a> = ([u8; 16], Option<&'a str>, i64, bool, bool, u8);

/// Groups with equal keys (workspace, feature, start, result, cached, reason) merged into
/// one: their checks added, the last of them kept; in the order each key first appears.
fn merge<'a>(groups: impl Iterator<Item = Group<'a>>) -> Vec<Group<'a>> {
    let mut index: HashMap<Key<'a>, usize> = HashMap::new();
    let mut merged: Vec<Group<'a>> = Vec::new();
    for g in groups {
        let key = (g.workspace_id, g.feature, g.start, g.result, g.cached, g.reason);
        match index.get(&key) {
            Some(&i) => {
                let m = &mut merged[i];
                m.checks += g.checks;
                m.last_checked_at = m.last_checked_at.max(g.last_checked_at);
            }
            None => {
                index.insert(key, merged.len());
                merged.push(g);
            }
        }
    }
    merged
}

/// The hour groups of `rows`, in the order each group first appears.
pub fn aggregate(rows: &[Record]) -> Vec<Group<'_>> {
    merge(rows.iter().map(|r| Group {
        workspace_id: r.workspace_id,
        feature: r.feature.get(),
        start: hour_of(r.checked_at),
        result: r.result,
        cached: r.cached,
        reason: r.reason,
        checks: 1,
        last_checked_at: r.checked_at,
    }))
}

/// The day groups of hour groups: the same counts by (workspace, UTC day, result, cached,
/// reason), across features.
pub fn days<'a>(hours: &[Group<'a>]) -> Vec<Group<'a>> {
    merge(hours.iter().map(|h| Group { feature: None, start: day_of(h.start), ..h.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::InlineText;

    fn rec(ws: u8, feature: &str, t: i64, result: bool, cached: bool, reason: u8) -> Record {
        Record {
            database_oid: 1,
            result,
            cached,
            reason,
            checked_at: t,
            workspace_id: [ws; 16],
            feature: InlineText::new(Some(feature)),
            user_id: InlineText::new(None),
            user_agent: InlineText::new(None),
            ip_address: InlineText::new(None),
            session_role: InlineText::new(None),
            connection_addr: InlineText::new(None),
            quantity: None.into(),
        }
    }

    #[test]
    fn hours_floor_to_the_utc_hour_before_and_after_2000() {
        assert_eq!(hour_of(0), 0);
        assert_eq!(hour_of(HOUR_US - 1), 0);
        assert_eq!(hour_of(HOUR_US), HOUR_US);
        // Before 2000-01-01: still the start of the hour, not the end.
        assert_eq!(hour_of(-1), -HOUR_US);
        assert_eq!(hour_of(-HOUR_US), -HOUR_US);
    }

    #[test]
    fn equal_outcomes_in_one_hour_make_one_group_with_the_last_time() {
        let rows = [rec(1, "a", 10, true, true, 0), rec(1, "a", 30, true, true, 0), rec(1, "a", 20, true, true, 0)];
        let g = aggregate(&rows);
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].checks, g[0].last_checked_at, g[0].start), (3, 30, 0));
    }

    #[test]
    fn every_key_part_splits_groups() {
        let base = rec(1, "a", 10, false, false, 3);
        let mut variants = vec![base];
        let mut r = base;
        r.workspace_id = [2; 16];
        variants.push(r);
        variants.push(rec(1, "b", 10, false, false, 3));
        variants.push(rec(1, "a", 10 + HOUR_US, false, false, 3));
        variants.push(rec(1, "a", 10, true, false, 0));
        variants.push(rec(1, "a", 10, false, true, 3));
        variants.push(rec(1, "a", 10, false, false, 4));
        let g = aggregate(&variants);
        assert_eq!(g.len(), variants.len());
        assert!(g.iter().all(|g| g.checks == 1));
    }

    /// The property the views rely on: the groups' counts add up to the rows, per key, for
    /// any mix of records.
    #[test]
    fn groups_count_every_row_exactly_once() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let features = ["a", "b", "c"];
        let rows: Vec<Record> = (0..5000)
            .map(|_| {
                let n = next();
                rec(
                    (n % 4) as u8,
                    features[(n >> 8) as usize % 3],
                    ((n >> 16) % (5 * HOUR_US as u64)) as i64 - 2 * HOUR_US,
                    n & (1 << 40) != 0,
                    n & (1 << 41) != 0,
                    ((n >> 42) % 3) as u8,
                )
            })
            .collect();
        let groups = aggregate(&rows);
        assert_eq!(groups.iter().map(|g| g.checks).sum::<i64>(), rows.len() as i64);
        for g in &groups {
            let members: Vec<&Record> = rows
                .iter()
                .filter(|r| {
                    (r.workspace_id, r.feature.get(), hour_of(r.checked_at), r.result, r.cached, r.reason)
                        == (g.workspace_id, g.feature, g.start, g.result, g.cached, g.reason)
                })
                .collect();
            assert_eq!(members.len() as i64, g.checks);
            assert_eq!(members.iter().map(|r| r.checked_at).max(), Some(g.last_checked_at));
        }
        // The day groups, folded from the hour groups, count the same rows by day.
        let days = days(&groups);
        assert_eq!(days.iter().map(|d| d.checks).sum::<i64>(), rows.len() as i64);
        for d in &days {
            let members: Vec<&Record> = rows
                .iter()
                .filter(|r| {
                    (r.workspace_id, day_of(r.checked_at), r.result, r.cached, r.reason)
                        == (d.workspace_id, d.start, d.result, d.cached, d.reason)
                })
                .collect();
            assert_eq!(d.feature, None);
            assert_eq!(members.len() as i64, d.checks);
            assert_eq!(members.iter().map(|r| r.checked_at).max(), Some(d.last_checked_at));
        }
    }

    #[test]
    fn days_floor_to_the_utc_midnight() {
        assert_eq!(day_of(DAY_US - 1), 0);
        assert_eq!(day_of(DAY_US + HOUR_US), DAY_US);
        assert_eq!(day_of(-1), -DAY_US);
    }
}
