//! The command line: every command, argument and help text (clap), and what is generated from
//! them, so nothing can drift: shell completions and man pages.
//!
//! Definitions only; `main.rs` wires each command to the library.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "coze-watch",
    version,
    about = "Watch Coze knowledge-base document processing and notify when documents finish, fail, stall or vanish"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Upload local files or web pages to a knowledge base, then wait for them or hand them
    /// to the running daemon.
    #[command(
        after_help = "Examples:\n  coze-watch upload 7442585813587000000 report.pdf notes.txt --wait --timeout 30m\n  coze-watch upload 7442585813587000000 docs/*.pdf --batch nightly --watch -c /etc/coze-watch/config.yaml\n  coze-watch upload 7442585813587000000 --url https://example.com/faq --update-interval 24"
    )]
    Upload(crate::upload::UploadArgs),
    /// Poll until every document is terminal: progress bars on a terminal, one line per change
    /// otherwise. Exit 0 all completed, 1 any failed or missing, 3 timed out, 4 API unusable
    /// (auth, permission, dataset not found), 130 interrupted. The token comes from
    /// $COZE_API_TOKEN.
    #[command(
        after_help = "Examples:\n  COZE_API_TOKEN=pat_... coze-watch wait 7442585813587000000 7442585813587000001 7442585813668000002 --timeout 30m\n  coze-watch wait $DATASET $DOC --json --quiet > result.json"
    )]
    Wait(crate::wait::WaitArgs),
    /// Run the built-in Coze API simulator on loopback.
    #[command(
        after_help = "Examples:\n  coze-watch simulate --datasets 2 --documents-per-dataset 3 --duration 5s..30s\n  coze-watch simulate --scenario scenario.yaml --listen 127.0.0.1:8787"
    )]
    Simulate(Box<crate::sim::cli::SimulateArgs>),
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
    /// The run-time watch list: add, remove and list entries kept in the store.
    Watch {
        #[command(subcommand)]
        command: crate::runtime::cli::WatchCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// A zero-set-up tour: the simulator and the daemon on loopback, narrated; exits by itself.
    #[command(after_help = "Example:\n  coze-watch demo")]
    Demo {
        /// Show the daemon's log lines among the narration (else they go to a file named at
        /// the end).
        #[arg(long)]
        verbose: bool,
    },
    /// Print shell completions (bash, zsh, fish) for coze-watch.
    #[command(
        after_help = "Examples:\n  coze-watch completions bash > /usr/share/bash-completion/completions/coze-watch\n  coze-watch completions fish > ~/.config/fish/completions/coze-watch.fish"
    )]
    Completions {
        /// The shell: bash, zsh or fish.
        shell: Shell,
    },
    /// About the configuration file itself.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write a man page for coze-watch and each subcommand into DIR (for packaging).
    #[command(hide = true)]
    Man {
        /// Where to write the pages.
        dir: PathBuf,
    },
}

/// `coze-watch config ...`.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema of the configuration file (for editors: yaml-language-server).
    #[command(after_help = "Example:\n  coze-watch config schema > config.schema.json")]
    Schema,
}

/// The shells completions are written for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args)]
pub struct ConfigArg {
    /// Config file [default: $COZE_WATCH_CONFIG, else /etc/coze-watch/config.yaml]
    #[arg(short, long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Args)]
pub struct DeliveriesArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Re-queue the dead deliveries of these event ids.
    #[arg(long, value_name = "ID", num_args = 1.., conflicts_with_all = ["retry_dead", "drop"])]
    pub retry: Vec<String>,
    /// Re-queue every dead delivery.
    #[arg(long, conflicts_with = "drop")]
    pub retry_dead: bool,
    /// Forget the dead deliveries of these event ids.
    #[arg(long, value_name = "ID", num_args = 1..)]
    pub drop: Vec<String>,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Report problems with the environment (unset variables, missing files and executables)
    /// as warnings, for CI and example files.
    #[arg(long)]
    pub lint: bool,
}

/// The whole command line, as clap sees it.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Writes the completions for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn std::io::Write) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command(), "coze-watch", out);
}

/// Writes `coze-watch.1` and `coze-watch-<sub>.1` for every visible subcommand (nested ones
/// too, e.g. `coze-watch-watch-add.1`) into `dir`; returns the files written.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let root = command();
    write_page(dir, root.clone(), "coze-watch", &mut written)?;
    Ok(written)
}

fn write_page(
    dir: &Path,
    cmd: clap::Command,
    name: &str,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let page = cmd.clone().name(name.to_string());
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_page(dir, sub.clone(), &sub_name, written)?;
    }
    Ok(())
}
