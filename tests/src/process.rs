//! Running the real `keyplane` binary as a child process.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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

/// A `keyplane serve` child process logging JSON to a pipe.
pub struct ControlPlaneProcess {
    /// The child.
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
        let mut child = Command::new(workspace_binary("keyplane"))
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
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

    /// Sends SIGTERM, waits for a clean exit and returns the whole log.
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().expect("pid");
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
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
