//! The `veilgate` binary run as a user runs it: a config file, the
//! environment, stderr captured until it says where it listens.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

/// A running binary; killed when dropped.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    pub lines: Lines<BufReader<ChildStderr>>,
    /// Everything logged up to the "listening" line.
    pub log: String,
    /// The config file it was started with (a test may rewrite it).
    pub config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    /// The next stderr line containing `needle` (30 s at most).
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no log line with {needle:?} in time"))
                .expect("read stderr")
                .unwrap_or_else(|| panic!("veilgate exited before logging {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Sends SIGHUP.
    pub fn hangup(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill");
        assert!(status.success());
    }
}

/// Starts the binary with `config` (TOML, which should listen on port 0)
/// and `env`, and waits for its "listening" log line (text or JSON).
pub async fn start(config: &str, env: &[(&str, &str)]) -> Running {
    start_after(config, env, None).await
}

/// As [`start`], but the binary is exec'd by `sh` after the shell command
/// `prelude` (e.g. `ulimit -S -n 512`) ran.
pub async fn start_after(config: &str, env: &[(&str, &str)], prelude: Option<&str>) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("veilgate.toml");
    std::fs::write(&path, config).expect("write config");
    let binary = env!("CARGO_BIN_EXE_veilgate");
    let mut cmd = match prelude {
        None => tokio::process::Command::new(binary),
        Some(prelude) => {
            let mut sh = tokio::process::Command::new("sh");
            sh.arg("-c").arg(format!("{prelude} && exec \"$0\" \"$@\"")).arg(binary);
            sh
        }
    };
    cmd.arg("--config").arg(&path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    // Each run has a data directory of its own (token, usage store) unless
    // the test says otherwise.
    cmd.env("XDG_DATA_HOME", dir.path().join("data"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn veilgate");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("veilgate starts in time")
            .expect("read stderr")
            .expect("veilgate exited before listening");
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening")
            && let Some(rest) = line.split("addr").nth(1)
        {
            let addr: String = rest
                .trim_start_matches(['=', '"', ':', ' '])
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            break addr.parse().expect("listen address");
        }
    };
    Running { child, addr, lines, log, config_path: path, _dir: dir }
}
