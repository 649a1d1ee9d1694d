//! Running the real `keyplane` binary as a child process.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Backend;

/// Path of a workspace binary built next to the test executable.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test executables live in target/<profile>/deps, binaries one level up.
    let dir = exe.parent().expect("exe dir");
    let path = if dir.ends_with("deps") { dir.parent().expect("target dir").join(name) } else { dir.join(name) };
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (the README test command does)",
        path.display()
    );
    path
}

/// Runs the `keyplane` binary with `args` to completion.
/// Reads a child's output line by line until `find` picks something out of
/// a line (within 30 s; `what` names the child in failures), then keeps
/// draining it in the background so the child never blocks on a full pipe.
pub async fn first_line_with<T, R>(output: R, what: &str, mut find: impl FnMut(&str) -> Option<T>) -> T
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let mut lines = BufReader::new(output).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read output") {
            if let Some(found) = find(&line) {
                return found;
            }
        }
        panic!("{what} exited before it was ready");
    })
    .await
    .unwrap_or_else(|_| panic!("{what} was not ready in time"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

pub fn keyplane(args: &[&str]) -> std::process::Output {
    std::process::Command::new(workspace_binary("keyplane")).args(args).output().expect("run keyplane")
}

/// Runs `keyplane serve` (on free ports unless `args` name the console's)
/// with `args`, which must make it refuse to start; returns what it said
/// on stderr.
pub fn refused_start(args: &[&str]) -> String {
    let mut command = vec!["serve", "--listen", "127.0.0.1:0"];
    if !args.contains(&"--console-listen") {
        command.extend(["--console-listen", "127.0.0.1:0"]);
    }
    let output = keyplane(&[&command[..], args].concat());
    assert!(!output.status.success(), "keyplane serve {args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Fields of `/proc/<pid>/stat` after the command name (which may contain
/// spaces); empty when the process is gone.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect()).unwrap_or_default()
}

/// CPU time (user + system, in clock ticks) a process has used; 0 when it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let fields = stat_fields(pid);
    let field = |i: usize| fields.get(i).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// The parent of a process, if it is still there.
pub fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(pid).get(1).and_then(|p| p.parse().ok())
}

/// Resident set size of a process in KiB; 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// Sends `kill -<signal> <pid>`.
pub fn send_signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
}

/// A `keyplane serve` child process logging JSON to a pipe.
pub struct ControlPlaneProcess {
    pub child: Child,
    /// Address it serves on.
    pub addr: String,
    /// Log lines read so far (read continuously, so the child never blocks on a full pipe).
    pub log: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl ControlPlaneProcess {
    /// Starts `keyplane serve --listen 127.0.0.1:0 <args>` and waits until it serves.
    pub async fn start(args: &[String]) -> Self {
        Self::start_at("127.0.0.1:0", args).await
    }

    /// Starts `keyplane serve --listen <listen> <args>` and waits until it
    /// serves (a restart on the address it had: its sidecars follow it there).
    pub async fn start_at(listen: &str, args: &[String]) -> Self {
        let mut child = Command::new(workspace_binary("keyplane"))
            .args(["--log-format", "json", "serve", "--listen", listen, "--console-listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info,keyplane_control_plane=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn keyplane");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut log = Vec::new();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read log") {
                log.push(line.clone());
                let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(addr) = parsed["fields"]["addr"].as_str() {
                    return addr.to_owned();
                }
            }
            panic!("keyplane exited before serving:\n{}", log.join("\n"));
        })
        .await
        .expect("keyplane started in time");
        let log = Arc::new(Mutex::new(log));
        let sink = log.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("log lock").push(line);
            }
        });
        Self { child, addr, log, reader }
    }

    /// Kills the process with SIGKILL (no shutdown at all) and waits for it.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("wait");
        let _ = self.reader.await;
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            send_signal(pid, signal);
        }
    }

    /// Sends SIGTERM, waits for a clean exit and returns the whole log.
    pub async fn stop(mut self) -> String {
        send_signal(self.child.id().expect("pid"), "TERM");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exit in time")
            .expect("wait");
        let _ = self.reader.await;
        let log = self.log.lock().expect("log lock").join("\n");
        assert!(status.success(), "keyplane exited with {status}:\n{log}");
        log
    }
}

/// A `keyplane-sidecar` child process following a control plane, for
/// tests that kill one.
pub struct SidecarProcess {
    child: Child,
    /// Its HTTP address (forward-auth, health, metrics).
    pub http_addr: String,
    /// Its gRPC address (ext_authz).
    pub grpc_addr: String,
    _credential: tempfile::NamedTempFile,
}

impl SidecarProcess {
    /// Starts the sidecar binary with `credential` on free loopback ports
    /// and waits until it is ready.
    pub async fn start(plane: &crate::TestControlPlane, credential: &str) -> Self {
        Self::start_following(&[plane.addr.to_string()], credential).await
    }

    /// Starts the sidecar binary following the control-plane replicas at
    /// `addresses` (`host:port`) and waits until it is ready.
    pub async fn start_following(addresses: &[String], credential: &str) -> Self {
        Self::start_following_with(addresses, credential, &[]).await
    }

    /// As [`Self::start_following`], with `extra` flags.
    pub async fn start_following_with(addresses: &[String], credential: &str, extra: &[&str]) -> Self {
        Self::start_at(addresses, credential, ("127.0.0.1:0", "127.0.0.1:0"), extra).await
    }

    /// As [`Self::start_following_with`], listening on `(grpc, http)` (a
    /// restart on the addresses it had).
    pub async fn start_at(addresses: &[String], credential: &str, listen: (&str, &str), extra: &[&str]) -> Self {
        let mut file = tempfile::NamedTempFile::new().expect("credential file");
        std::io::Write::write_all(&mut file, credential.as_bytes()).expect("write credential");
        let control_planes: Vec<String> = addresses.iter().map(|addr| format!("http://{addr}")).collect();
        let mut child = Command::new(workspace_binary("keyplane-sidecar"))
            .args(["--control-plane", &control_planes.join(","), "--log-format", "json"])
            .arg("--credential-file")
            .arg(file.path())
            .args(["--grpc-listen", listen.0, "--http-listen", listen.1])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn keyplane-sidecar");
        let (grpc_addr, http_addr) =
            first_line_with(child.stderr.take().expect("stderr"), "keyplane-sidecar", |line| {
                let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                let field = |name: &str| parsed["fields"][name].as_str().map(str::to_owned);
                field("grpc").zip(field("http"))
            })
            .await;
        let ready = format!("http://{http_addr}/readyz");
        crate::eventually(
            || async { reqwest::get(&ready).await.map(|r| r.status().as_u16()).unwrap_or(0) },
            |s| *s == 200,
        )
        .await;
        Self { child, http_addr, grpc_addr, _credential: file }
    }

    /// The forward-auth URL.
    pub fn check_url(&self) -> String {
        format!("http://{}/check", self.http_addr)
    }

    /// Kills the process with SIGKILL: no shutdown, no credits given back.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("wait");
    }
}

/// What a real `keyplane serve` delivering webhooks to loopback needs: its
/// arguments (cheap argon2, http to 127.0.0.0/8 allowed, the given webhook
/// flags), its database URL and its root token file.
pub struct WebhookServer {
    pub args: Vec<String>,
    pub database_url: String,
    pub root_token_file: PathBuf,
}

impl WebhookServer {
    /// The setup for `backend` with data in `dir`; `None` when the backend
    /// is not available (the test is skipped).
    pub async fn prepare(backend: Backend, dir: &std::path::Path, webhook_flags: &[&str]) -> Option<Self> {
        let database_url = backend.fresh_database(dir).await?;
        Some(Self::with_database(backend, database_url, dir, webhook_flags))
    }

    /// The setup for a fresh database at `database_url`.
    pub fn with_database(
        backend: Backend,
        database_url: String,
        dir: &std::path::Path,
        webhook_flags: &[&str],
    ) -> Self {
        let mut args: Vec<String> = [
            "--data-dir",
            &dir.display().to_string(),
            // The names (aliases of --egress-allow-cidr / --egress-allow-http).
            "--webhook-allow-cidr",
            "127.0.0.0/8",
            "--webhook-allow-http",
            "--argon2-memory-kib",
            "256",
            "--argon2-iterations",
            "1",
        ]
        .iter()
        .chain(webhook_flags)
        .map(|s| (*s).to_owned())
        .collect();
        let root_token_file = dir.join("root-token");
        if backend == Backend::Postgres {
            let key_file = dir.join("master.key");
            std::fs::write(&key_file, keyplane_control_plane::crypto::MasterKeys::generate_line("k1")).unwrap();
            // Postgres generates no root token (replicas must share one): give it.
            std::fs::write(&root_token_file, format!("kproot_test_{}{}", crate::random_org(), crate::random_org()))
                .unwrap();
            args.extend(["--database-url".into(), database_url.clone()]);
            args.extend(["--master-key-file".into(), key_file.display().to_string()]);
            args.extend(["--root-token-file".into(), root_token_file.display().to_string()]);
        }
        Self { args, database_url, root_token_file }
    }

    /// The root token (the SQLite default generates it at first start).
    pub fn root_token(&self) -> String {
        std::fs::read_to_string(&self.root_token_file).expect("root token file").trim().to_owned()
    }
}
