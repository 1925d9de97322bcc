//! The exec notifier: runs a program per event (SPEC section 6).
//!
//! argv, never a shell; the event body on stdin; the event's fields in `COZE_*` variables; a
//! clean environment (PATH, HOME, LANG, TZ and the configured `env`), so the API token and the
//! webhook secrets never reach the child. The child leads its own process group; at the
//! timeout the whole group gets SIGTERM, and SIGKILL 5 s later. Output is drained to the end and
//! its first 4 KiB logged.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use tokio::process::Command;

use super::{Body, BoxFuture, Job, Notifier, Outcome};
use crate::config::{ExecConfig, RetryPolicy};

/// Output bytes kept for the log.
pub const OUTPUT_LOGGED: usize = 4096;
/// Between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long output may keep flowing after the child exited (a grandchild holding the pipe).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);
/// Variables passed through from our own environment.
const PASS_THROUGH: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub struct ExecNotifier {
    name: String,
    config: ExecConfig,
}

impl ExecNotifier {
    pub fn new(name: impl Into<String>, config: ExecConfig) -> Self {
        ExecNotifier {
            name: name.into(),
            config,
        }
    }

    async fn run(&self, job: &Job) -> Outcome {
        let mut cmd = self.command(job);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Retry {
                    error: format!("cannot start {}: {e}", self.config.command[0]),
                    retry_after: None,
                };
            }
        };
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        let stdin = child.stdin.take();
        let body = job.body.clone();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A child that does not read stdin closes the pipe: not an error.
                let _ = stdin.write_all(body.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
        };
        let out = Captured::start(child.stdout.take());
        let err = Captured::start(child.stderr.take());
        let wait = async {
            match tokio::time::timeout(self.config.timeout, child.wait()).await {
                Ok(status) => Ok(status),
                Err(_) => {
                    stop_group(pgid, &mut child).await;
                    Err(())
                }
            }
        };
        let ((), status) = tokio::join!(feed, wait);
        let output = combine(&out.finish().await, &err.finish().await);
        let span = tracing::info_span!("exec", notifier = %self.name, event_id = %job.event_id);
        match status {
            Ok(Ok(s)) if s.success() => {
                if !output.is_empty() {
                    span.in_scope(|| tracing::info!(output = %output, "hook output"));
                }
                Outcome::Delivered
            }
            Ok(Ok(s)) => Outcome::Retry {
                error: format!(
                    "{} exited with {s}{}",
                    self.config.command[0],
                    tail(&output)
                ),
                retry_after: None,
            },
            Ok(Err(e)) => Outcome::Retry {
                error: format!("waiting for {}: {e}", self.config.command[0]),
                retry_after: None,
            },
            Err(()) => Outcome::Retry {
                error: format!(
                    "{} timed out after {} and was killed{}",
                    self.config.command[0],
                    humantime::format_duration(self.config.timeout),
                    tail(&output)
                ),
                retry_after: None,
            },
        }
    }

    fn command(&self, job: &Job) -> Command {
        let mut cmd = Command::new(&self.config.command[0]);
        cmd.args(&self.config.command[1..])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for name in PASS_THROUGH {
            if let Ok(v) = std::env::var(name) {
                cmd.env(name, v);
            } else if name == "PATH" {
                cmd.env(name, DEFAULT_PATH);
            }
        }
        for (k, v) in event_env(job) {
            cmd.env(k, v);
        }
        cmd.envs(&self.config.env);
        cmd
    }
}

impl Notifier for ExecNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Outcome> {
        Box::pin(self.run(job))
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.config.retry.clone()
    }
}

/// The `COZE_*` variables of an event. Values are data: no shell ever sees them. NUL bytes,
/// which an environment cannot hold, are dropped.
pub fn event_env(job: &Job) -> Vec<(&'static str, String)> {
    let text = |v: &str| v.replace('\0', "");
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let mut env = vec![
        ("COZE_WATCH_EVENT", job.event_type.as_str().to_string()),
        ("COZE_WATCH_EVENT_ID", job.event_id.to_string()),
    ];
    match &job.event {
        Body::Document(b) => {
            let d = &b.data;
            env.extend([
                ("COZE_DATASET_ID", text(&d.dataset_id)),
                ("COZE_DOCUMENT_ID", text(&d.document_id)),
                (
                    "COZE_DOCUMENT_NAME",
                    text(d.document_name.as_deref().unwrap_or_default()),
                ),
                ("COZE_DOCUMENT_STATUS", num(d.status)),
                ("COZE_DOCUMENT_PROGRESS", num(d.progress)),
                (
                    "COZE_STATUS_DESCRIPT",
                    text(d.status_descript.as_deref().unwrap_or_default()),
                ),
            ]);
        }
        Body::Batch(b) => {
            let d = &b.data;
            let c = &d.counts;
            env.extend([
                ("COZE_BATCH", text(&d.batch)),
                ("COZE_BATCH_ID", d.batch_id.clone()),
                ("COZE_BATCH_DOCUMENTS", d.documents.len().to_string()),
                ("COZE_BATCH_COMPLETED", c.completed.to_string()),
                (
                    "COZE_BATCH_NOT_COMPLETED",
                    (c.failed + c.missing + c.timed_out).to_string(),
                ),
            ]);
        }
    }
    env
}

/// SIGTERM to the child's group, SIGKILL 5 s later if it is still there.
async fn stop_group(pgid: Option<Pid>, child: &mut tokio::process::Child) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait().await;
        } else {
            // The leader is gone; grandchildren in its group may not be.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    } else {
        let _ = child.kill().await;
    }
}

/// A pipe read to its end in the background, keeping the first [`OUTPUT_LOGGED`] bytes.
struct Captured {
    kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Captured {
    fn start<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> Self {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = kept.clone();
        let task = pipe.map(|mut pipe| {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut k = sink.lock().unwrap_or_else(|p| p.into_inner());
                    let room = OUTPUT_LOGGED.saturating_sub(k.len());
                    k.extend_from_slice(&buf[..n.min(room)]);
                }
            })
        });
        Captured { kept, task }
    }

    /// Waits for the end of the output, at most [`DRAIN_AFTER_EXIT`] (a grandchild that left
    /// the process group may hold the pipe open forever), and returns what was kept.
    async fn finish(mut self) -> Vec<u8> {
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(DRAIN_AFTER_EXIT, task).await.is_err() {
                abort.abort();
            }
        }
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn combine(out: &[u8], err: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(out).into_owned();
    if !err.is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&String::from_utf8_lossy(err));
    }
    s.chars()
        .take(OUTPUT_LOGGED)
        .collect::<String>()
        .trim_end()
        .to_string()
}

fn tail(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; output: {output:?}")
    }
}
