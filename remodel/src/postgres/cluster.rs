//! A throwaway PostgreSQL cluster for tests and benchmarks.
//!
//! [`TestCluster::start`] gives a server that nothing else uses, never the system's:
//!
//! 1. `REMODEL_PG_URL` set: that server (a developer's own; its user must be allowed to
//!    create databases and replication connections, and `wal_level` must be `logical`).
//! 2. Otherwise a new cluster in a temporary directory, made with the first of
//!    `$REMODEL_PG_BINDIR`, `pg_config --bindir`, the highest `/usr/lib/postgresql/*/bin`,
//!    and the `PATH` that holds `initdb`, `pg_ctl` and `postgres`. As root (PostgreSQL
//!    refuses to run as root) the directory is given to the `postgres` user and every server
//!    command runs as `runuser -u postgres -- …`. `initdb -A trust -U postgres -E UTF8
//!    --locale=C --no-sync`; the server listens on a unix socket in the directory only
//!    (`listen_addresses = ''`), with `wal_level = logical`, 128 replication slots and WAL
//!    senders, 400 connections, `fsync` and full-page writes off (nothing here must survive
//!    a crash of the machine), `synchronous_commit = on` (logical decoding only reads flushed
//!    WAL), `wal_writer_delay = 10ms`, `max_slot_wal_keep_size = 1GB` and `max_wal_size =
//!    256MB`.
//!
//! [`TestCluster::create_database`] gives each test a database of its own
//! (`CREATE DATABASE … TEMPLATE template0`): slots, publications and messages are per
//! database, so tests on one cluster do not see each other's changes. A finished test's
//! database is dropped by a later `create_database` once nothing is connected to it, so a
//! test binary's cluster stays small on disk (a feed oracle makes hundreds of databases).
//!
//! Dropping the cluster stops the server (`pg_ctl stop -m immediate`) and removes the
//! directory. [`TestCluster::shared`] is one cluster per process, stopped when the process
//! exits; a watchdog process stops the server and removes the directory also when the process
//! is killed (`kill -9`), so no server is left running.
//!
//! When no server can be had, [`TestCluster::start`] returns a [`ClusterError`] saying why
//! (never a panic): a test then skips, printing the reason, except under `CI=true`, where it
//! must fail ([`must_run`], [`TestCluster::shared_or_skip`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_postgres::config::Host;
use tokio_postgres::Config;

/// The environment variable naming a server to use instead of a throwaway cluster.
pub const URL_VAR: &str = "REMODEL_PG_URL";
/// The environment variable naming PostgreSQL's binary directory (optional).
pub const BINDIR_VAR: &str = "REMODEL_PG_BINDIR";

/// Why no PostgreSQL server could be had (or a database could not be created on it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No PostgreSQL installation was found.
    #[error("no PostgreSQL server binaries found: {reason}")]
    NotInstalled {
        /// Where it was looked for.
        reason: String,
    },
    /// Running as root, and the server cannot be run as another user.
    #[error("running as root and cannot run the server as user `postgres`: {reason}")]
    NoServerUser {
        /// What is missing.
        reason: String,
    },
    /// A server command failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status, output and, for a start, the server log's tail.
        output: String,
    },
    /// A file system operation failed.
    #[error("{what}: {message}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        message: String,
    },
    /// `REMODEL_PG_URL` is not a connection URL.
    #[error("{URL_VAR} is not a PostgreSQL connection string: {message}")]
    BadUrl {
        /// The parser's message.
        message: String,
    },
    /// Connecting to the server or running SQL on it failed.
    #[error("{what}: {message}")]
    Sql {
        /// What was being done.
        what: String,
        /// The error.
        message: String,
    },
}

/// Whether PostgreSQL tests must run rather than skip: `CI` is `true` (or `1`).
pub fn must_run() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A PostgreSQL server for tests: a throwaway cluster, or the one `REMODEL_PG_URL` names.
/// See the module doc.
pub struct TestCluster {
    server: Server,
    /// Connection to the `postgres` database as a superuser.
    admin: Config,
    started_in: Duration,
    databases: AtomicU64,
    /// Databases of a throwaway cluster whose tests are over, dropped once nothing is
    /// connected to them (see [`TestCluster::create_database`]).
    finished: Finished,
    stopped: AtomicBool,
}

/// Names of test databases no longer needed, shared by the cluster and its databases.
type Finished = std::sync::Arc<Mutex<Vec<String>>>;

enum Server {
    External,
    Owned(Owned),
}

struct Owned {
    dir: PathBuf,
    bindir: PathBuf,
    run_as_postgres: bool,
    watchdog: Mutex<Option<Child>>,
}

impl Owned {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// `program` of the server's binaries, run as the server's user.
    fn command(&self, program: &str) -> Command {
        server_command(&self.bindir, program, self.run_as_postgres, &self.dir)
    }
}

static SHARED: OnceLock<Result<TestCluster, ClusterError>> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(cluster)) = SHARED.get() {
        cluster.stop();
    }
}

impl TestCluster {
    /// Starts a throwaway cluster (about a second), or checks the server of `REMODEL_PG_URL`.
    /// Blocks; needs no async runtime (and may be called inside one).
    pub fn start() -> Result<TestCluster, ClusterError> {
        let t0 = Instant::now();
        if let Ok(url) = std::env::var(URL_VAR) {
            if !url.trim().is_empty() {
                let mut admin = Config::from_str(url.trim()).map_err(|e| ClusterError::BadUrl {
                    message: e.to_string(),
                })?;
                if admin.get_user().is_none() {
                    admin.user("postgres");
                }
                check_connects(&admin)?;
                return Ok(TestCluster {
                    server: Server::External,
                    admin,
                    started_in: t0.elapsed(),
                    databases: AtomicU64::new(0),
                    finished: Finished::default(),
                    stopped: AtomicBool::new(false),
                });
            }
        }
        let bindir = find_bindir()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = make_dir(run_as_postgres)?;
        let owned = Owned {
            dir,
            bindir,
            run_as_postgres,
            watchdog: Mutex::new(None),
        };
        let port = free_port();
        let mut admin = Config::new();
        admin
            .host_path(&owned.dir)
            .port(port)
            .user("postgres")
            .dbname("postgres");
        let mut cluster = TestCluster {
            server: Server::Owned(owned),
            admin,
            started_in: Duration::ZERO,
            databases: AtomicU64::new(0),
            finished: Finished::default(),
            stopped: AtomicBool::new(false),
        };
        // From here on, dropping `cluster` on an error removes the directory.
        if let Server::Owned(owned) = &cluster.server {
            init_and_start(owned, port)?;
        }
        cluster.started_in = t0.elapsed();
        Ok(cluster)
    }

    /// One cluster for the whole process (a test binary), started on first use; every later
    /// call gets the same cluster, or the same error. It is stopped and its directory removed
    /// when the process exits (also when it is killed: see the module doc).
    pub fn shared() -> Result<&'static TestCluster, ClusterError> {
        let result = SHARED.get_or_init(|| {
            let started = TestCluster::start();
            if started.is_ok() {
                // SAFETY: registers a plain function with no arguments; it only reads a
                // static that is initialised by then.
                unsafe {
                    libc::atexit(stop_shared_at_exit);
                }
            }
            started
        });
        result.as_ref().map_err(Clone::clone)
    }

    /// [`shared`](Self::shared) for a test named `test`: `None` (after printing why) when no
    /// server can be had, so that the test can return early; under `CI=true` ([`must_run`])
    /// it panics instead, failing the test.
    pub fn shared_or_skip(test: &str) -> Option<&'static TestCluster> {
        match TestCluster::shared() {
            Ok(cluster) => Some(cluster),
            Err(e) => {
                skip_or_fail(test, &e);
                None
            }
        }
    }

    /// A connection to the `postgres` database as a superuser.
    pub fn admin_config(&self) -> &Config {
        &self.admin
    }

    /// How long the cluster took to start (for an external server: to connect).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Whether this is the server of `REMODEL_PG_URL` rather than a throwaway cluster.
    pub fn is_external(&self) -> bool {
        matches!(self.server, Server::External)
    }

    /// The last `lines` lines of the server's log (a throwaway cluster only).
    pub fn log_tail(&self, lines: usize) -> Option<String> {
        match &self.server {
            Server::Owned(owned) => Some(tail(&owned.log(), lines)),
            Server::External => None,
        }
    }

    /// A new, empty database of its own (`CREATE DATABASE … TEMPLATE template0`, about 0.1 s),
    /// for one test. On a server of `REMODEL_PG_URL` it is dropped when the handle is dropped;
    /// on a throwaway cluster by a later `create_database`, once the handle is dropped and
    /// nothing is connected to the database any more.
    pub async fn create_database(&self) -> Result<TestDatabase, ClusterError> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("remodel_t{n}_{}", &tag[..8]);
        let client = super::connect(&self.admin)
            .await
            .map_err(|e| self.sql_error("connecting to the test server", e))?;
        self.drop_finished(&client).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .await
            .map_err(|e| self.sql_error(&format!("CREATE DATABASE {name}"), e))?;
        let mut config = self.admin.clone();
        config.dbname(&name);
        Ok(TestDatabase {
            url: url_of(&config),
            name,
            config,
            admin: self.admin.clone(),
            drop_on_drop: self.is_external(),
            finished: (!self.is_external()).then(|| self.finished.clone()),
        })
    }

    /// Drops the finished databases nothing is connected to any more (a later call retries
    /// the others). Without this a test binary's databases and their WAL fill the disk: a
    /// feed oracle makes hundreds, and a server out of disk crashes and recovers (refusing
    /// connections meanwhile). Never forced: a database still in use stays.
    async fn drop_finished(&self, client: &tokio_postgres::Client) {
        let names = match self.finished.lock() {
            Ok(mut finished) => std::mem::take(&mut *finished),
            Err(_) => return,
        };
        if names.is_empty() {
            return;
        }
        let idle = client
            .query(
                "SELECT d.datname::text FROM pg_database d WHERE d.datname = ANY($1) \
                 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname) \
                 AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.database = d.datname)",
                &[&names],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut kept = Vec::new();
        for name in names {
            let dropped = idle.contains(&name)
                && client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                    .await
                    .is_ok();
            if !dropped {
                kept.push(name);
            }
        }
        if let Ok(mut finished) = self.finished.lock() {
            finished.extend(kept);
        }
    }

    /// A SQL error, with the server log's tail when the server refuses connections (it is
    /// recovering from a crash: the log says why).
    fn sql_error(&self, what: &str, e: tokio_postgres::Error) -> ClusterError {
        let mut error = sql_error(what, e);
        if let (ClusterError::Sql { message, .. }, Some(log)) = (&mut error, self.log_tail(30)) {
            let _ = write!(message, "; server log: {log}");
        }
        error
    }

    /// Stops the server and removes its directory (a throwaway cluster; idempotent).
    /// Stops this throwaway cluster's server and keeps its data, for tests of what a server
    /// going away does to the processes connected to it: `immediate` is a crash (no shutdown
    /// checkpoint, sessions cut), else a fast shutdown (sessions ended, a clean stop), what
    /// an operator's restart does. [`TestCluster::start_server`] starts it again on the same
    /// port. A server of `REMODEL_PG_URL` is not the tests' to stop: an error.
    pub fn stop_server(&self, immediate: bool) -> Result<(), ClusterError> {
        let owned = self.owned("stop")?;
        let mode = if immediate { "immediate" } else { "fast" };
        run(
            owned
                .command("pg_ctl")
                .arg("-D")
                .arg(owned.data())
                .args(["stop", "-m", mode, "-w", "-t", "30"]),
            Some(&owned.log()),
        )
    }

    /// Starts the server [`TestCluster::stop_server`] stopped (and waits until it accepts
    /// connections).
    pub fn start_server(&self) -> Result<(), ClusterError> {
        let owned = self.owned("start")?;
        run(
            owned
                .command("pg_ctl")
                .arg("-D")
                .arg(owned.data())
                .arg("-l")
                .arg(owned.log())
                .args(["-w", "-t", "30", "start"]),
            Some(&owned.log()),
        )
    }

    fn owned(&self, what: &str) -> Result<&Owned, ClusterError> {
        match &self.server {
            Server::Owned(owned) if !self.stopped.load(Ordering::Acquire) => Ok(owned),
            Server::Owned(_) => Err(ClusterError::Command {
                command: format!("pg_ctl {what}"),
                output: "the test cluster was removed".into(),
            }),
            Server::External => Err(ClusterError::Command {
                command: format!("pg_ctl {what}"),
                output: format!("the server of {URL_VAR} is not the tests' to {what}"),
            }),
        }
    }

    fn stop(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let Server::Owned(owned) = &self.server else {
            return;
        };
        let _ = owned
            .command("pg_ctl")
            .arg("-D")
            .arg(owned.data())
            .args(["stop", "-m", "immediate", "-w", "-t", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let watchdog = owned.watchdog.lock().ok().and_then(|mut w| w.take());
        if let Some(mut watchdog) = watchdog {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&owned.dir);
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("url", &url_of(&self.admin))
            .field("external", &self.is_external())
            .finish()
    }
}

/// Prints why test `test` is skipped, or panics (failing the test) under `CI=true`
/// ([`must_run`]).
pub fn skip_or_fail(test: &str, error: &ClusterError) {
    if must_run() {
        panic!("{test}: PostgreSQL is required under CI=true but none could be started: {error}");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of tests that
    // pass, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipping {test}: no PostgreSQL server: {error}"
    );
}

/// One test's database on a [`TestCluster`].
pub struct TestDatabase {
    name: String,
    url: String,
    config: Config,
    admin: Config,
    drop_on_drop: bool,
    /// A throwaway cluster's list of finished databases, which this one joins when dropped.
    finished: Option<Finished>,
}

impl TestDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL for the database (libpq's form: a unix socket directory is the
    /// percent-encoded host).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection configuration for the database.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A new connection to the database (its connection task runs on the current runtime).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        super::connect(&self.config).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(finished) = &self.finished {
            if let Ok(mut finished) = finished.lock() {
                finished.push(std::mem::take(&mut self.name));
            }
        }
        if !self.drop_on_drop {
            return;
        }
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Its own thread and runtime: Drop may run inside or outside a runtime.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = super::connect(&admin).await.ok()?;
                // A pump still ending holds its slot for a moment: retry briefly.
                for _ in 0..20 {
                    if client.batch_execute(&sql).await.is_ok() {
                        return Some(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish()
    }
}

/// A connection URL for `config` (user, password, hosts, ports, database; a unix socket
/// directory is written as libpq does, percent-encoded in the host).
pub fn url_of(config: &Config) -> String {
    let mut url = String::from("postgresql://");
    if let Some(user) = config.get_user() {
        url.push_str(&percent_encode(user.as_bytes()));
        if let Some(password) = config.get_password() {
            url.push(':');
            url.push_str(&percent_encode(password));
        }
        url.push('@');
    }
    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        if i > 0 {
            url.push(',');
        }
        match host {
            Host::Tcp(h) if h.contains(':') => {
                let _ = write!(url, "[{h}]");
            }
            Host::Tcp(h) => url.push_str(&percent_encode(h.as_bytes())),
            #[cfg(unix)]
            Host::Unix(path) => {
                use std::os::unix::ffi::OsStrExt;
                url.push_str(&percent_encode(path.as_os_str().as_bytes()));
            }
        }
        let port = ports.get(i).or(ports.first());
        if let Some(port) = port {
            let _ = write!(url, ":{port}");
        }
    }
    url.push('/');
    if let Some(db) = config.get_dbname() {
        url.push_str(&percent_encode(db.as_bytes()));
    }
    url
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn sql_error(what: &str, e: tokio_postgres::Error) -> ClusterError {
    ClusterError::Sql {
        what: what.to_string(),
        message: super::error_text(&e),
    }
}

fn io_error(what: impl Into<String>, e: std::io::Error) -> ClusterError {
    ClusterError::Io {
        what: what.into(),
        message: e.to_string(),
    }
}

/// Connects once to the server of `REMODEL_PG_URL` and checks what the tests need.
fn check_connects(admin: &Config) -> Result<(), ClusterError> {
    let admin = admin.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| io_error("starting a runtime", e))?;
        rt.block_on(async {
            let client = super::connect(&admin)
                .await
                .map_err(|e| sql_error("connecting to the server of REMODEL_PG_URL", e))?;
            let row = client
                .query_one("SELECT current_setting('wal_level')", &[])
                .await
                .map_err(|e| sql_error("reading wal_level", e))?;
            let level: String = row.get(0);
            if level != "logical" {
                return Err(ClusterError::Sql {
                    what: "the server of REMODEL_PG_URL".into(),
                    message: format!("wal_level is `{level}`, the tests need `logical`"),
                });
            }
            Ok(())
        })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(ClusterError::Io {
            what: "checking the server of REMODEL_PG_URL".into(),
            message: "the checking thread panicked".into(),
        })
    })
}

fn has_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|p| dir.join(p).is_file())
}

/// Where PostgreSQL's server binaries are (see the module doc for the order).
fn find_bindir() -> Result<PathBuf, ClusterError> {
    let mut looked = Vec::new();
    if let Ok(dir) = std::env::var(BINDIR_VAR) {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        looked.push(format!(
            "{BINDIR_VAR}={} has no initdb/pg_ctl/postgres",
            dir.display()
        ));
    }
    match Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&dir) {
                return Ok(dir);
            }
            looked.push(format!(
                "pg_config --bindir ({}) has no server",
                dir.display()
            ));
        }
        _ => looked.push("no pg_config".into()),
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    if let Some((_, dir)) = versions.into_iter().find(|(_, dir)| has_server(dir)) {
        return Ok(dir);
    }
    looked.push("no /usr/lib/postgresql/*/bin/initdb".into());
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|dir| has_server(dir)) {
        return Ok(dir);
    }
    looked.push("no initdb on PATH".into());
    Err(ClusterError::NotInstalled {
        reason: format!(
            "{} (install PostgreSQL, e.g. Debian's `postgresql`, or set {URL_VAR})",
            looked.join("; ")
        ),
    })
}

/// The cluster's directory: new, empty, owned by the server's user.
fn make_dir(run_as_postgres: bool) -> Result<PathBuf, ClusterError> {
    // A unix socket path has at most 107 bytes: prefer a short temporary directory. As root
    // the server's user must be able to reach the directory, so /tmp.
    let base = match std::env::temp_dir() {
        t if !run_as_postgres && t.as_os_str().len() <= 40 => t,
        _ => PathBuf::from("/tmp"),
    };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let dir = base.join(format!("remodel-pg-{}-{}", std::process::id(), &tag[..8]));
    std::fs::create_dir(&dir).map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
    if run_as_postgres {
        let owner = postgres_user().and_then(|(uid, gid)| {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| {
                ClusterError::NoServerUser {
                    reason: format!("chown of {} failed: {e}", dir.display()),
                }
            })
        });
        if let Err(e) = owner {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
    }
    Ok(dir)
}

/// The uid and gid of the `postgres` user, and a check that `runuser` is there.
fn postgres_user() -> Result<(u32, u32), ClusterError> {
    let id = |flag: &str| -> Result<u32, ClusterError> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .stderr(Stdio::null())
            .output()
            .map_err(|e| ClusterError::NoServerUser {
                reason: format!("`id` could not run: {e}"),
            })?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| ClusterError::NoServerUser {
                reason: "there is no `postgres` user".into(),
            })
    };
    let ids = (id("-u")?, id("-g")?);
    let runuser = Command::new("runuser")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !runuser.is_ok_and(|s| s.success()) {
        return Err(ClusterError::NoServerUser {
            reason: "`runuser` is not available".into(),
        });
    }
    Ok(ids)
}

fn server_command(bindir: &Path, program: &str, run_as_postgres: bool, cwd: &Path) -> Command {
    let mut command = if run_as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bindir.join(program));
        c
    } else {
        Command::new(bindir.join(program))
    };
    // The server's user may not be allowed into the caller's directory.
    command.current_dir(cwd).stdin(Stdio::null());
    command
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command`; a failure carries its output (and `log`'s tail, if given).
fn run(command: &mut Command, log: Option<&Path>) -> Result<(), ClusterError> {
    let described = describe(command);
    let out = command
        .output()
        .map_err(|e| io_error(format!("running {described}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = format!(
        "{}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if let Some(log) = log {
        let _ = write!(output, "; server log: {}", tail(log, 20));
    }
    Err(ClusterError::Command {
        command: described,
        output,
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A port number for the socket's name. The socket is in a directory of the cluster's own, so
/// any number works; one free for TCP keeps it free should TCP be turned on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(5432)
}

fn init_and_start(owned: &Owned, port: u16) -> Result<(), ClusterError> {
    let data = owned.data();
    run(
        owned
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"]),
        None,
    )?;
    let dir = owned.dir.to_string_lossy().replace('\'', "''");
    let settings = format!(
        "\n# remodel::postgres::TestCluster\n\
         listen_addresses = ''\n\
         unix_socket_directories = '{dir}'\n\
         port = {port}\n\
         wal_level = logical\n\
         max_replication_slots = 128\n\
         max_wal_senders = 128\n\
         max_connections = 400\n\
         fsync = off\n\
         full_page_writes = off\n\
         synchronous_commit = on\n\
         wal_writer_delay = 10ms\n\
         max_slot_wal_keep_size = 1GB\n\
         max_wal_size = 256MB\n\
         min_wal_size = 32MB\n"
    );
    let conf = data.join("postgresql.conf");
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| io_error(format!("opening {}", conf.display()), e))?;
        file.write_all(settings.as_bytes())
            .map_err(|e| io_error(format!("writing {}", conf.display()), e))?;
    }
    let log = owned.log();
    run(
        owned
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30", "start"]),
        Some(&log),
    )?;
    start_watchdog(owned);
    Ok(())
}

/// A process that outlives this one by at most a second: once this process is gone (however
/// it ended), it stops the server and removes the directory. Killed when the cluster stops.
fn start_watchdog(owned: &Owned) {
    use std::os::unix::process::CommandExt;
    let stop = owned
        .command("pg_ctl")
        .arg("-D")
        .arg(owned.data())
        .args(["stop", "-m", "immediate", "-w"])
        .get_args()
        .map(|a| a.to_os_string())
        .collect::<Vec<_>>();
    let program = if owned.run_as_postgres {
        PathBuf::from("runuser")
    } else {
        owned.bindir.join("pg_ctl")
    };
    let script = "parent=$1; dir=$2; shift 2\n\
                  while kill -0 \"$parent\" 2>/dev/null; do sleep 1; done\n\
                  \"$@\" >/dev/null 2>&1\n\
                  rm -rf \"$dir\"\n";
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("remodel-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(&owned.dir)
        .arg(program)
        .args(stop)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C to the tests does not end it before it cleans up.
        .process_group(0)
        .spawn();
    if let (Ok(child), Ok(mut slot)) = (child, owned.watchdog.lock()) {
        *slot = Some(child);
    }
}

/// The environment variable that makes [`suite_database`] (and the test suites that use it)
/// run on PostgreSQL: `REMODEL_TEST_BACKEND=postgres`.
pub const BACKEND_VAR: &str = "REMODEL_TEST_BACKEND";

/// Whether the test suites run on PostgreSQL (see [`BACKEND_VAR`]).
pub fn suites_on_postgres() -> bool {
    std::env::var(BACKEND_VAR).is_ok_and(|v| v == "postgres")
}

/// For a test suite parameterised by backend: a [`Database`](crate::Database) on a new
/// database of the shared [`TestCluster`]. The database lives until the cluster is removed
/// (the end of the test binary). Panics when no cluster can be started: a suite asked to run
/// on PostgreSQL must not pass without it.
pub async fn suite_database() -> crate::Database {
    let cluster = match TestCluster::shared() {
        Ok(cluster) => cluster,
        Err(e) => panic!("{BACKEND_VAR}=postgres, but no PostgreSQL server: {e}"),
    };
    let pg = cluster
        .create_database()
        .await
        .unwrap_or_else(|e| panic!("a test database: {e}"));
    let db = super::Connect::new(pg.url())
        .connections(2)
        .open()
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database: {e}"));
    // Dropped by a later `create_database` once `db` (and every connection it holds) is gone.
    drop(pg);
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_sockets_and_hosts() {
        let mut c = Config::new();
        c.host_path("/tmp/remodel pg")
            .port(5433)
            .user("postgres")
            .dbname("t1");
        let url = url_of(&c);
        assert_eq!(url, "postgresql://postgres@%2Ftmp%2Fremodel%20pg:5433/t1");
        let back = Config::from_str(&url).unwrap();
        assert_eq!(back.get_hosts(), c.get_hosts());
        assert_eq!(back.get_ports(), &[5433]);
        assert_eq!(back.get_dbname(), Some("t1"));

        let mut c = Config::new();
        c.host("db.example")
            .host("::1")
            .port(5432)
            .port(6000)
            .user("u")
            .password("p@ss")
            .dbname("d");
        let url = url_of(&c);
        assert_eq!(url, "postgresql://u:p%40ss@db.example:5432,[::1]:6000/d");
        let back = Config::from_str(&url).unwrap();
        assert_eq!(back.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(back.get_hosts(), c.get_hosts());
    }
}
