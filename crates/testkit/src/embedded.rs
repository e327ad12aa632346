//! A throwaway PostgreSQL cluster started from the locally installed server binaries.
//!
//! Used by the test harness (one cluster per test binary, one database per test) and by
//! `lakets demo` when no `--database-url` is given. The cluster lives in a temporary
//! directory (data, unix socket and server log), listens on a free loopback port with
//! `wal_level = logical`, and is stopped and removed when the last handle is dropped, at
//! process exit (including after a panic in a test), and on Ctrl-C in the binary, which
//! drops its handle before exiting. If our process is killed outright, the server gets
//! SIGQUIT from the kernel (parent-death signal) instead of lingering.
//!
//! `initdb` and `postgres` refuse to run as root; as root we run them as the `postgres`
//! system user (or `LAKETS_PG_OS_USER`), which the Debian server package creates.
//!
//! Nobody else gets in: every connection (TCP and the Unix socket) authenticates with
//! SCRAM-SHA-256 and a random password made for the cluster, kept in a `0600` file (and a
//! `pgpass` file for psql) in the cluster's directory, which belongs to the invoking user
//! (`0711`: the server's user may only pass through it to its data and socket directories,
//! which are its own, `0700`). The server log and the password files are created there
//! with `O_NOFOLLOW | O_EXCL`, so a link planted in their place is never followed.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::ident::quote_ident;

/// The superuser created by initdb (password authentication, see the module docs).
pub const SUPERUSER: &str = "postgres";

/// How the embedded cluster is configured.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Keep fsync on. Tests and the demo turn it off (commits stay synchronous): the cluster
    /// is thrown away anyway, and crashes are simulated with shutdowns, not power loss.
    pub durable: bool,
    /// Extra `postgresql.conf` settings, written after ours (so they win).
    pub settings: Vec<(String, String)>,
    /// How long to wait for the server to accept connections.
    pub start_timeout: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            durable: false,
            settings: Vec::new(),
            start_timeout: Duration::from_secs(60),
        }
    }
}

impl EmbeddedOptions {
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A running (or stopped, restartable) throwaway cluster. Cloning shares the cluster; it is
/// torn down when the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedPostgres {
    cluster: Arc<Cluster>,
}

struct Cluster {
    bindir: PathBuf,
    root: PathBuf,
    /// The superuser's password (SCRAM); also in `root/password`.
    password: String,
    tempdir: Mutex<Option<tempfile::TempDir>>,
    port: u16,
    run_as: Option<OsUser>,
    server: Mutex<Option<Child>>,
    start_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct OsUser {
    uid: u32,
    gid: u32,
}

impl EmbeddedPostgres {
    /// Creates a cluster with initdb and starts it. Blocking: call it from a blocking
    /// context (`spawn_blocking`) inside async code.
    pub fn start(options: EmbeddedOptions) -> Result<Self> {
        let bindir = find_server_bindir()?;
        let run_as = os_user_for_server()?;
        let tempdir = tempfile::Builder::new()
            .prefix("lakets-pg-")
            .tempdir()
            .map_err(|e| Error::io("creating the embedded cluster's temporary directory", e))?;
        let root = tempdir.path().to_path_buf();
        // Ours; the server's user may pass through to its own directories, nothing more.
        set_mode(&root, if run_as.is_some() { 0o711 } else { 0o700 })?;
        let data = root.join("data");
        let socket = root.join("socket");
        for dir in [&data, &socket] {
            fs::create_dir(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            set_mode(dir, 0o700)?;
            if let Some(user) = run_as {
                chown(dir, user)?;
            }
        }
        let password = random_password()?;
        write_private(&root.join("password"), &format!("{password}\n"))?;
        // initdb reads the password from a file of its user's: one in the socket directory,
        // made a moment ago (no server runs yet), gone once initdb is done.
        let pwfile = socket.join("initdb.pw");
        write_private(&pwfile, &format!("{password}\n"))?;
        if let Some(user) = run_as {
            chown(&pwfile, user)?;
        }
        let initdb = run_initdb(&bindir, &data, run_as, &pwfile);
        let _ = fs::remove_file(&pwfile);
        initdb?;

        // The port is picked once and kept across restarts, so clients can reconnect.
        let mut last_err = None;
        for _attempt in 0..5 {
            let port = free_port()?;
            write_settings(&data, &socket, port, &options)?;
            let pgpass = root.join("pgpass");
            let _ = fs::remove_file(&pgpass);
            write_private(&pgpass, &format!("*:{port}:*:{SUPERUSER}:{password}\n"))?;
            let cluster = Arc::new(Cluster {
                bindir: bindir.clone(),
                root: root.clone(),
                password: password.clone(),
                tempdir: Mutex::new(None),
                port,
                run_as,
                server: Mutex::new(None),
                start_timeout: options.start_timeout,
            });
            match cluster.start_server() {
                Ok(()) => {
                    *cluster.tempdir.lock().unwrap() = Some(tempdir);
                    register_for_exit_cleanup(&cluster);
                    info!(port, dir = %root.display(), bindir = %bindir.display(), "embedded PostgreSQL started");
                    return Ok(EmbeddedPostgres { cluster });
                }
                Err(e) => {
                    let in_use = e.to_string().contains("already in use");
                    last_err = Some(e);
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Embedded("could not start the server".into())))
    }

    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory holding the data directory, the unix socket's directory,
    /// `postgres.log` and the password files.
    pub fn root_dir(&self) -> &Path {
        &self.cluster.root
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.cluster.root.join("socket")
    }

    /// A file holding the superuser's password (for `LAKETS_DATABASE_PASSWORD_FILE`).
    pub fn password_file(&self) -> PathBuf {
        self.cluster.root.join("password")
    }

    /// A libpq password file (`PGPASSFILE`) for psql and pg_recvlogical.
    pub fn pgpass_file(&self) -> PathBuf {
        self.cluster.root.join("pgpass")
    }

    /// The superuser's password: for this process's own connections; never print it.
    pub fn password(&self) -> &str {
        &self.cluster.password
    }

    pub fn bindir(&self) -> &Path {
        &self.cluster.bindir
    }

    /// A URL for a database of this cluster, with the password (a secret: hand it to
    /// programs through the environment, never to a log or a command line).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{}",
            self.cluster.password,
            self.cluster.port,
            percent_encode_path(database)
        )
    }

    /// A URL that reaches the cluster through its Unix socket, with the password (a secret,
    /// as [`Self::url`]'s).
    pub fn socket_url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@{}:{}/{}",
            self.cluster.password,
            percent_encode_path(&self.socket_dir().display().to_string()),
            self.cluster.port,
            percent_encode_path(database)
        )
    }

    /// The URL to show: no password (it is in [`Self::password_file`]).
    pub fn display_url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{}",
            self.cluster.port,
            percent_encode_path(database)
        )
    }

    /// Creates a database (if it does not exist) and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        let client = crate::db::connect(&self.url("postgres")).await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(|e| Error::Embedded(crate::error::describe_pg_error(&e)))?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
                .await
                .map_err(|e| {
                    Error::Embedded(format!(
                        "creating database {name}: {}",
                        crate::error::describe_pg_error(&e)
                    ))
                })?;
        }
        Ok(self.url(name))
    }

    /// Fast shutdown of the server process; the data directory is kept.
    pub fn stop_server(&self) -> Result<()> {
        self.cluster.stop_server(libc::SIGINT)
    }

    /// Immediate shutdown (like a crash: no checkpoint, recovery at next start).
    pub fn crash_server(&self) -> Result<()> {
        self.cluster.stop_server(libc::SIGQUIT)
    }

    /// Starts the server again on the same port and data directory.
    pub fn start_server(&self) -> Result<()> {
        self.cluster.start_server()
    }

    pub fn restart_server(&self) -> Result<()> {
        self.stop_server()?;
        self.start_server()
    }

    /// A physical standby of this cluster: a base backup (`pg_basebackup -R`, WAL
    /// streamed) started on a port of its own, replaying this cluster's WAL until it is
    /// promoted (`SELECT pg_promote()`). The same superuser and password. Blocking.
    pub fn start_standby(&self, options: EmbeddedOptions) -> Result<EmbeddedPostgres> {
        let primary = &self.cluster;
        let tempdir = tempfile::Builder::new()
            .prefix("lakets-pg-standby-")
            .tempdir()
            .map_err(|e| Error::io("creating the standby's temporary directory", e))?;
        let root = tempdir.path().to_path_buf();
        set_mode(
            &root,
            if primary.run_as.is_some() {
                0o711
            } else {
                0o700
            },
        )?;
        let data = root.join("data");
        let socket = root.join("socket");
        for dir in [&data, &socket] {
            fs::create_dir(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            set_mode(dir, 0o700)?;
            if let Some(user) = primary.run_as {
                chown(dir, user)?;
            }
        }
        write_private(&root.join("password"), &format!("{}\n", primary.password))?;
        let mut cmd = Command::new(primary.bindir.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
            .args(["-h", "127.0.0.1", "-U", SUPERUSER])
            .arg("-p")
            .arg(primary.port.to_string())
            // The password through the environment, never the command line.
            .env("PGPASSWORD", &primary.password)
            .stdin(Stdio::null());
        if let Some(user) = primary.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        let out = cmd
            .output()
            .map_err(|e| Error::Embedded(format!("could not run pg_basebackup: {e}")))?;
        if !out.status.success() {
            return Err(Error::Embedded(format!(
                "pg_basebackup failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // The standby's settings start from the same initdb file as the primary's.
        fs::copy(
            primary.root.join("postgresql.conf.initdb"),
            root.join("postgresql.conf.initdb"),
        )
        .map_err(|e| Error::io("copying the primary's initdb settings", e))?;
        let port = free_port()?;
        write_settings(&data, &socket, port, &options)?;
        write_private(
            &root.join("pgpass"),
            &format!("*:{port}:*:{SUPERUSER}:{}\n", primary.password),
        )?;
        let cluster = Arc::new(Cluster {
            bindir: primary.bindir.clone(),
            root: root.clone(),
            password: primary.password.clone(),
            tempdir: Mutex::new(Some(tempdir)),
            port,
            run_as: primary.run_as,
            server: Mutex::new(None),
            start_timeout: options.start_timeout,
        });
        cluster.start_server()?;
        register_for_exit_cleanup(&cluster);
        info!(port, dir = %root.display(), "embedded PostgreSQL standby started");
        Ok(EmbeddedPostgres { cluster })
    }

    /// The last `max_bytes` of the server log, for error messages and test failures.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        read_tail(&self.cluster.root.join("postgres.log"), max_bytes)
    }
}

impl Cluster {
    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn start_server(&self) -> Result<()> {
        let mut guard = self.server.lock().unwrap();
        if let Some(child) = guard.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        let log_path = self.root.join("postgres.log");
        let log = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&log_path)
                .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?
        };
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log file handle", e))?;
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: a Ctrl-C at the terminal goes to us, and we shut the server
            // down after the service has flushed, not before.
            .process_group(0);
        let child = spawn_as(cmd, self.run_as)
            .map_err(|e| Error::Embedded(format!("could not run postgres: {e}")))?;
        *guard = Some(child);
        let child = guard.as_mut().unwrap();

        let pid_file = self.data_dir().join("postmaster.pid");
        let deadline = Instant::now() + self.start_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                *guard = None;
                let log = read_from(&log_path, log_start);
                let in_use = log.contains("Address already in use");
                return Err(Error::Embedded(format!(
                    "postgres exited during start-up ({status}){}; server log:\n{log}",
                    if in_use { ", port already in use" } else { "" }
                )));
            }
            if server_is_ready(&pid_file, child.id()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = signal(child, libc::SIGQUIT);
                let _ = child.wait();
                *guard = None;
                return Err(Error::Embedded(format!(
                    "postgres did not accept connections within {:?}; server log:\n{}",
                    self.start_timeout,
                    read_from(&log_path, log_start)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_server(&self, first_signal: i32) -> Result<()> {
        let mut guard = self.server.lock().unwrap();
        let Some(mut child) = guard.take() else {
            return Ok(());
        };
        // Fast shutdown first; escalate if the server hangs (it should not).
        for (sig, wait) in [
            (first_signal, Duration::from_secs(30)),
            (libc::SIGQUIT, Duration::from_secs(5)),
            (libc::SIGKILL, Duration::from_secs(5)),
        ] {
            if signal(&child, sig).is_err() {
                break;
            }
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    // postmaster.pid goes away with a clean exit; after SIGQUIT it can stay.
                    debug!(port = self.port, "embedded PostgreSQL stopped");
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            warn!(
                signal = sig,
                "embedded PostgreSQL did not stop in time; escalating"
            );
        }
        let _ = child.wait();
        Ok(())
    }

    fn teardown(&self) {
        let _ = self.stop_server(libc::SIGINT);
        if let Some(dir) = self.tempdir.lock().unwrap().take() {
            let _ = dir.close();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn signal(child: &Child, sig: i32) -> std::io::Result<()> {
    // SAFETY: plain kill(2) on a pid we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `postmaster.pid` line 8 reads "ready" once the server accepts connections; line 1 must
/// be our child's pid (a file left by a killed server says "ready" too).
fn server_is_ready(pid_file: &Path, pid: u32) -> bool {
    fs::read_to_string(pid_file)
        .map(|text| {
            let mut lines = text.lines();
            lines.next().is_some_and(|l| l.trim() == pid.to_string())
                // A hot standby accepting connections says "standby".
                && lines
                    .nth(6)
                    .is_some_and(|l| matches!(l.trim(), "ready" | "standby"))
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// Cleanup at exit: statics (the tests' shared cluster) are never dropped, so an atexit hook
// tears down whatever is still alive. It also runs after a test panicked: the harness
// catches the panic and exits normally.

fn live_clusters() -> &'static Mutex<Vec<Weak<Cluster>>> {
    static LIVE: OnceLock<Mutex<Vec<Weak<Cluster>>>> = OnceLock::new();
    LIVE.get_or_init(|| {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(teardown_all_at_exit);
        }
        Mutex::new(Vec::new())
    })
}

fn register_for_exit_cleanup(cluster: &Arc<Cluster>) {
    let mut live = live_clusters().lock().unwrap();
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(cluster));
}

extern "C" fn teardown_all_at_exit() {
    let clusters: Vec<Arc<Cluster>> = match live_clusters().lock() {
        Ok(live) => live.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => return,
    };
    for cluster in clusters {
        cluster.teardown();
    }
}

/// Stops and removes every embedded cluster of this process (for signal handlers).
pub fn teardown_all() {
    teardown_all_at_exit();
}

// ---------------------------------------------------------------------------------------
// Process spawning. The parent-death signal fires when the *thread* that forked the child
// exits, so children are forked from one dedicated thread that lives as long as the process.

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawn_as(mut cmd: Command, run_as: Option<OsUser>) -> std::io::Result<Child> {
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("lakets-pg-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the process-spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap()
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

// ---------------------------------------------------------------------------------------

/// Finds a directory holding `initdb` and `postgres`: `LAKETS_PG_BINDIR`, then
/// `pg_config --bindir`, then PATH, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_server_bindir() -> Result<PathBuf> {
    search_bindir(&BindirSearch {
        explicit: std::env::var_os("LAKETS_PG_BINDIR").map(PathBuf::from),
        pg_config: Some(PathBuf::from("pg_config")),
        path: std::env::var_os("PATH"),
        versioned_root: PathBuf::from("/usr/lib/postgresql"),
    })
}

const INSTALL_HINT: &str = "install them with `apt-get install postgresql-15` (Debian/Ubuntu), \
     or pass --database-url to use an existing server";

/// Where to look for the server binaries (injectable for tests).
pub struct BindirSearch {
    pub explicit: Option<PathBuf>,
    pub pg_config: Option<PathBuf>,
    pub path: Option<std::ffi::OsString>,
    pub versioned_root: PathBuf,
}

pub fn search_bindir(search: &BindirSearch) -> Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = &search.explicit {
        return if has_server(dir) {
            Ok(dir.clone())
        } else {
            Err(Error::Embedded(format!(
                "LAKETS_PG_BINDIR={} does not contain initdb and postgres; point it at the \
                 PostgreSQL server binaries or unset it ({INSTALL_HINT})",
                dir.display()
            )))
        };
    }
    if let Some(pg_config) = &search.pg_config
        && let Ok(out) = Command::new(pg_config).arg("--bindir").output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = &search.path {
        for dir in std::env::split_paths(path) {
            // Debian links initdb into PATH but not postgres: follow the link.
            if let Ok(real) = fs::canonicalize(dir.join("initdb"))
                && let Some(real_dir) = real.parent()
                && has_server(real_dir)
            {
                return Ok(real_dir.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(&search.versioned_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    Err(Error::Embedded(format!(
        "PostgreSQL server binaries (initdb, postgres) were not found in LAKETS_PG_BINDIR, \
         `pg_config --bindir`, PATH or {}/*/bin; {INSTALL_HINT}",
        search.versioned_root.display()
    )))
}

fn os_user_for_server() -> Result<Option<OsUser>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::env::var("LAKETS_PG_OS_USER").unwrap_or_else(|_| "postgres".to_owned());
    let c_name = CString::new(name.clone())
        .map_err(|_| Error::Embedded("LAKETS_PG_OS_USER contains a NUL byte".into()))?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy out at once.
    let pw = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if pw.is_null() {
        return Err(Error::Embedded(format!(
            "running as root, and PostgreSQL refuses to run as root; the system user {name:?} \
             to run it as does not exist (create it with `useradd --system {name}`, or set \
             LAKETS_PG_OS_USER to another unprivileged user)"
        )));
    }
    // SAFETY: pw is non-null and points to a valid passwd struct.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(OsUser { uid, gid }))
}

fn chown(path: &Path, user: OsUser) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| Error::io(format!("giving {} to the server user", path.display()), e))
}

fn run_initdb(bindir: &Path, data: &Path, run_as: Option<OsUser>, pwfile: &Path) -> Result<()> {
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(data)
        .args([
            "-U",
            SUPERUSER,
            // Every connection, TCP and socket, proves the password.
            "--auth=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args([
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .stdin(Stdio::null());
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    let out = cmd
        .output()
        .map_err(|e| Error::Embedded(format!("could not run initdb: {e}")))?;
    if !out.status.success() {
        return Err(Error::Embedded(format!(
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn write_settings(data: &Path, socket: &Path, port: u16, options: &EmbeddedOptions) -> Result<()> {
    let mut conf = format!(
        "\n# lakets embedded cluster\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = '{}'\n\
         wal_level = logical\n\
         max_wal_senders = 20\n\
         max_replication_slots = 20\n\
         max_connections = 200\n\
         shared_buffers = '128MB'\n\
         max_wal_size = '2GB'\n\
         password_encryption = 'scram-sha-256'\n\
         logging_collector = off\n\
         log_min_messages = warning\n",
        socket.display()
    );
    if !options.durable {
        // No fsync, but commits stay synchronous: with asynchronous commit the walsender
        // only sees a commit once the WAL writer flushes it (up to wal_writer_delay, longer
        // when it hibernates), and WAL written without a commit is not flushed on request.
        conf.push_str("fsync = off\nfull_page_writes = off\n");
    }
    for (name, value) in &options.settings {
        conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    // Rewrite from initdb's file so that a retry with another port does not stack settings.
    let path = data.join("postgresql.conf");
    // Beside the data directory, not in it: a base backup would copy it (and the
    // server's user could not read it).
    let base_path = data
        .parent()
        .expect("the data directory is in the cluster's root")
        .join("postgresql.conf.initdb");
    if !base_path.exists() {
        fs::copy(&path, &base_path).map_err(|e| Error::io("saving postgresql.conf", e))?;
    }
    let base =
        fs::read_to_string(&base_path).map_err(|e| Error::io("reading postgresql.conf", e))?;
    fs::write(&path, base + &conf).map_err(|e| Error::io("writing postgresql.conf", e))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))
}

/// Creates `path` (it must not exist: no file or link planted there is followed) with
/// mode 0600, holding `text`.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// 128 random bits as hex, from the kernel.
fn random_password() -> Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("reading /dev/urandom for the cluster's password", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free TCP port on 127.0.0.1", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free TCP port on 127.0.0.1", e))
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.read_to_string(&mut text);
    }
    text
}

fn read_tail(path: &Path, max_bytes: u64) -> String {
    let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    read_from(path, len.saturating_sub(max_bytes))
}

fn percent_encode_path(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_name_the_package_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let err = search_bindir(&BindirSearch {
            explicit: None,
            pg_config: None,
            path: Some(empty.path().as_os_str().to_owned()),
            versioned_root: empty.path().to_path_buf(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("apt-get install postgresql-15"), "{err}");
        assert!(err.contains("were not found"), "{err}");
    }

    #[test]
    fn picks_the_newest_versioned_directory() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9", "15", "13"] {
            let bin = root.path().join(v).join("bin");
            fs::create_dir_all(&bin).unwrap();
            fs::write(bin.join("initdb"), "").unwrap();
            fs::write(bin.join("postgres"), "").unwrap();
        }
        let found = search_bindir(&BindirSearch {
            explicit: None,
            pg_config: None,
            path: None,
            versioned_root: root.path().to_path_buf(),
        })
        .unwrap();
        assert_eq!(found, root.path().join("15").join("bin"));
    }
}
