//! The audit trail's day partitions over real clusters: the writer creates them ahead, a
//! range can be created across a day (and year) boundary and rows land in their own day,
//! prune_audit drops whole old days and deletes exactly the older rows of the rest, the
//! retention setting prunes from the writer, and a partition addressed directly is as
//! append-only and as closed to members as the parent.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn flush(c: &mut Client) {
    c.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
}

/// The partitions of the trail, by name.
fn partitions(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'entitlements.entitlement_checks'::regclass ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Today's UTC date plus `days`, as the partition suffix (YYYYMMDD).
fn utc_day(c: &mut Client, days: i32) -> String {
    c.query_one("SELECT to_char((now() AT TIME ZONE 'UTC')::date + $1::int4, 'YYYYMMDD')", &[&days]).unwrap().get(0)
}

/// Rows loaded by a superuser into the empty trail (what a restore does), one statement.
fn load(c: &mut Client, values: &str) {
    exec(
        c,
        &format!(
            "INSERT INTO entitlements.entitlement_checks (checked_at, workspace_id, feature, result, cached)
             SELECT t, '99999999-9999-9999-9999-999999999999', 'ccp-01', true, false FROM (VALUES {values}) v(t)"
        ),
    );
}

#[test]
fn the_writer_creates_today_and_the_next_two_days_and_rows_land_in_today() {
    let pg = Cluster::start("part-ahead");
    let mut c = pg.connect();
    assert_eq!(partitions(&mut c), vec!["entitlement_checks_default".to_string()], "the install creates DEFAULT only");
    let ws = new_workspace(&mut c);
    check(&mut c, &ws, "ccp-01");
    flush(&mut c);
    // Three consecutive days from the writer's today (which is today, or yesterday if a
    // midnight passed since).
    let days: Vec<String> = partitions(&mut c).into_iter().filter(|p| p != "entitlement_checks_default").collect();
    let today = utc_day(&mut c, 0);
    let yesterday = utc_day(&mut c, -1);
    let first = if days.first() == Some(&format!("entitlement_checks_p{yesterday}")) { -1 } else { 0 };
    let want: Vec<String> = (first..first + 3).map(|d| format!("entitlement_checks_p{}", utc_day(&mut c, d))).collect();
    assert_eq!(days, want, "today is {today}");
    let home: String = c
        .query_one(&format!("SELECT tableoid::regclass::text FROM entitlements.entitlement_checks WHERE workspace_id = {ws}"), &[])
        .unwrap()
        .get(0);
    // The row's day is the day of the check; a check right at midnight may be stored in the
    // day before's partition, which the writer did not create: then it is in DEFAULT.
    let day_of_row: String = c
        .query_one(
            &format!("SELECT to_char((checked_at AT TIME ZONE 'UTC')::date, 'YYYYMMDD') FROM entitlements.entitlement_checks WHERE workspace_id = {ws}"),
            &[],
        )
        .unwrap()
        .get(0);
    if days.contains(&format!("entitlement_checks_p{day_of_row}")) {
        assert_eq!(home, format!("entitlements.entitlement_checks_p{day_of_row}"));
    } else {
        assert_eq!(home, "entitlements.entitlement_checks_default");
    }
}

#[test]
fn partitions_created_across_a_year_boundary_take_their_own_days_rows() {
    let pg = Cluster::start("part-boundary");
    let mut c = pg.connect();
    assert_eq!(count(&mut c, "SELECT entitlements.create_audit_partitions('2030-12-31', 2)::bigint"), 2);
    // Existing days are skipped.
    assert_eq!(count(&mut c, "SELECT entitlements.create_audit_partitions('2030-12-31', 2)::bigint"), 0);
    load(
        &mut c,
        "('2030-12-31 23:59:59.999999+00'::timestamptz), ('2031-01-01 00:00:00+00'), ('2031-01-01 23:59:59+00'), ('2031-01-02 00:00:00+00')",
    );
    let homes: Vec<(String, String)> = c
        .query(
            "SELECT to_char(checked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), tableoid::regclass::text
               FROM entitlements.entitlement_checks ORDER BY checked_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect = |t: &str, p: &str| (t.to_string(), format!("entitlements.entitlement_checks_{p}"));
    assert_eq!(
        homes,
        vec![
            expect("2030-12-31 23:59:59.999999", "p20301231"),
            expect("2031-01-01 00:00:00.000000", "p20310101"),
            expect("2031-01-01 23:59:59.000000", "p20310101"),
            expect("2031-01-02 00:00:00.000000", "default"),
        ]
    );
    // A day with rows in DEFAULT is not created (PostgreSQL would refuse it); the rows stay.
    assert_eq!(count(&mut c, "SELECT entitlements.create_audit_partitions('2031-01-02', 1)::bigint"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM entitlements.entitlement_checks_default"), 1);
    // Superusers only, granted or not.
    exec(&mut c, "CREATE ROLE dba LOGIN; GRANT USAGE ON SCHEMA entitlements TO dba");
    let mut dba = pg.connect();
    exec(&mut dba, "SET ROLE dba");
    assert_eq!(sqlstate(&mut dba, "SELECT entitlements.create_audit_partitions('2032-01-01', 1)"), "42501");
    exec(&mut c, "GRANT EXECUTE ON FUNCTION entitlements.create_audit_partitions(date, integer) TO dba");
    assert_eq!(sqlstate(&mut dba, "SELECT entitlements.create_audit_partitions('2032-01-01', 1)"), "42501");
}

#[test]
fn prune_drops_whole_old_days_deletes_older_rows_of_the_rest_and_returns_the_count() {
    let pg = Cluster::start("part-prune");
    let mut c = pg.connect();
    exec(&mut c, "SET TimeZone = 'UTC'"); // interval arithmetic in whole days, no DST
    // Days D-3, D-2, D-1 (D: today, UTC); the cut is D-1 06:00.
    exec(&mut c, "SELECT entitlements.create_audit_partitions((now() AT TIME ZONE 'UTC')::date - 3, 3)");
    let at = |day: i32, time: &str| format!("((((now() AT TIME ZONE 'UTC')::date - {day}) + time '{time}') AT TIME ZONE 'UTC')");
    let mut values = Vec::new();
    for (day, time, n) in [(3, "12:00", 2), (2, "12:00", 3), (1, "01:00", 4), (1, "12:00", 5), (10, "12:00", 1), (-400, "12:00", 1)] {
        for _ in 0..n {
            values.push(format!("({})", at(day, time)));
        }
    }
    load(&mut c, &values.join(", "));
    let before: Vec<i64> = c
        .query(&format!("SELECT id FROM entitlements.entitlement_checks WHERE checked_at >= {} ORDER BY id", at(1, "06:00")), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(before.len(), 6);
    let (d3, d2, d1) = (utc_day(&mut c, -3), utc_day(&mut c, -2), utc_day(&mut c, -1));
    assert!(partitions(&mut c).contains(&format!("entitlement_checks_p{d3}")));

    let removed = count(&mut c, &format!("SELECT entitlements.prune_audit(now() - {})", at(1, "06:00")));
    assert_eq!(removed, 2 + 3 + 4 + 1, "rows older than the cut");
    let after: Vec<i64> =
        c.query("SELECT id FROM entitlements.entitlement_checks ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(after, before, "exactly the newer rows are kept");
    let parts = partitions(&mut c);
    assert!(!parts.contains(&format!("entitlement_checks_p{d3}")), "{parts:?}");
    assert!(!parts.contains(&format!("entitlement_checks_p{d2}")), "{parts:?}");
    assert!(parts.contains(&format!("entitlement_checks_p{d1}")), "the straddling day stays: {parts:?}");
    assert!(parts.contains(&"entitlement_checks_default".to_string()));
    assert_eq!(count(&mut c, &format!("SELECT entitlements.prune_audit(now() - {})", at(1, "06:00"))), 0);
}

#[test]
fn the_retention_setting_prunes_from_the_writer() {
    let pg = Cluster::start_with("part-retention", &["pg_entitlements.audit_retention = '2d'"]);
    let mut c = pg.connect();
    let show: String = c.query_one("SHOW pg_entitlements.audit_retention", &[]).unwrap().get(0);
    assert_eq!(show, "2d");
    exec(&mut c, "SELECT entitlements.create_audit_partitions((now() AT TIME ZONE 'UTC')::date - 5, 1)");
    load(&mut c, "(now() - interval '5 days'), (now() - interval '5 days'), (now() - interval '1 day')");
    assert_eq!(count(&mut c, "SELECT count(*) FROM entitlements.entitlement_checks"), 3);
    // The writer's first batch applies the retention in the same transaction.
    let ws = new_workspace(&mut c);
    check(&mut c, &ws, "ccp-01");
    flush(&mut c);
    assert_eq!(count(&mut c, "SELECT count(*) FROM entitlements.entitlement_checks WHERE checked_at < now() - interval '2 days'"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM entitlements.entitlement_checks"), 2, "the newer row and the check stay");
    assert!(pg.log().contains("audit retention removed 2 rows"), "{}", pg.log());
}

#[test]
fn a_partition_addressed_directly_is_append_only_and_closed_to_members() {
    let pg = Cluster::start("part-guard");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!(
        "CREATE ROLE member_role LOGIN; GRANT entitlements_app TO member_role;
         INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice', 'owner');"));
    check(&mut admin, &ws, "ccp-01");
    check(&mut admin, &ws, "ccp-05");
    flush(&mut admin);
    let part: String = admin
        .query_one(&format!("SELECT tableoid::regclass::text FROM entitlements.entitlement_checks WHERE workspace_id = {ws} LIMIT 1"), &[])
        .unwrap()
        .get(0);
    let mut tables = vec![part.clone(), "entitlements.entitlement_checks_default".to_string()];
    tables.dedup();
    for t in &tables {
        let attempts = [
            format!("UPDATE {t} SET result = NOT result"),
            format!("DELETE FROM {t}"),
            format!("TRUNCATE {t}"),
        ];
        for sql in &attempts {
            assert_eq!(sqlstate(&mut admin, sql), "42501", "superuser: {sql}");
        }
        // The guard fires under replication too (ENABLE ALWAYS on every partition).
        exec(&mut admin, "SET session_replication_role = replica");
        for sql in &attempts {
            assert_eq!(sqlstate(&mut admin, sql), "42501", "replica: {sql}");
        }
        exec(&mut admin, "RESET session_replication_role");
    }
    // A superuser INSERT into the partition that has rows is refused too.
    assert_eq!(
        sqlstate(&mut admin, &format!(
            "INSERT INTO {part} (checked_at, workspace_id, feature, result, cached) SELECT checked_at, workspace_id, 'ccp-14', true, false FROM {part} LIMIT 1")),
        "42501"
    );
    assert_eq!(sqlstate(&mut admin, "TRUNCATE entitlements.entitlement_checks"), "42501");
    // A member reads its rows through the parent, and nothing through a partition.
    let mut member = pg.connect();
    exec(&mut member, "SET ROLE member_role; SET pg_entitlements.user_id = 'alice'");
    assert_eq!(count(&mut member, "SELECT count(*) FROM entitlements.entitlement_checks"), 2);
    for t in &tables {
        assert_eq!(sqlstate(&mut member, &format!("SELECT count(*) FROM {t}")), "42501", "member reads {t}");
        assert_eq!(sqlstate(&mut member, &format!("DELETE FROM {t}")), "42501", "member deletes {t}");
    }
    // The partition owner (not a superuser) is refused by the guard as well, and reads
    // nothing directly (forced RLS, no policy on partitions).
    exec(&mut admin, &format!(
        "CREATE ROLE owner_role LOGIN; GRANT USAGE ON SCHEMA entitlements TO owner_role; ALTER TABLE {part} OWNER TO owner_role"));
    let mut owner = pg.connect();
    exec(&mut owner, "SET ROLE owner_role");
    assert_eq!(sqlstate(&mut owner, &format!("DELETE FROM {part}")), "42501");
    assert_eq!(sqlstate(&mut owner, &format!("UPDATE {part} SET result = NOT result")), "42501");
    assert_eq!(count(&mut owner, &format!("SELECT count(*) FROM {part}")), 0, "forced RLS without a policy");
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = {ws}")), 2, "untouched");
}

#[test]
fn retention_behind_a_long_reader_gives_up_and_the_batch_is_still_stored() {
    let pg = Cluster::start_with("part-retention-locked", &["pg_entitlements.audit_retention = '2d'"]);
    let mut c = pg.connect();
    exec(&mut c, "SELECT entitlements.create_audit_partitions((now() AT TIME ZONE 'UTC')::date - 5, 1)");
    load(&mut c, "(now() - interval '5 days')");
    // A reader holds the trail: dropping the old day's partition would have to wait for it.
    let mut reader = pg.connect();
    exec(&mut reader, "BEGIN; SELECT count(*) FROM entitlements.entitlement_checks");
    let ws = new_workspace(&mut c);
    check(&mut c, &ws, "ccp-01");
    flush(&mut c);
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = {ws}")),
        1,
        "the batch is stored although the retention could not run"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM entitlements.entitlement_checks WHERE checked_at < now() - interval '2 days'"), 1);
    assert!(pg.log().contains("audit retention failed, retried in an hour"), "{}", pg.log());
    exec(&mut reader, "COMMIT");
}
