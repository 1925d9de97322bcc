//! `coze-watch wait` against the simulator: every exit code, the line and JSON output, the
//! request budget, and progress bars on a pseudo-terminal.

mod helper;

use std::process::Output;
use std::time::Duration;

use coze_watch::sim::{Outcome, SimHandle};
use helper::{doc, scenario, start_sim};
use tokio::process::Command;

const DS: &str = "7400000000000000001";
const A: &str = "7500000000000000001";
const B: &str = "7500000000000000002";

fn wait_cmd(sim: &SimHandle, token: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coze-watch"));
    cmd.arg("wait")
        .args(args)
        .args(["--base-url", &sim.base_url()])
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    if let Some(t) = token {
        cmd.env("COZE_API_TOKEN", t);
    }
    cmd
}

async fn run(sim: &SimHandle, args: &[&str]) -> Output {
    wait_cmd(sim, Some(sim.token()), args)
        .output()
        .await
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_0_when_every_document_completes_with_a_line_per_change() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(A, 1, Outcome::Completed), doc(B, 2, Outcome::Completed)],
    )]))
    .await;
    let out = run(&sim, &[DS, A, B]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{A} \"file-{A}.pdf\": processing")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{A} \"file-{A}.pdf\": completed in")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{B} \"file-{B}.pdf\": completed in")),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "no terminal codes when stderr is not a terminal"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_1_when_a_document_fails_with_its_reason() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(A, 1, Outcome::Completed), doc(B, 1, Outcome::Failed)],
    )]))
    .await;
    let out = run(&sim, &[DS, A, B]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("failed: parse error: encrypted pdf"),
        "{}",
        stderr(&out)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_3_on_timeout_and_1_wins_over_3() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(A, 600, Outcome::Completed), doc(B, 1, Outcome::Failed)],
    )]))
    .await;
    // Three independent runs, side by side.
    let (out, quiet, both) = tokio::join!(
        run(&sim, &[DS, A, "--timeout", "2s"]),
        run(&sim, &[DS, A, "--timeout", "1s", "--quiet"]),
        run(&sim, &[DS, A, B, "--timeout", "3s"]),
    );
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "timed out after 2s; not done: {A} \"file-{A}.pdf\": processing"
        )),
        "{err}"
    );
    assert_eq!(quiet.status.code(), Some(3));
    assert!(stderr(&quiet).is_empty(), "{}", stderr(&quiet));
    assert_eq!(both.status.code(), Some(1), "a failure and a timeout: 1");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_4_when_the_token_is_refused_or_the_dataset_is_unknown() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 60, Outcome::Completed)])])).await;
    // Both runs side by side.
    let (refused, unknown) = tokio::join!(
        wait_cmd(&sim, Some("pat_WRONG"), &[DS, A]).output(),
        run(&sim, &["7400000000000000999", A])
    );
    let out = refused.unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(err.contains("unusable"), "{err}");
    assert!(err.contains("coze.cn token against api.coze.com"), "{err}");
    assert!(!err.contains("pat_WRONG"), "{err}");
    assert!(sim.stats().unauthorized >= 2, "retried before giving up");
    let out = unknown;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("dataset not found"),
        "{}",
        stderr(&out)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_and_unknown_ids_are_said_at_once() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let unknown = "7500000000000000777";
    let closed = helper::receiver::reserve_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coze-watch"));
    cmd.args([
        "wait",
        DS,
        A,
        "--timeout",
        "3s",
        "--base-url",
        &format!("http://{closed}"),
    ])
    .env_clear()
    .env("COZE_API_TOKEN", sim.token());
    // Both runs side by side.
    let args = [DS, A, unknown, "--timeout", "3s"];
    let (out, unreachable) = tokio::join!(run(&sim, &args), cmd.output());
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "not in any answer yet: {unknown} (the API leaves out ids"
        )),
        "{err}"
    );
    assert_eq!(
        err.matches("not in any answer yet").count(),
        1,
        "once a minute: {err}"
    );
    let out = unreachable.unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot reach the Coze API at http://{closed}: ")),
        "{err}"
    );
    assert!(err.contains("retrying until --timeout"), "{err}");
    assert_eq!(
        err.matches("cannot reach").count(),
        1,
        "said once, not per retry: {err}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_2_on_usage_errors() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 1, Outcome::Completed)])])).await;
    let out = wait_cmd(&sim, None, &[DS, A]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("COZE_API_TOKEN is not set"));
    let out = run(&sim, &[DS]).await;
    assert_eq!(out.status.code(), Some(2), "a document id is required");
    let out = run(&sim, &[DS, A, "--timeout", "soon"]).await;
    assert_eq!(out.status.code(), Some(2));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_130_on_ctrl_c() {
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 600, Outcome::Completed)])])).await;
    let child = wait_cmd(&sim, Some(sim.token()), &[DS, A])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sim.stats().requests == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(130));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_prints_the_final_states() {
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(A, 1, Outcome::Completed), doc(B, 1, Outcome::Failed)],
    )]))
    .await;
    let out = run(&sim, &[DS, A, B, "--json", "--quiet"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.is_empty(), "--quiet: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dataset_id"], DS);
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["exit_code"], 1);
    assert!(v["error"].is_null());
    let docs = v["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    let keys: Vec<&str> = docs[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "document_id",
        "document_name",
        "state",
        "status",
        "progress",
        "remaining_time",
        "status_descript",
        "reason",
        "elapsed_seconds",
    ] {
        assert!(keys.contains(&k), "{k} missing: {keys:?}");
    }
    let b = docs.iter().find(|d| d["document_id"] == B).unwrap();
    assert_eq!(b["state"], "failed");
    assert_eq!(b["status"], 9);
    assert_eq!(b["status_descript"], "parse error: encrypted pdf");
    sim.shutdown().await;
}

/// In-process with paused time (`wait::run` is the command's engine): a 20 s document costs
/// a moment of real time.
#[tokio::test(start_paused = true)]
async fn honest_hints_cost_far_less_than_a_request_a_second() {
    use coze_watch::ids::{DatasetId, DocumentId};
    use coze_watch::wait::{Display, WaitOptions};
    let sim = start_sim(scenario(vec![(DS, vec![doc(A, 20, Outcome::Completed)])])).await;
    let opts = WaitOptions {
        dataset: DatasetId::new(DS),
        documents: vec![DocumentId::new(A)],
        timeout: None,
        base_url: sim.base_url().parse().unwrap(),
        token: coze_watch::secret::Secret::new(sim.token()),
        display: Display::Quiet,
    };
    let report = coze_watch::wait::run(opts, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.exit_code, 0, "{report:?}");
    let requests = sim.stats().requests;
    // One request a second would be about 20.
    assert!(requests <= 4, "{requests} requests for a 20 s document");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_are_drawn_on_a_terminal() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "script(1) is missing on CI"
        );
        return;
    }
    let sim = start_sim(scenario(vec![(
        DS,
        vec![doc(A, 1, Outcome::Completed), doc(B, 2, Outcome::Completed)],
    )]))
    .await;
    let inner = format!(
        "{} wait {DS} {A} {B} --base-url {}",
        env!("CARGO_BIN_EXE_coze-watch"),
        sim.base_url()
    );
    // script(1) runs the command on a pseudo-terminal and copies what it draws to stdout.
    let out = Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TERM", "xterm")
        .env("COZE_API_TOKEN", sim.token())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("done in"), "{text}");
    assert!(text.contains("\u{1b}["), "no terminal drawing: {text:?}");
    assert!(
        text.contains("=>") || text.contains("=="),
        "no bar: {text:?}"
    );
    assert!(text.contains(&format!("file-{A}.pdf")), "{text}");
    sim.shutdown().await;
}
