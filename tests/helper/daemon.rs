//! The real `coze-watch` binary as a child process: config files in a temp dir, stderr
//! captured line by line, waits with deadlines, signals, and kill on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const TOKEN: &str = coze_watch::sim::DEFAULT_TOKEN;

/// Polls fast enough for tests: the body of a `poll:` section.
pub const FAST_POLL: &str = "  min_interval: 500ms\n  max_interval: 5s\n  error_backoff: {initial: 300ms, max: 2s, multiplier: 2}\n";

/// A temp dir holding a config file and the state dir.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Self {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.yaml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    /// Runs `coze-watch ARGS -c config.yaml` with a clean environment (and the simulator's
    /// token): (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
            .args(args)
            .arg("-c")
            .arg(self.config_path())
            .env_clear()
            .env("HOME", self.path())
            .env("COZE_API_TOKEN", TOKEN)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Writes config.yaml: `api` pointed at `base_url`, the `poll` section body (e.g.
    /// [`FAST_POLL`]), the state dir, a log notifier, then `rest` (e.g. `watch:`).
    pub fn write_config(&self, base_url: &str, poll: &str, rest: &str) {
        let text = format!(
            "api:\n  base_url: {base_url}\n  max_requests_per_second: 50\n  request_timeout: 2s\n\
             poll:\n{poll}\
             state:\n  dir: {}\n\
             notifiers:\n  - name: journal\n    type: log\n{rest}",
            self.state_dir().display()
        );
        std::fs::write(self.config_path(), text).unwrap();
    }
}

impl Workdir {
    /// Points the config at a PostgreSQL database (its `state.dir` stays, unused), with
    /// `extra` lines added under `state:` (e.g. `lease_ttl`).
    pub fn use_postgres(&self, url: &url::Url, extra: &str) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        let text = text.replacen("state:\n", &format!("state:\n  url: {url}\n{extra}"), 1);
        std::fs::write(self.config_path(), text).unwrap();
    }
}

/// `watch:` with one dataset and these documents.
pub fn watch(dataset: &str, docs: &[&str]) -> String {
    let ids: Vec<String> = docs.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "watch:\n  - dataset: \"{dataset}\"\n    documents: [{}]\n",
        ids.join(", ")
    )
}

pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(work: &Workdir) -> Daemon {
        Self::start_with(work, &[])
    }

    pub fn start_with(work: &Workdir, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coze-watch"));
        cmd.args(["run", "-c"])
            .arg(work.config_path())
            .env_clear()
            .env("HOME", work.path())
            .env("COZE_API_TOKEN", TOKEN)
            .env("RUST_LOG", "info,coze_watch::daemon=trace")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, lines }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `n` lines contain `needle`; panics with the log after `timeout`.
    pub async fn wait_for_count(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} x {needle:?}; log:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_for(&self, needle: &str, timeout: Duration) {
        self.wait_for_count(needle, 1, timeout).await
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread drain the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {timeout:?}; log:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and a clean exit 0.
    pub async fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(0), "log:\n{}", self.lines().join("\n"));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
