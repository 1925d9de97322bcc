//! coze-watch: turns Coze knowledge-base document processing into reliable notifications.
//!
//! Coze processes uploaded documents asynchronously; the only way to learn the outcome is to
//! poll `POST /v1/datasets/{dataset_id}/process`. coze-watch polls a YAML watch list with
//! batching, hints and backoff, and tells people and programs when documents finish or fail.
//!
//! # Layout
//!
//! In pipeline order (data flows one way: config -> schedule -> client -> tracker -> store ->
//! notifiers; nothing flows back up except through the store):
//!
//! - [`config`]: YAML file -> validated [`config::Config`]; every config error.
//! - [`schedule`]: when each dataset is polled next (pure).
//! - [`coze`]: the Coze API: wire types, client, rate limiter, error classification.
//! - [`http`]: what the Coze client and the webhook notifier share.
//! - [`poller`]: one poll of one dataset (the daemon and `wait` share it).
//! - [`discover`]: which knowledge bases to list and which listed documents to watch (pure).
//! - [`tracker`]: the document state machine (pure).
//! - [`store`]: SQLite: document rows, schedules, the outbox, the state-dir lock.
//! - [`notify`]: event bodies, the dispatcher and the notifiers.
//! - [`daemon`]: the run loop of `coze-watch run`, tying the above together.
//! - [`ops`], [`metrics`], [`status`]: what an operator sees; [`runtime`]: the run-time
//!   watch list's input rules (`watch add`, `POST /v1/watch`).
//! - Commands: [`cli`] (the definitions, completions, man pages), [`wait`], [`deliveries`],
//!   [`check`], [`demo`]; process set-up: [`signals`],
//!   [`logging`], [`exit`].
//! - [`sim`]: the built-in Coze API simulator used by the demo, the tests and the benchmarks.
//! - Vocabulary: [`event`], [`ids`], [`wall`], [`window`], [`secret`], [`redact`].
//!
//! See `ARCHITECTURE.md` for the map.

pub mod config;
pub mod schedule;
pub mod coze;
pub mod http;
pub mod poller;
pub mod discover;
pub mod tracker;
pub mod store;
pub mod notify;
pub mod daemon;
pub mod ops;
pub mod metrics;
pub mod status;
pub mod runtime;
pub mod wait;
pub mod upload;
pub mod deliveries;
pub mod check;
pub mod demo;
pub mod cli;
pub mod signals;
pub mod logging;
pub mod exit;
pub mod sim;
pub mod event;
pub mod ids;
pub mod wall;
pub mod window;
pub mod secret;
pub mod redact;
pub mod access;
