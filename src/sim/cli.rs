//! `coze-watch simulate`: the simulator's command-line flags and the command itself
//! (scenario file or generator flags, fault flags, the printed watch list).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use thiserror::Error;

use super::{Generator, Hints, Scenario};

/// Why the simulator did not start.
#[derive(Debug, Error)]
pub enum SimulateError {
    #[error("{flag}: {problem}")]
    Flag { flag: &'static str, problem: String },
    #[error("{}: {problem}", file.display())]
    Scenario { file: PathBuf, problem: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
}

fn flag(flag: &'static str, problem: impl Into<String>) -> SimulateError {
    SimulateError::Flag {
        flag,
        problem: problem.into(),
    }
}

fn duration(name: &'static str, text: &str) -> Result<Duration, SimulateError> {
    humantime::parse_duration(text.trim()).map_err(|e| flag(name, format!("{text:?}: {e}")))
}

/// The flags of `coze-watch simulate`.
#[derive(Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// A YAML scenario file (datasets, documents, durations, outcomes, faults).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["datasets", "documents_per_dataset", "fail_rate", "duration", "upload_spread", "seed"])]
    pub scenario: Option<PathBuf>,
    /// The bearer token to accept [default: the scenario's, else sim-token].
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
    /// Generator: number of datasets.
    #[arg(long, value_name = "N")]
    pub datasets: Option<usize>,
    /// Generator: documents per dataset.
    #[arg(long, value_name = "M")]
    pub documents_per_dataset: Option<usize>,
    /// Generator: share of documents that fail, 0..1.
    #[arg(long, value_name = "R")]
    pub fail_rate: Option<f64>,
    /// Generator: processing time range, e.g. 20s..5m.
    #[arg(long, value_name = "MIN..MAX")]
    pub duration: Option<String>,
    /// Generator: uploads start uniformly within this time.
    #[arg(long, value_name = "DUR")]
    pub upload_spread: Option<String>,
    /// Generator: random seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How honest remaining_time is: honest, x2, half, zero.
    #[arg(long)]
    pub hints: Option<Hints>,
    /// Fault: share of requests answered HTTP 500 / code 5000.
    #[arg(long, value_name = "R")]
    pub error_rate: Option<f64>,
    /// Fault: share of requests answered 429 / code 4013 with Retry-After.
    #[arg(long, value_name = "R")]
    pub rate_limit_rate: Option<f64>,
    /// Fault: the Retry-After of injected 429s, in seconds.
    #[arg(long, value_name = "SECS")]
    pub retry_after: Option<u64>,
    /// Fault: share of requests answered with an HTML body.
    #[arg(long, value_name = "R")]
    pub malformed_rate: Option<f64>,
    /// Fault: share of requests answered HTTP 200 with code 5000.
    #[arg(long, value_name = "R")]
    pub code_error_rate: Option<f64>,
    /// Fault: latency added to every answer, e.g. 300ms.
    #[arg(long, value_name = "DUR")]
    pub latency: Option<String>,
    /// Generator: put every dataset in this space (served by `GET /v1/datasets`).
    #[arg(long, value_name = "ID")]
    pub space: Option<String>,
    /// Serve like a self-hosted Coze Studio (document-list pages from 0).
    #[arg(long)]
    pub studio: bool,
    /// Enforce a Coze-like quota of this many requests per second (excess gets 429).
    #[arg(long, value_name = "RPS")]
    pub quota: Option<f64>,
}

/// Runs the simulator until SIGINT or SIGTERM.
pub async fn run(args: SimulateArgs) -> Result<ExitCode, SimulateError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first, so a signal during start-up ends the process cleanly.
    let mut term = signal(SignalKind::terminate()).map_err(SimulateError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(SimulateError::Signals)?;
    let (mut scenario, generated) = match &args.scenario {
        Some(file) => (read_scenario(file)?, false),
        None => (super::generate(&generator(&args)?), true),
    };
    if let Some(token) = &args.token {
        scenario.token = token.clone();
    }
    if let Some(h) = args.hints {
        scenario.hints = h;
    }
    scenario.studio |= args.studio;
    apply_fault_flags(&args, &mut scenario)?;
    let handle = super::start(scenario.clone(), args.listen)
        .await
        .map_err(|source| SimulateError::Listen {
            addr: args.listen,
            source,
        })?;
    println!(
        "coze-watch simulator listening on {} (token: {})",
        handle.base_url(),
        scenario.token
    );
    if generated {
        print_watch_list(&scenario);
    }
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn apply_fault_flags(args: &SimulateArgs, scenario: &mut Scenario) -> Result<(), SimulateError> {
    let f = &mut scenario.faults;
    for (flag, value, slot) in [
        ("--error-rate", args.error_rate, &mut f.error_rate),
        (
            "--rate-limit-rate",
            args.rate_limit_rate,
            &mut f.rate_limit_rate,
        ),
        (
            "--malformed-rate",
            args.malformed_rate,
            &mut f.malformed_rate,
        ),
        (
            "--code-error-rate",
            args.code_error_rate,
            &mut f.code_error_rate,
        ),
    ] {
        if let Some(v) = value {
            if !(0.0..=1.0).contains(&v) {
                return Err(self::flag(flag, format!("{v} must be between 0 and 1")));
            }
            *slot = v;
        }
    }
    if let Some(secs) = args.retry_after {
        f.retry_after_secs = Some(secs);
    }
    if let Some(text) = &args.latency {
        f.latency_ms = duration("--latency", text)?.as_millis() as u64;
    }
    if let Some(q) = args.quota {
        if q.is_nan() || q <= 0.0 {
            return Err(flag("--quota", format!("{q} must be greater than 0")));
        }
        scenario.quota_per_second = Some(q);
    }
    Ok(())
}

fn read_scenario(file: &Path) -> Result<Scenario, SimulateError> {
    let problem = |problem: String| SimulateError::Scenario {
        file: file.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(file).map_err(|e| problem(format!("cannot read: {e}")))?;
    serde_yaml::from_str(&text).map_err(|e| problem(format!("invalid scenario: {e}")))
}

fn generator(args: &SimulateArgs) -> Result<Generator, SimulateError> {
    let (min, max) = match &args.duration {
        Some(range) => parse_range(range)?,
        None => (Duration::from_secs(20), Duration::from_secs(120)),
    };
    let upload_spread = match &args.upload_spread {
        Some(s) => duration("--upload-spread", s)?,
        None => Duration::ZERO,
    };
    let fail_rate = args.fail_rate.unwrap_or(0.05);
    if !(0.0..=1.0).contains(&fail_rate) {
        return Err(flag(
            "--fail-rate",
            format!("{fail_rate} must be between 0 and 1"),
        ));
    }
    Ok(Generator {
        datasets: args.datasets.unwrap_or(2),
        documents_per_dataset: args.documents_per_dataset.unwrap_or(3),
        fail_rate,
        min_duration: min,
        max_duration: max,
        upload_spread,
        hints: args.hints.unwrap_or_default(),
        seed: args.seed.unwrap_or(1),
        space: args.space.clone(),
    })
}

/// `20s..5m` -> (20 s, 5 min).
fn parse_range(text: &str) -> Result<(Duration, Duration), SimulateError> {
    let (lo, hi) = text.split_once("..").ok_or_else(|| {
        flag(
            "--duration",
            format!("{text:?}: expected MIN..MAX, e.g. 20s..5m"),
        )
    })?;
    let (lo, hi) = (duration("--duration", lo)?, duration("--duration", hi)?);
    if lo > hi {
        return Err(flag(
            "--duration",
            format!("{text:?}: MIN is greater than MAX"),
        ));
    }
    Ok((lo, hi))
}

/// Prints the generated ids as a `watch:` section ready to paste into a config.
fn print_watch_list(scenario: &Scenario) {
    println!("watch:");
    for d in &scenario.datasets {
        let ids: Vec<String> = d
            .documents
            .iter()
            .map(|doc| format!("{:?}", doc.id))
            .collect();
        println!("  - dataset: {:?}", d.id);
        println!("    documents: [{}]", ids.join(", "));
    }
}
