//! The `coze-watch` binary: wiring only. The command line is defined in `coze_watch::cli`, the
//! logic lives in the library; every command returns an exit code from `coze_watch::exit`.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context;
use clap::Parser;

use coze_watch::cli::{CheckArgs, Cli, Command, ConfigArg, ConfigCommand, DeliveriesArgs};
use coze_watch::config::{self, Config, ConfigError, LogFormat, Mode};
use coze_watch::daemon::RunContext;
use coze_watch::signals::EarlySignals;
use coze_watch::store::StoreError;
use coze_watch::{exit, logging, sim, status};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Simulate(args) => run_async(async {
            logging::init("info", LogFormat::Text);
            Ok(sim::cli::run(*args).await?)
        }),
        Command::Run(args) => {
            // Before anything else: a SIGHUP or SIGTERM during start-up must not kill us.
            match EarlySignals::install() {
                Ok(early) => run_daemon_async(run_daemon(args, early)),
                Err(e) => {
                    eprintln!("error: cannot install signal handlers: {e}");
                    ExitCode::from(exit::FAILURE)
                }
            }
        }
        Command::NotifyTest { name, config } => run_async(notify_test(name, config)),
        Command::Status { config, json } => status(&config, json),
        Command::Wait(args) => run_async(async {
            let code = coze_watch::wait::command(args).await?;
            Ok(ExitCode::from(code))
        }),
        Command::Upload(args) => {
            let target = if args.watch {
                match load_for_inspection(&args.config) {
                    Ok(c) => Some(coze_watch::upload::WatchTarget {
                        store: coze_watch::store::Location::of(&c.state),
                        notifiers: c.notifiers.iter().map(|n| n.name.clone()).collect(),
                    }),
                    Err(code) => return code,
                }
            } else {
                None
            };
            run_async(async move {
                let code = coze_watch::upload::command(args, target).await?;
                Ok(ExitCode::from(code))
            })
        }
        Command::Deliveries(args) => deliveries(&args),
        Command::Watch { command, config } => match load_for_inspection(&config) {
            Ok(c) => {
                let names: Vec<String> = c.notifiers.iter().map(|n| n.name.clone()).collect();
                ExitCode::from(coze_watch::runtime::cli::run(
                    &coze_watch::store::Location::of(&c.state),
                    &names,
                    &command,
                ))
            }
            Err(code) => code,
        },
        Command::Completions { shell } => {
            coze_watch::cli::completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Schema,
        } => {
            println!("{}", config::schema());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match coze_watch::cli::write_man_pages(&dir) {
            Ok(pages) => {
                println!("wrote {} man pages to {}", pages.len(), dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", dir.display());
                ExitCode::from(exit::FAILURE)
            }
        },
        Command::Demo { verbose } => run_async(async move {
            let filter = "coze_watch::event=info,warn";
            let log = if verbose {
                logging::init(filter, LogFormat::Text);
                None
            } else {
                let path = coze_watch::demo::log_path();
                logging::init_file(filter, std::fs::File::create(&path)?);
                Some(path)
            };
            coze_watch::demo::run(log.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn run_async(fut: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    run_on(
        tokio::runtime::Builder::new_multi_thread().worker_threads(2),
        fut,
    )
}

/// The daemon's runtime: one thread. Its work is waiting on sockets and timers; a second
/// worker would only add cross-thread wake-ups (store writes still go to the blocking pool;
/// the hot reads run inline on their own connection).
fn run_daemon_async(fut: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    run_on(&mut tokio::runtime::Builder::new_current_thread(), fut)
}

fn run_on(
    builder: &mut tokio::runtime::Builder,
    fut: impl Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Loads the config as `run` would; on errors prints them and returns exit 78.
fn load_strict(args: &ConfigArg, then: &str) -> Result<config::Loaded, ExitCode> {
    let path = config::config_path(args.config.as_deref(), &config::process_env);
    config::load(&path, &config::process_env, Mode::Strict).map_err(|diags| {
        print_problems("error", &diags.errors);
        if !then.is_empty() {
            eprintln!("{}: {then}", path.display());
        }
        ExitCode::from(exit::CONFIG)
    })
}

async fn run_daemon(args: ConfigArg, early: EarlySignals) -> anyhow::Result<ExitCode> {
    let loaded = match load_strict(&args, "the config is not valid; not starting") {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    logging::init("info", loaded.config.log.format);
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "config");
    }
    // Files we create (store, WAL, lock) are private to the service user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let signals = coze_watch::signals::forward(early).context("installing signal handlers")?;
    let ctx = RunContext {
        shutdown: signals.shutdown,
        reload: signals.reload,
        nudge: signals.nudge,
        extra_notifiers: Vec::new(),
        wakeups: Arc::new(AtomicU64::new(0)),
        on_ready: Box::new(|| tracing::info!("ready")),
        clock: coze_watch::wall::Clock::system(),
        ops_listener: None,
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
            let (summary, warning) = coze_watch::check::render_summary(&loaded.config);
            print!("{summary}");
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(diags) => {
            print_problems("warning", &diags.warnings);
            print_problems("error", &diags.errors);
            let n = diags.errors.len();
            eprintln!("{}: {n} error(s); the config is not valid", path.display());
            ExitCode::from(exit::CONFIG)
        }
    }
}

/// Loads the config for the read-side commands: problems with the environment (an unset token
/// in an operator's shell) do not stop them.
fn load_for_inspection(args: &ConfigArg) -> Result<Config, ExitCode> {
    let path = config::config_path(args.config.as_deref(), &config::process_env);
    config::load(&path, &config::process_env, Mode::Lint)
        .map(|l| l.config)
        .map_err(|diags| {
            print_problems("error", &diags.errors);
            ExitCode::from(exit::CONFIG)
        })
}

fn store_error(e: &StoreError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(exit::STORE)
}

fn status(args: &ConfigArg, json: bool) -> ExitCode {
    let config = match load_for_inspection(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match status::show(&config, json) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => store_error(&e),
    }
}

fn deliveries(args: &DeliveriesArgs) -> ExitCode {
    use coze_watch::deliveries::{self, Action};
    let config = match load_for_inspection(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let action = match (args.retry_dead, args.retry.is_empty(), args.drop.is_empty()) {
        (true, _, _) => Action::RetryAllDead,
        (_, false, _) => Action::Retry(args.retry.clone()),
        (_, _, false) => Action::Drop(args.drop.clone()),
        _ => Action::List,
    };
    match deliveries::run(&coze_watch::store::Location::of(&config.state), &action) {
        Ok(report) => {
            print!("{}", deliveries::render_text(&report));
            ExitCode::SUCCESS
        }
        Err(e) => store_error(&e),
    }
}

async fn notify_test(name: String, args: ConfigArg) -> anyhow::Result<ExitCode> {
    use coze_watch::notify::{Outcome, probe};
    logging::init("info", LogFormat::Text);
    let loaded = match load_strict(&args, "") {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    match probe::send_test(&loaded.config, &name).await {
        Ok((event_id, outcome)) => {
            println!("{}", probe::render_text(&name, &event_id, &outcome));
            let delivered = outcome == Outcome::Delivered;
            Ok(ExitCode::from(if delivered {
                exit::OK
            } else {
                exit::FAILURE
            }))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(exit::FAILURE))
        }
    }
}

fn print_problems(kind: &str, problems: &[ConfigError]) {
    for p in problems {
        eprintln!("{kind}: {p}");
    }
}
