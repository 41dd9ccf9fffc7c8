//! A real PostgreSQL 15 cluster per test: initdb'd as the `postgres` OS user (scripts/cluster.sh),
//! on loopback, on a port of its own, with `shared_preload_libraries = 'pg_entitlements'`, and
//! stopped when the `Cluster` is dropped, also when the test panics.
//! The extension must be installed first (`scripts/install.sh`; `make test` does it).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use postgres::{Client, NoTls};

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// The pg_config of the PostgreSQL install this cluster runs from.
    pub pg_config: PathBuf,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The PostgreSQL the tests use, decided as scripts/pg_env.sh decides it for the scripts:
/// `PG_CONFIG` (scripts/test.sh exports it), else the pg_config of the private copy in
/// `PG_ROOT`, else the system's PostgreSQL 15.
pub fn pg_config() -> &'static Path {
    static PG_CONFIG: OnceLock<PathBuf> = OnceLock::new();
    PG_CONFIG.get_or_init(|| match std::env::var_os("PG_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(format!(
            "{}/usr/lib/postgresql/15/bin/pg_config",
            std::env::var("PG_ROOT").unwrap_or_default()
        )),
    })
}

/// One directory of an install, as its pg_config reports it (`--bindir`, `--pkglibdir`, ...).
pub fn pg_config_dir(pg_config: &Path, what: &str) -> PathBuf {
    let out = Command::new(pg_config).arg(what).output().unwrap_or_else(|e| panic!("{}: {e}", pg_config.display()));
    assert!(out.status.success(), "{} {what}: {}", pg_config.display(), String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The binaries of the tests' PostgreSQL.
pub fn bindir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| pg_config_dir(pg_config(), "--bindir"))
}

/// Where the tests' PostgreSQL loads extension libraries from (`$libdir`).
pub fn pkglibdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| pg_config_dir(pg_config(), "--pkglibdir"))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// Start a fresh cluster and create the extension in database `app`.
    pub fn start(name: &str) -> Cluster {
        Self::start_with(name, &[])
    }

    pub fn start_with(name: &str, conf: &[&str]) -> Cluster {
        let cluster = Self::init(name, conf);
        let mut c = cluster.connect_db("postgres");
        c.batch_execute("CREATE DATABASE app").unwrap();
        cluster.connect().batch_execute("CREATE EXTENSION pg_entitlements").unwrap();
        cluster
    }

    /// initdb + start only (no database, no extension).
    pub fn init(name: &str, conf: &[&str]) -> Cluster {
        Self::init_from(pg_config(), name, conf)
    }

    /// initdb + start with the PostgreSQL install that `pg_config` belongs to.
    pub fn init_from(pg_config: &Path, name: &str, conf: &[&str]) -> Cluster {
        let dir = repo().join("target/it").join(format!("{name}-{}", std::process::id()));
        let port = free_port();
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/cluster.sh")).arg("start").arg(&dir).arg(port.to_string());
        cmd.args(conf).env("PG_CONFIG", pg_config);
        let out = cmd.output().expect("run scripts/cluster.sh");
        let cluster = Cluster { dir, port, pg_config: pg_config.to_owned() };
        assert!(
            out.status.success(),
            "cluster {name} did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.log()
        );
        cluster
    }

    /// A hot standby of this cluster: `pg_basebackup -R` (as the postgres OS user), then
    /// started on a port of its own. Stopped on Drop like any cluster.
    pub fn start_standby(&self, name: &str) -> Cluster {
        let dir = repo().join("target/it").join(format!("{name}-{}", std::process::id()));
        let port = free_port();
        let pg_bin = self.bindir();
        let pg_bin = pg_bin.display();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sh = |cmd: &str| {
            let out = Command::new("bash").arg("-c").arg(cmd).output().unwrap();
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let d = dir.display();
        sh(&format!("chown postgres: {d}"));
        sh(&format!(
            "sudo -u postgres {pg_bin}/pg_basebackup -h 127.0.0.1 -p {} -U postgres -D {d}/data -R -X stream -c fast",
            self.port
        ));
        sh(&format!(
            "printf \"port = {port}\\nunix_socket_directories = '{d}'\\nhot_standby = on\\n\" >> {d}/data/postgresql.conf"
        ));
        sh(&format!("sudo -u postgres {pg_bin}/pg_ctl -D {d}/data -l {d}/server.log -w start"));
        Cluster { dir, port, pg_config: self.pg_config.clone() }
    }

    /// The binaries this cluster runs.
    pub fn bindir(&self) -> PathBuf {
        pg_config_dir(&self.pg_config, "--bindir")
    }

    /// `pg_ctl restart` as the postgres OS user: a clean shutdown, then a start that loads
    /// shared_preload_libraries afresh.
    pub fn restart(&self) {
        let out = Command::new("sudo")
            .args(["-u", "postgres", "--"])
            .arg(self.bindir().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-m", "fast", "-w", "restart"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl restart: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
    }

    pub fn url(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port)
    }

    pub fn connect(&self) -> Client {
        self.connect_db("app")
    }

    /// A connection over TCP as `role` (trust authentication on loopback).
    pub fn connect_as(&self, role: &str, db: &str) -> Client {
        let url = format!("host=127.0.0.1 port={} user={role} dbname={db}", self.port);
        Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("connect as {role}: {e}"))
    }

    pub fn connect_db(&self, db: &str) -> Client {
        let mut last = None;
        for _ in 0..50 {
            match Client::connect(&self.url(db), NoTls) {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("connect to {}: {:?}", self.url(db), last)
    }

    /// How many crash restarts (all processes terminated, shared memory reinitialised) the
    /// server has done so far.
    pub fn crash_restarts(&self) -> usize {
        self.log().matches("all server processes terminated; reinitializing").count()
    }

    /// After a crash: wait until the postmaster has begun restart number `restarts_before + 1`
    /// (a connection made before that could still be cut), then connect, retrying while the
    /// server recovers.
    pub fn reconnect_after_crash(&self, restarts_before: usize) -> Client {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.crash_restarts() <= restarts_before {
            assert!(std::time::Instant::now() < deadline, "no crash restart:\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        loop {
            if let Ok(mut c) = Client::connect(&self.url("app"), NoTls) {
                if c.batch_execute("SELECT 1").is_ok() {
                    return c;
                }
            }
            assert!(std::time::Instant::now() < deadline, "server did not come back:\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/cluster.sh"))
            .arg("stop")
            .arg(&self.dir)
            .env("PG_CONFIG", &self.pg_config)
            .output();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// PgBouncer (Debian's package, /usr/sbin/pgbouncer) in front of a cluster's database `app`, in
/// transaction mode with ONE server connection per user and database: every client of a user
/// shares that connection, one transaction at a time, as behind a busy production pooler.
/// It runs as the `postgres` OS user (it refuses root), on 127.0.0.1 on a port of its own, with
/// its ini, user list, log and pid file in the cluster's directory, and is stopped on Drop, also
/// when the test panics (declare it after the `Cluster`, so it stops first).
pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
}

impl PgBouncer {
    /// Start it for the given login roles (trust authentication, as the test clusters have).
    pub fn start(cluster: &Cluster, users: &[&str]) -> PgBouncer {
        let dir = cluster.dir.clone();
        let port = free_port();
        let userlist: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(dir.join("pgbouncer.users"), userlist).unwrap();
        // server_reset_query runs in session mode only: in transaction mode nothing resets the
        // server connection between clients, which is why applications must use SET LOCAL.
        let ini = format!(
            "[databases]\n\
             app = host=127.0.0.1 port={pg} dbname=app\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/pgbouncer.users\n\
             pool_mode = transaction\n\
             default_pool_size = 1\n\
             min_pool_size = 0\n\
             reserve_pool_size = 0\n\
             max_db_connections = 1\n\
             max_client_conn = 8\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            pg = cluster.port,
            dir = dir.display(),
        );
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).unwrap();
        let bouncer = PgBouncer { port, dir };
        // -d: it forks into the background and writes its pid file; its startup output goes to a
        // file, so no pipe is left open by the daemon.
        let out = std::fs::File::create(bouncer.dir.join("pgbouncer.start.log")).unwrap();
        let status = Command::new("sudo")
            .args(["-u", "postgres", "/usr/sbin/pgbouncer", "-d", "-q"])
            .arg(&ini_path)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .expect("run /usr/sbin/pgbouncer (scripts/setup.sh installs it)");
        assert!(status.success(), "pgbouncer did not start:\n{}", bouncer.log());
        // Ready when it accepts connections (it binds its port as it starts) and has written its
        // pid file (the daemon may do that just after it listens).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || bouncer.pid().is_none() {
            assert!(std::time::Instant::now() < deadline, "pgbouncer does not listen:\n{}", bouncer.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bouncer
    }

    /// A client connection through the pooler, as `role`, named `application_name`.
    pub fn connect_as(&self, role: &str, application_name: &str) -> Client {
        let url = format!("host=127.0.0.1 port={} user={role} dbname=app application_name={application_name}", self.port);
        Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("connect through pgbouncer as {role}: {e}\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("pgbouncer.start.log"), read("pgbouncer.log"))
    }

    /// The daemon's pid, if it runs: from its pid file, and only if that process is pgbouncer
    /// and alive (an exited daemon waits to be reaped by init as a zombie).
    pub fn pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join("pgbouncer.pid")).ok()?.trim().parse().ok()?;
        // /proc/PID/stat: "PID (comm) STATE ..."
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        (comm == "pgbouncer" && !rest.starts_with('Z')).then_some(pid)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let Some(pid) = self.pid() else { return };
        // SIGTERM: immediate shutdown (SIGINT would wait for clients to finish).
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        // Wait for the process itself (it removes its pid file before it is gone).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while process_alive(pid) {
            if std::time::Instant::now() > deadline {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Whether process `pid` exists and has not exited (an exited daemon waits to be reaped by
/// init as a zombie).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Run a PostgreSQL client program of the tests' PostgreSQL (pg_dump, psql, ...); panics with
/// its output when it fails, else returns its standard error.
pub fn run_pg(program: &str, args: &[&str]) -> String {
    let out = Command::new(bindir().join(program)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh random workspace id.
pub fn new_workspace(c: &mut Client) -> uuid_string::Ws {
    let row = c.query_one("SELECT gen_random_uuid()::text", &[]).unwrap();
    uuid_string::Ws(row.get(0))
}

pub mod uuid_string {
    /// A workspace id as text, for interpolating into SQL in tests.
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    pub struct Ws(pub String);
    impl std::fmt::Display for Ws {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "'{}'::uuid", self.0)
        }
    }
}

/// `(enabled, reason)` of one check.
pub fn check(c: &mut Client, ws: &uuid_string::Ws, feature: &str) -> (bool, Option<String>) {
    let row = c
        .query_one(
            &format!("SELECT enabled, reason FROM entitlements.entitlement_check({ws}, $1)"),
            &[&feature],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

pub fn exec(c: &mut Client, sql: &str) {
    c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error().map(|d| d.message())));
}

/// The SQLSTATE of a failing statement.
pub fn sqlstate(c: &mut Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => e.code().map(|s| s.code().to_owned()).unwrap_or_else(|| format!("{e}")),
    }
}
