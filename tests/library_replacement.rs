//! Replacing the installed library under a running server, as every package upgrade does.
//! Installed atomically (a new file renamed over the old one, scripts/install.sh), the server
//! keeps serving with the build it loaded, in old and new connections, with its audit writer
//! busy, and loads the new build at its next restart; `library_version()` tells which runs.
//! Written over in place (what `cp` does), the same bytes crash the server: that test runs on a
//! private copy of the PostgreSQL install, so no other server can be hit.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The build stamp of src/build_info.rs: the marker, then this many bytes of text padded with NUL.
const MARKER: &[u8] = b"PGENT-BUILD:";
const STAMP_TEXT_LEN: usize = 52;

const AUDIT_DB: &str = "pg_entitlements.audit_database = 'app'";

fn marker_offset(library: &[u8]) -> usize {
    let found: Vec<usize> =
        library.windows(MARKER.len()).enumerate().filter(|(_, w)| *w == MARKER).map(|(i, _)| i).collect();
    assert_eq!(found.len(), 1, "the library carries exactly one build stamp");
    found[0] + MARKER.len()
}

/// What the file on disk says: the check a DBA makes after an upgrade.
fn stamp_of(library: &[u8]) -> String {
    let text = &library[marker_offset(library)..][..STAMP_TEXT_LEN];
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    String::from_utf8(text[..end].to_vec()).unwrap()
}

/// The same library with another stamp: "a different build", byte for byte the same length.
fn restamped(library: &[u8], stamp: &str) -> Vec<u8> {
    assert!(stamp.len() <= STAMP_TEXT_LEN);
    let mut out = library.to_vec();
    let at = marker_offset(library);
    out[at..at + STAMP_TEXT_LEN].fill(0);
    out[at..at + stamp.len()].copy_from_slice(stamp.as_bytes());
    out
}

/// (version, build) that the backend behind `c` runs.
fn library_version(c: &mut Client) -> (String, String) {
    let row = c.query_one("SELECT version, build FROM entitlements.library_version()", &[]).unwrap();
    (row.get(0), row.get(1))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Another build installed over the library in the tests' PostgreSQL, atomically, for as long as
/// this lives; dropping it (also when the test fails) renames the original file back.
struct Replaced {
    installed: PathBuf,
    original: PathBuf,
}

impl Replaced {
    fn install(installed: &Path, library: &[u8]) -> Replaced {
        // A second name for the original file (same inode), so putting it back is one rename.
        let original = installed.with_file_name(format!(".pg_entitlements.so.original-{}", std::process::id()));
        let _ = fs::remove_file(&original);
        fs::hard_link(installed, &original).unwrap();
        let replaced = Replaced { installed: installed.to_owned(), original };
        // What scripts/install.sh does: a temporary in the same directory, renamed over.
        let tmp = installed.with_file_name(format!(".pg_entitlements.so.new-{}", std::process::id()));
        fs::write(&tmp, library).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&tmp, installed).unwrap();
        replaced
    }
}

impl Drop for Replaced {
    fn drop(&mut self) {
        if let Err(e) = fs::rename(&self.original, &self.installed) {
            eprintln!("could not put {} back from {}: {e}", self.installed.display(), self.original.display());
        }
    }
}

/// A connection doing audited checks in a loop until told to stop; counts them, and returns
/// the first error (a crash shows up here as a lost connection).
struct BusyChecker {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<u64, String>>,
}

impl BusyChecker {
    fn start(pg: &Cluster, ws: &uuid_string::Ws) -> BusyChecker {
        let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let mut c = pg.connect();
        let sql = format!("SELECT enabled FROM entitlements.entitlement_check({ws}, 'ccp-05')");
        let (stop2, done2) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let enabled: bool = c.query_one(&sql, &[]).map_err(|e| e.to_string())?.get(0);
                if !enabled {
                    return Err("a pro workspace lost ccp-05".into());
                }
                done2.fetch_add(1, Ordering::Relaxed);
            }
            Ok(done2.load(Ordering::Relaxed))
        });
        BusyChecker { stop, done, thread }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Let it do `n` more checks (or fail trying).
    fn wait_for_more(&self, n: u64) {
        let target = self.done() + n;
        wait_for("more checks from the busy connection", || self.done() >= target || self.thread.is_finished());
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap().unwrap_or_else(|e| panic!("the busy connection failed: {e}"))
    }
}

fn written(c: &mut Client) -> i64 {
    c.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
    c.query_one("SELECT written FROM entitlements.audit_statistics()", &[]).unwrap().get(0)
}

fn rows_for(c: &mut Client, ws: &uuid_string::Ws) -> i64 {
    c.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
    c.query_one(&format!("SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = {ws}"), &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_running_server_keeps_its_build_when_the_library_is_replaced_and_loads_the_new_one_at_restart() {
    let pg = Cluster::start_with("libswap", &[AUDIT_DB]);
    let installed = pkglibdir().join("pg_entitlements.so");
    let original_library = fs::read(&installed).unwrap();
    let old_build = stamp_of(&original_library);

    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    assert_eq!(
        library_version(&mut c),
        (env!("CARGO_PKG_VERSION").to_owned(), old_build.clone()),
        "a fresh server runs the build on disk"
    );

    let busy = BusyChecker::start(&pg, &ws);
    busy.wait_for_more(200);
    let written_before = written(&mut c);
    assert!(written_before > 0, "the audit writer is at work before the replacement");

    let new_build = format!("replacement-test-{}", std::process::id());
    let replaced = Replaced::install(&installed, &restamped(&original_library, &new_build));
    let on_disk = fs::read(&installed).unwrap();
    assert_eq!(stamp_of(&on_disk), new_build);
    assert_ne!(fs::metadata(&installed).unwrap().ino(), fs::metadata(&replaced.original).unwrap().ino());

    busy.wait_for_more(500);
    assert_eq!(check(&mut c, &ws, "ccp-05"), (true, None), "a connection from before answers");
    for _ in 0..5 {
        let mut fresh = pg.connect();
        assert_eq!(check(&mut fresh, &ws, "ccp-05"), (true, None), "a new connection answers");
        assert_eq!(library_version(&mut fresh).1, old_build, "a new backend runs the build the server loaded");
    }
    assert_ne!(library_version(&mut c).1, stamp_of(&on_disk), "a DBA sees the restart pending");
    let busy_checks = busy.finish();
    assert!(written(&mut c) > written_before, "audit records keep arriving after the replacement");
    // Every check made on the workspace is in the trail: the busy loop's, and 1 + 5 here.
    assert_eq!(rows_for(&mut c, &ws), busy_checks as i64 + 6);
    assert_eq!(pg.crash_restarts(), 0, "no crash:\n{}", pg.log());
    assert!(!pg.log().contains("terminated by signal"), "{}", pg.log());
    assert!(!pg.log().contains("attempt to redefine parameter"), "{}", pg.log());
    drop(c);

    pg.restart();
    let mut c = pg.connect();
    assert_eq!(library_version(&mut c).1, new_build, "the restart loads the build on disk");
    assert_eq!(check(&mut c, &ws, "ccp-05"), (true, None));
    drop(replaced);
    assert_eq!(stamp_of(&fs::read(&installed).unwrap()), old_build, "the original is back for other tests");
}

#[test]
fn an_installed_0_1_0_updates_to_the_current_version_and_gains_library_version() {
    let pg = Cluster::init("libswap-update", &[]);
    pg.connect_db("postgres").batch_execute("CREATE DATABASE app").unwrap();
    let mut c = pg.connect();
    exec(&mut c, "CREATE EXTENSION pg_entitlements VERSION '0.1.0'");
    assert_eq!(sqlstate(&mut c, "SELECT * FROM entitlements.library_version()"), "42883");
    exec(&mut c, "ALTER EXTENSION pg_entitlements UPDATE");
    let version: String =
        c.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_entitlements'", &[]).unwrap().get(0);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(library_version(&mut c).0, env!("CARGO_PKG_VERSION"));
}

/// A copy of the tests' PostgreSQL install (binaries, libraries, share) that only one cluster
/// runs from; removed on drop.
struct PrivateInstall {
    root: PathBuf,
    pg_config: PathBuf,
}

impl PrivateInstall {
    fn copy() -> PrivateInstall {
        let dirs: Vec<PathBuf> =
            ["--bindir", "--pkglibdir", "--sharedir"].iter().map(|d| pg_config_dir(pg_config(), d)).collect();
        // PostgreSQL finds its lib and share directories relative to its binaries: keep the layout
        // below the deepest directory the three share.
        let mut prefix = dirs[0].clone();
        while !dirs.iter().all(|d| d.starts_with(&prefix)) {
            assert!(prefix.pop());
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/it/pg-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for dir in &dirs {
            let dest = root.join(dir.strip_prefix(&prefix).unwrap());
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let ok = Command::new("cp").arg("-a").arg(dir).arg(&dest).status().unwrap().success();
            assert!(ok, "cp -a {} {}", dir.display(), dest.display());
        }
        let pg_config = root.join(dirs[0].strip_prefix(&prefix).unwrap()).join("pg_config");
        let reach = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg_can_reach.sh");
        assert!(Command::new("bash").arg(reach).arg(&root).status().unwrap().success());
        PrivateInstall { root, pg_config }
    }
}

impl Drop for PrivateInstall {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

#[test]
fn writing_over_the_installed_library_in_place_crashes_a_running_server() {
    let install = PrivateInstall::copy();
    let pg = Cluster::init_from(&install.pg_config, "libswap-in-place", &[AUDIT_DB]);
    pg.connect_db("postgres").batch_execute("CREATE DATABASE app").unwrap();
    let mut c = pg.connect();
    exec(&mut c, "CREATE EXTENSION pg_entitlements");
    let ws = new_workspace(&mut c);
    assert_eq!(check(&mut c, &ws, "ccp-01"), (true, None));

    let installed = pg_config_dir(&install.pg_config, "--pkglibdir").join("pg_entitlements.so");
    let same_bytes = install.root.join("pg_entitlements.so.same-bytes");
    fs::copy(&installed, &same_bytes).unwrap();
    let inode = fs::metadata(&installed).unwrap().ino();
    // What `cp` does to an existing file (and `sudo cp` in cargo pgrx test --runas): truncate
    // the same inode and write it again. Not even the content changes.
    fs::copy(&same_bytes, &installed).unwrap();
    assert_eq!(fs::metadata(&installed).unwrap().ino(), inode, "written in place");

    let answer = c.query_one(&format!("SELECT enabled FROM entitlements.entitlement_check({ws}, 'ccp-01')"), &[]);
    assert!(answer.is_err(), "the backend survived an in-place rewrite of its library");
    wait_for("the postmaster to report the crash", || pg.log().contains("terminated by signal"));
}
