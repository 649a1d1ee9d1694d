//! Running the real `keyplane` binary as a child process.

use std::path::PathBuf;
use std::process::Stdio;
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
    /// Log lines read so far.
    pub log: Vec<String>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
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
        Self { child, addr, log, lines }
    }

    /// Sends SIGTERM, waits for a clean exit and returns the whole log.
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().expect("pid");
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exit in time")
            .expect("wait");
        while let Ok(Some(line)) = self.lines.next_line().await {
            self.log.push(line);
        }
        assert!(status.success(), "keyplane exited with {status}:\n{}", self.log.join("\n"));
        self.log.join("\n")
    }
}
