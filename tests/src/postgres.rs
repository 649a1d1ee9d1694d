//! A throwaway Postgres for the test run: `initdb` into a temp dir, started
//! with `pg_ctl` on a Unix socket (no TCP port to race for), one database per
//! test. A watchdog process stops it and removes the directory when the test
//! process exits, however it exits.
//!
//! Postgres is skipped (with a loud note) when its binaries are missing,
//! unless `CI=true` or `KEYPLANE_TEST_REQUIRE_POSTGRES=1`: then it is mandatory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The running server.
pub struct PgServer {
    socket_dir: PathBuf,
    bindir: PathBuf,
    options: String,
    as_postgres: bool,
    _watchdog: Mutex<Child>,
}

static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();

/// Whether a missing Postgres must fail the run.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("KEYPLANE_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// The shared server, started on first use; `None` when Postgres is not
/// installed and not required.
pub fn server() -> Option<&'static PgServer> {
    SERVER
        .get_or_init(|| match find_bindir() {
            Some(bindir) => Some(PgServer::start(&bindir, "")),
            None if required() => panic!(
                "Postgres is required (CI=true or KEYPLANE_TEST_REQUIRE_POSTGRES=1) but no initdb was found; \
                 install postgresql or set KEYPLANE_TEST_PG_BIN"
            ),
            None => {
                eprintln!("NOTE: Postgres binaries not found; Postgres variants of the tests are SKIPPED");
                None
            }
        })
        .as_ref()
}

/// A server of its own, for a test that stops and restarts it; `None` when
/// Postgres is not installed and not required.
pub fn dedicated() -> Option<PgServer> {
    dedicated_with("")
}

/// A server of its own started with `settings` (`-c name=value …`) after
/// the test defaults, which they override (a benchmark turns durability
/// back on).
pub fn dedicated_with(settings: &str) -> Option<PgServer> {
    match find_bindir() {
        Some(bindir) => Some(PgServer::start(&bindir, settings)),
        None if required() => panic!("Postgres is required but no initdb was found"),
        None => {
            eprintln!("NOTE: Postgres binaries not found; a Postgres test is SKIPPED");
            None
        }
    }
}

fn find_bindir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("KEYPLANE_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    candidates.sort_by_key(|path| {
        path.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.pop().or_else(|| {
        let output = Command::new("sh").args(["-c", "command -v initdb"]).output().ok()?;
        let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
        path.parent().map(Path::to_path_buf)
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when we are root (initdb refuses root).
fn pg_command(bindir: &Path, program: &str, as_postgres: bool) -> Command {
    let binary = bindir.join(program);
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(binary);
        command
    } else {
        Command::new(binary)
    }
}

fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PgServer {
    fn start(bindir: &Path, settings: &str) -> Self {
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("keyplane-pg-").tempdir().expect("temp dir for Postgres").keep();
        if as_postgres {
            let ids = |flag: &str| -> u32 {
                let out = Command::new("id").args([flag, "postgres"]).output().expect("id postgres");
                String::from_utf8_lossy(&out.stdout).trim().parse().expect("postgres user exists")
            };
            std::os::unix::fs::chown(&dir, Some(ids("-u")), Some(ids("-g"))).expect("chown Postgres dir");
        }
        let data = dir.join("data");
        let mut initdb = pg_command(bindir, "initdb", as_postgres);
        initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
        run(initdb, "initdb");
        let options = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=400 {settings}",
            dir.display()
        );
        let server = |watchdog| Self {
            socket_dir: dir.clone(),
            bindir: bindir.to_path_buf(),
            options: options.clone(),
            as_postgres,
            _watchdog: Mutex::new(watchdog),
        };

        // The watchdog holds our end of a pipe; when this process exits the
        // pipe closes, `cat` returns, and Postgres is stopped and removed.
        let stop = format!(
            "{} {} -D {} -m immediate stop >/dev/null 2>&1; rm -rf {}",
            if as_postgres { "runuser -u postgres --" } else { "" },
            bindir.join("pg_ctl").display(),
            data.display(),
            dir.display()
        );
        let mut watchdog = Command::new("sh")
            .args(["-c", &format!("cat >/dev/null; {stop}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the Postgres watchdog");
        // Keep stdin open (never written) for the life of the process.
        let _ = watchdog.stdin.as_mut().map(|stdin| stdin.flush());
        let server = server(watchdog);
        server.start_again();
        server
    }

    /// Stops the server (fast shutdown: open connections are terminated).
    pub fn stop(&self) {
        let mut stop = pg_command(&self.bindir, "pg_ctl", self.as_postgres);
        stop.arg("-D").arg(self.socket_dir.join("data")).args(["-w", "-m", "fast", "stop"]);
        run(stop, "pg_ctl stop");
    }

    /// Starts a stopped server again (same data, same socket).
    pub fn start_again(&self) {
        let mut start = pg_command(&self.bindir, "pg_ctl", self.as_postgres);
        start.arg("-D").arg(self.socket_dir.join("data")).arg("-l").arg(self.socket_dir.join("log"));
        start.args(["-w", "-o", &self.options, "start"]);
        run(start, "pg_ctl start");
    }

    /// CPU time (clock ticks) used so far by the postmaster and its
    /// live processes (backends, WAL writer, checkpointer…).
    pub fn cpu_ticks(&self) -> u64 {
        let pid_file = self.socket_dir.join("data").join("postmaster.pid");
        let Some(postmaster) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.lines().next().and_then(|line| line.trim().parse::<u32>().ok()))
        else {
            return 0;
        };
        let children: u64 = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()))
            .filter(|pid| crate::process::parent_pid(*pid) == Some(postmaster))
            .map(crate::process::cpu_ticks)
            .sum();
        children + crate::process::cpu_ticks(postmaster)
    }

    /// The server's Unix socket (what a TCP proxy forwards to).
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(".s.PGSQL.5432")
    }

    /// URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@localhost/{name}?host={}", self.socket_dir.display())
    }

    /// URL of database `name` reached over TCP at `addr` (e.g. through a proxy).
    pub fn tcp_url(name: &str, addr: std::net::SocketAddr) -> String {
        format!("postgres://postgres@{addr}/{name}")
    }

    /// Creates a fresh database and returns its URL.
    pub async fn create_database(&self) -> String {
        self.url(&self.new_database().await)
    }

    /// Creates a fresh database and returns its name.
    pub async fn new_database(&self) -> String {
        let name = format!("kp_{}", random_suffix());
        let admin = sea_orm::Database::connect(self.url("postgres")).await.expect("connect to Postgres");
        sea_orm::ConnectionTrait::execute_unprepared(&admin, &format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        admin.close().await.ok();
        name
    }
}

/// Statements executed since `pg_stat_statements_reset()` in the current
/// database (the server must preload `pg_stat_statements`): their total
/// calls, and each statement's calls and execution time in ms, longest first.
pub async fn statements(db: &sea_orm::DatabaseConnection) -> (i64, Vec<(i64, f64, String)>) {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let query = "SELECT calls, total_exec_time::float8 AS ms, query FROM pg_stat_statements \
                 WHERE query NOT LIKE '%pg_stat_statements%' AND dbid = \
                 (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY total_exec_time DESC";
    let rows =
        db.query_all_raw(Statement::from_string(DbBackend::Postgres, query)).await.expect("read pg_stat_statements");
    let counted: Vec<(i64, f64, String)> = rows
        .iter()
        .map(|row| {
            let calls = row.try_get::<i64>("", "calls").unwrap_or(0);
            (calls, row.try_get("", "ms").unwrap_or(0.0), row.try_get("", "query").unwrap_or_default())
        })
        .collect();
    (counted.iter().map(|(calls, _, _)| calls).sum(), counted)
}

/// 16 random lowercase hex characters.
pub fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:016x}", hasher.finish())
}
