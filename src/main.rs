//! The `coze-watch` binary: command-line definitions and wiring. The logic lives in the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use coze_watch::config::{self, Config, ConfigError, LogFormat, Mode, NotifierKind};
use coze_watch::daemon::RunContext;
use coze_watch::sim;

/// Exit code for an invalid configuration (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "coze-watch",
    version,
    about = "Watch Coze knowledge-base document processing and notify when documents finish, fail, stall or vanish"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: poll the watch list and fire notifiers.
    #[command(
        after_help = "Example:\n  COZE_API_TOKEN=pat_... coze-watch run -c /etc/coze-watch/config.yaml"
    )]
    Run(ConfigArg),
    /// Load and validate the config and watch list exactly as `run` would, and print a summary.
    #[command(
        after_help = "Example:\n  coze-watch check -c /etc/coze-watch/config.yaml\n  coze-watch check --lint -c config.example.yaml"
    )]
    Check(CheckArgs),
    /// Poll until every document is terminal: progress bars on a terminal, one line per change
    /// otherwise. Exit 0 all completed, 1 any failed or missing, 3 timed out, 4 API unusable
    /// (auth, permission, dataset not found), 130 interrupted. The token comes from
    /// $COZE_API_TOKEN.
    #[command(
        after_help = "Examples:\n  COZE_API_TOKEN=pat_... coze-watch wait 7442585813587000000 7442585813587000001 7442585813668000002 --timeout 30m\n  coze-watch wait $DATASET $DOC --json --quiet > result.json"
    )]
    Wait(WaitArgs),
    /// Run the built-in Coze API simulator on loopback.
    #[command(
        after_help = "Examples:\n  coze-watch simulate --datasets 2 --documents-per-dataset 3 --duration 5s..30s\n  coze-watch simulate --scenario scenario.yaml --listen 127.0.0.1:8787"
    )]
    Simulate(Box<SimulateArgs>),
    /// Show what the store knows: every document with state, progress, last change and next
    /// poll; pending and dead deliveries. Read-only: creates and changes no file.
    #[command(
        after_help = "Examples:\n  coze-watch status -c /etc/coze-watch/config.yaml\n  coze-watch status --json | jq '.documents[] | select(.state == \"failed\")'"
    )]
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List dead deliveries; re-queue (--retry, --retry-dead) or drop (--drop) them. Safe while
    /// the daemon runs (it is told to look at the outbox at once).
    #[command(
        after_help = "Examples:\n  coze-watch deliveries\n  coze-watch deliveries --retry evt_0191... evt_0192...\n  coze-watch deliveries --retry-dead"
    )]
    Deliveries(DeliveriesArgs),
    /// Send one synthetic document.completed event (marked "test": true) through notifier NAME.
    #[command(
        after_help = "Example:\n  coze-watch notify-test pipeline -c /etc/coze-watch/config.yaml"
    )]
    NotifyTest {
        /// The notifier's name in the config.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// A zero-set-up tour: the simulator and the daemon on loopback, narrated; exits by itself.
    #[command(after_help = "Example:\n  coze-watch demo")]
    Demo,
}

#[derive(Args)]
struct ConfigArg {
    /// Config file [default: $COZE_WATCH_CONFIG, else /etc/coze-watch/config.yaml]
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct WaitArgs {
    /// The dataset (knowledge base) id.
    dataset_id: String,
    /// The document ids to wait for.
    #[arg(required = true)]
    document_ids: Vec<String>,
    /// Give up after this long (exit 3), e.g. 30m.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print the final states as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// API base URL [default: $COZE_API_BASE, else https://api.coze.cn].
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 30m, 1h 30m)"))
}

#[derive(Args)]
struct DeliveriesArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Re-queue the dead deliveries of these event ids.
    #[arg(long, value_name = "ID", num_args = 1.., conflicts_with_all = ["retry_dead", "drop"])]
    retry: Vec<String>,
    /// Re-queue every dead delivery.
    #[arg(long, conflicts_with = "drop")]
    retry_dead: bool,
    /// Forget the dead deliveries of these event ids.
    #[arg(long, value_name = "ID", num_args = 1..)]
    drop: Vec<String>,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Report problems with the environment (unset variables, missing files and executables)
    /// as warnings, for CI and example files.
    #[arg(long)]
    lint: bool,
}

#[derive(Args)]
struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "ADDR")]
    listen: SocketAddr,
    /// A YAML scenario file (datasets, documents, durations, outcomes, faults).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["datasets", "documents_per_dataset", "fail_rate", "duration", "upload_spread", "seed"])]
    scenario: Option<PathBuf>,
    /// The bearer token to accept [default: the scenario's, else sim-token].
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Generator: number of datasets.
    #[arg(long, value_name = "N")]
    datasets: Option<usize>,
    /// Generator: documents per dataset.
    #[arg(long, value_name = "M")]
    documents_per_dataset: Option<usize>,
    /// Generator: share of documents that fail, 0..1.
    #[arg(long, value_name = "R")]
    fail_rate: Option<f64>,
    /// Generator: processing time range, e.g. 20s..5m.
    #[arg(long, value_name = "MIN..MAX")]
    duration: Option<String>,
    /// Generator: uploads start uniformly within this time.
    #[arg(long, value_name = "DUR")]
    upload_spread: Option<String>,
    /// Generator: random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// How honest remaining_time is: honest, x2, half, zero.
    #[arg(long)]
    hints: Option<sim::Hints>,
    /// Fault: share of requests answered HTTP 500 / code 5000.
    #[arg(long, value_name = "R")]
    error_rate: Option<f64>,
    /// Fault: share of requests answered 429 / code 4013 with Retry-After.
    #[arg(long, value_name = "R")]
    rate_limit_rate: Option<f64>,
    /// Fault: the Retry-After of injected 429s, in seconds.
    #[arg(long, value_name = "SECS")]
    retry_after: Option<u64>,
    /// Fault: share of requests answered with an HTML body.
    #[arg(long, value_name = "R")]
    malformed_rate: Option<f64>,
    /// Fault: share of requests answered HTTP 200 with code 5000.
    #[arg(long, value_name = "R")]
    code_error_rate: Option<f64>,
    /// Fault: latency added to every answer, e.g. 300ms.
    #[arg(long, value_name = "DUR")]
    latency: Option<String>,
    /// Enforce a Coze-like quota of this many requests per second (excess gets 429).
    #[arg(long, value_name = "RPS")]
    quota: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Simulate(args) => run_async(simulate(*args)),
        Command::Run(args) => {
            // Before anything else: a SIGHUP or SIGTERM during start-up must not kill us.
            match EarlySignals::install() {
                Ok(early) => run_daemon_async(run_daemon(args, early)),
                Err(e) => {
                    eprintln!("error: cannot install signal handlers: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::NotifyTest { name, config } => run_async(notify_test(name, config)),
        Command::Status { config, json } => status(&config, json),
        Command::Wait(args) => run_async(wait(args)),
        Command::Deliveries(args) => deliveries(&args),
        Command::Demo => run_async(async {
            init_logging_with("coze_watch::event=info,warn", LogFormat::Text);
            coze_watch::demo::run().await?;
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    run_on(
        tokio::runtime::Builder::new_multi_thread().worker_threads(2),
        fut,
    )
}

/// The daemon's runtime: one thread. Its work is waiting on sockets and timers; a second
/// worker would only add cross-thread wake-ups (store writes still go to the blocking pool;
/// the hot reads run inline on their own connection).
fn run_daemon_async(fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    run_on(&mut tokio::runtime::Builder::new_current_thread(), fut)
}

fn run_on(
    builder: &mut tokio::runtime::Builder,
    fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    init_logging_with("info", LogFormat::Text);
}

/// Logs to stderr; the level comes from `RUST_LOG`, else `default`.
fn init_logging_with(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Under systemd the journal adds its own timestamps and shows no colours.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!journal && std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text if journal => builder.without_time().try_init(),
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Signal flags set from the first instruction of `run`, before the runtime exists. The
/// async handlers installed later take over; these only remember what came before them.
struct EarlySignals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    usr1: Arc<AtomicBool>,
}

impl EarlySignals {
    fn install() -> std::io::Result<Self> {
        let term = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGTERM, term.clone())?;
        signal_hook::flag::register(SIGINT, term.clone())?;
        signal_hook::flag::register(SIGHUP, hup.clone())?;
        let usr1 = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGUSR1, usr1.clone())?;
        Ok(EarlySignals { term, hup, usr1 })
    }
}

async fn run_daemon(args: ConfigArg, early: EarlySignals) -> anyhow::Result<ExitCode> {
    let path = config::config_path(args.config.as_deref(), &config::process_env);
    let loaded = match config::load(&path, &config::process_env, Mode::Strict) {
        Ok(l) => l,
        Err(diags) => {
            print_problems("error", &diags.errors);
            eprintln!("{}: the config is not valid; not starting", path.display());
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    init_logging_with("info", loaded.config.log.format);
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "config");
    }
    // Files we create (store, WAL, lock) are private to the service user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let (nudge_tx, nudge_rx) = mpsc::unbounded_channel();
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]).context("installing signal handlers")?;
    if early.usr1.swap(false, Ordering::SeqCst) {
        let _ = nudge_tx.send(());
    }
    if early.term.load(Ordering::SeqCst) {
        shutdown.cancel();
    }
    if early.hup.swap(false, Ordering::SeqCst) {
        let _ = reload_tx.send(());
    }
    let stop = shutdown.clone();
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            match sig {
                SIGHUP => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = reload_tx.send(());
                }
                SIGUSR1 => {
                    let _ = nudge_tx.send(());
                }
                _ => {
                    tracing::info!(signal = sig, "stopping");
                    stop.cancel();
                }
            }
        }
    });
    let ctx = RunContext {
        shutdown,
        reload: reload_rx,
        nudge: nudge_rx,
        extra_notifiers: Vec::new(),
        wakeups: Arc::new(AtomicU64::new(0)),
        on_ready: Box::new(|| tracing::info!("ready")),
    };
    match coze_watch::daemon::run(loaded.config, ctx).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    let path = config::config_path(args.config.config.as_deref(), &config::process_env);
    let mode = if args.lint { Mode::Lint } else { Mode::Strict };
    match config::load(&path, &config::process_env, mode) {
        Ok(loaded) => {
            print_problems("warning", &loaded.warnings);
            print_summary(&loaded.config);
            ExitCode::SUCCESS
        }
        Err(diags) => {
            print_problems("warning", &diags.warnings);
            print_problems("error", &diags.errors);
            eprintln!(
                "{}: {} error(s); the config is not valid",
                path.display(),
                diags.errors.len()
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn wait(args: WaitArgs) -> anyhow::Result<ExitCode> {
    use coze_watch::wait::{self, Display, WaitOptions};
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        Ok(ExitCode::from(wait::exit::USAGE))
    };
    let Some(token) = config::process_env("COZE_API_TOKEN").filter(|t| !t.trim().is_empty()) else {
        return usage("COZE_API_TOKEN is not set: export the API token (it needs the readDocumentProgress permission)".into());
    };
    let base = config::base_url_choice(args.base_url.as_deref(), None, &config::process_env);
    let base_url = match url::Url::parse(&base) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        _ => {
            return usage(format!(
                "base URL {}: not an absolute http(s) URL",
                coze_watch::redact::url(&base)
            ));
        }
    };
    for id in std::iter::once(&args.dataset_id).chain(&args.document_ids) {
        if id.trim().is_empty() || id.trim() != id {
            return usage(format!("{id:?} is not an id"));
        }
    }
    let display = if args.quiet {
        Display::Quiet
    } else if std::io::stderr().is_terminal() {
        Display::Bars
    } else {
        Display::Lines
    };
    let interrupt = CancellationToken::new();
    let stop = interrupt.clone();
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    tokio::spawn(async move {
        if signals.next().await.is_some() {
            stop.cancel();
        }
    });
    let opts = WaitOptions {
        dataset: coze_watch::ids::DatasetId::new(&args.dataset_id),
        documents: args
            .document_ids
            .iter()
            .map(coze_watch::ids::DocumentId::new)
            .collect(),
        timeout: args.timeout,
        base_url,
        token: coze_watch::secret::Secret::new(token.trim()),
        display,
    };
    let report = match wait::run(opts, interrupt).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::from(report.exit_code))
}

/// Exit code for an unusable store (sysexits EX_DATAERR).
const EXIT_STORE: u8 = 65;

/// Loads the config for the read-side commands: problems with the environment (an unset token
/// in an operator's shell) do not stop them.
fn load_for_inspection(args: &ConfigArg) -> Result<Config, ExitCode> {
    let path = config::config_path(args.config.as_deref(), &config::process_env);
    config::load(&path, &config::process_env, Mode::Lint)
        .map(|l| l.config)
        .map_err(|diags| {
            print_problems("error", &diags.errors);
            ExitCode::from(EXIT_CONFIG)
        })
}

fn store_error(e: &coze_watch::store::StoreError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_STORE)
}

fn status(args: &ConfigArg, json: bool) -> ExitCode {
    let config = match load_for_inspection(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = coze_watch::store::Store::open_read_only(&config.state.dir).and_then(|s| {
        coze_watch::status::snapshot(&s, Some(&config.watch), coze_watch::wall::UnixMs::now())
    });
    match report {
        Ok(r) if json => match serde_json::to_string_pretty(&r) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(r) => {
            print!("{}", coze_watch::status::render_text(&r));
            ExitCode::SUCCESS
        }
        Err(e) => store_error(&e),
    }
}

fn deliveries(args: &DeliveriesArgs) -> ExitCode {
    let config = match load_for_inspection(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = &config.state.dir;
    let store = match coze_watch::store::Store::open_existing(dir) {
        Ok(s) => s,
        Err(e) => return store_error(&e),
    };
    let now = coze_watch::wall::UnixMs::now();
    let changed = if args.retry_dead {
        store
            .requeue_dead(None, now)
            .map(|n| format!("re-queued {n} dead deliveries"))
    } else if !args.retry.is_empty() {
        store
            .requeue_dead(Some(&args.retry), now)
            .map(|n| format!("re-queued {n} dead deliveries"))
    } else if !args.drop.is_empty() {
        store
            .drop_dead(Some(&args.drop))
            .map(|n| format!("dropped {n} dead deliveries"))
    } else {
        Ok(String::new())
    };
    match changed {
        Ok(msg) if !msg.is_empty() => {
            println!("{msg}");
            if let Some(pid) = coze_watch::store::daemon_pid(dir) {
                // Tell the running daemon to look at its outbox now.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGUSR1,
                );
            }
        }
        Ok(_) => {}
        Err(e) => return store_error(&e),
    }
    match store.deliveries("dead", 1000) {
        Ok(dead) => {
            println!("{} dead deliveries", dead.len());
            for d in dead {
                println!(
                    "  {} {} {} -> {} (attempts {}): {}",
                    d.event_id,
                    d.event_type,
                    d.document_id,
                    d.notifier,
                    d.attempts,
                    d.last_error.unwrap_or_default().escape_debug()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => store_error(&e),
    }
}

async fn notify_test(name: String, args: ConfigArg) -> anyhow::Result<ExitCode> {
    init_logging();
    let path = config::config_path(args.config.as_deref(), &config::process_env);
    let loaded = match config::load(&path, &config::process_env, Mode::Strict) {
        Ok(l) => l,
        Err(diags) => {
            print_problems("error", &diags.errors);
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let Some(entry) = loaded.config.notifiers.iter().find(|n| n.name == name) else {
        let names: Vec<&str> = loaded
            .config
            .notifiers
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        eprintln!(
            "error: {}: no notifier named {name:?} (notifiers: {})",
            path.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return Ok(ExitCode::FAILURE);
    };
    let notifier = match coze_watch::notify::build(entry) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: notifier {name:?}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let body = coze_watch::notify::EventBody::test_event(coze_watch::wall::UnixMs::now());
    let job = coze_watch::notify::Job {
        event_id: body.data.event_id.clone(),
        event_type: body.event_type,
        body: body.to_json(),
        event: body,
        attempt: 1,
    };
    match notifier.deliver(&job).await {
        coze_watch::notify::Outcome::Delivered => {
            println!("{name}: delivered test event {}", job.event_id);
            Ok(ExitCode::SUCCESS)
        }
        coze_watch::notify::Outcome::Retry { error, .. } => {
            println!("{name}: not delivered (would be retried): {error}");
            Ok(ExitCode::FAILURE)
        }
        coze_watch::notify::Outcome::Permanent { error } => {
            println!("{name}: not delivered (permanent): {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_problems(kind: &str, problems: &[ConfigError]) {
    for p in problems {
        eprintln!("{kind}: {p}");
    }
}

fn print_summary(c: &Config) {
    let token_from = match &c.api.token_source {
        config::TokenSource::Env(name) => format!("${name}"),
        config::TokenSource::File(p) => p.display().to_string(),
    };
    println!("config:     {}", c.file.display());
    println!(
        "api:        {} (token from {token_from}, {} ids per request, {}/s)",
        coze_watch::redact::url(c.api.base_url.as_str()),
        c.api.limits.max_ids_per_request,
        c.api.limits.max_requests_per_second
    );
    println!(
        "watching:   {} dataset(s), {} document(s)",
        c.watch.datasets.len(),
        c.watch.document_count()
    );
    let notifiers: Vec<String> = c
        .notifiers
        .iter()
        .map(|n| match &n.kind {
            NotifierKind::Webhook(w) => format!("{} (webhook to {})", n.name, w.url),
            kind => format!("{} ({})", n.name, kind.type_name()),
        })
        .collect();
    println!(
        "notifiers:  {}",
        if notifiers.is_empty() {
            "none".to_string()
        } else {
            notifiers.join(", ")
        }
    );
    println!("state dir:  {}", c.state.dir.display());
    let (capped, uncapped) = c.worst_case_requests_per_day();
    let mut line = format!("worst case: {capped} requests/day");
    if uncapped > capped {
        line.push_str(&format!(" (limits cap {uncapped})"));
    }
    println!("{line}");
    if capped > config::PUBLISHED_DAILY_QUOTA && c.api.limits.max_requests_per_day.is_none() {
        eprintln!(
            "warning: the worst case exceeds Coze's published quota of {} requests/day per space; \
             set api.max_requests_per_day to your plan's quota",
            config::PUBLISHED_DAILY_QUOTA
        );
    }
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    // Handlers first, so a signal during start-up ends the process cleanly.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let (mut scenario, generated) = match &args.scenario {
        Some(file) => (read_scenario(file)?, false),
        None => (sim::generate(&generator(&args)?), true),
    };
    if let Some(token) = &args.token {
        scenario.token = token.clone();
    }
    if let Some(h) = args.hints {
        scenario.hints = h;
    }
    apply_fault_flags(&args, &mut scenario)?;
    let handle = sim::start(scenario.clone(), args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "coze-watch simulator listening on {} (token: {})",
        handle.base_url(),
        scenario.token
    );
    if generated {
        print_watch_list(&scenario);
    }
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn apply_fault_flags(args: &SimulateArgs, scenario: &mut sim::Scenario) -> anyhow::Result<()> {
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
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "{flag} {v} must be between 0 and 1"
            );
            *slot = v;
        }
    }
    if let Some(secs) = args.retry_after {
        f.retry_after_secs = Some(secs);
    }
    if let Some(text) = &args.latency {
        let d = humantime::parse_duration(text).with_context(|| format!("--latency {text:?}"))?;
        f.latency_ms = d.as_millis() as u64;
    }
    if let Some(q) = args.quota {
        anyhow::ensure!(q > 0.0, "--quota {q} must be greater than 0");
        scenario.quota_per_second = Some(q);
    }
    Ok(())
}

fn read_scenario(file: &Path) -> anyhow::Result<sim::Scenario> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read scenario {}", file.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{}: invalid scenario", file.display()))
}

fn generator(args: &SimulateArgs) -> anyhow::Result<sim::Generator> {
    let (min, max) = match &args.duration {
        Some(range) => parse_range(range)?,
        None => (Duration::from_secs(20), Duration::from_secs(120)),
    };
    let upload_spread = match &args.upload_spread {
        Some(s) => {
            humantime::parse_duration(s).with_context(|| format!("--upload-spread {s:?}"))?
        }
        None => Duration::ZERO,
    };
    let fail_rate = args.fail_rate.unwrap_or(0.05);
    anyhow::ensure!(
        (0.0..=1.0).contains(&fail_rate),
        "--fail-rate {fail_rate} must be between 0 and 1"
    );
    Ok(sim::Generator {
        datasets: args.datasets.unwrap_or(2),
        documents_per_dataset: args.documents_per_dataset.unwrap_or(3),
        fail_rate,
        min_duration: min,
        max_duration: max,
        upload_spread,
        hints: args.hints.unwrap_or_default(),
        seed: args.seed.unwrap_or(1),
    })
}

/// `20s..5m` -> (20 s, 5 min).
fn parse_range(text: &str) -> anyhow::Result<(Duration, Duration)> {
    let (lo, hi) = text
        .split_once("..")
        .with_context(|| format!("--duration {text:?}: expected MIN..MAX, e.g. 20s..5m"))?;
    let lo =
        humantime::parse_duration(lo.trim()).with_context(|| format!("--duration {text:?}"))?;
    let hi =
        humantime::parse_duration(hi.trim()).with_context(|| format!("--duration {text:?}"))?;
    anyhow::ensure!(lo <= hi, "--duration {text:?}: MIN is greater than MAX");
    Ok((lo, hi))
}

/// Prints the generated ids as a `watch:` section ready to paste into a config.
fn print_watch_list(scenario: &sim::Scenario) {
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
