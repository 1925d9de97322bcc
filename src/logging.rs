//! Logging set-up: tracing to stderr, the level from `RUST_LOG` (else a default), text or JSON.
//!
//! Under systemd (`JOURNAL_STREAM`) text lines carry no timestamp and no colour: the journal
//! adds its own.

use std::io::IsTerminal;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call is ignored.
pub fn init(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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
