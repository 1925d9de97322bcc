//! coze-watch: turns Coze knowledge-base document processing into reliable notifications.
//!
//! Coze processes uploaded documents asynchronously; the only way to learn the outcome is to
//! poll `POST /v1/datasets/{dataset_id}/process`. coze-watch polls a YAML watch list with
//! batching, hints and backoff, and tells people and programs when documents finish or fail.
//!
//! # Layout
//!
//! - [`config`]: YAML file -> validated [`config::Config`]; every config error.
//! - [`coze`]: the Coze API: wire types, client, rate limiter, error classification.
//! - [`sim`]: the built-in Coze API simulator used by the demo, the tests and the benchmarks.
//! - [`event`], [`ids`], [`secret`], [`redact`]: small shared vocabulary types.
//!
//! Data flows one way: config -> schedule -> client -> tracker -> store -> notifiers.
//! See `ARCHITECTURE.md` for the map.

pub mod check;
pub mod config;
pub mod coze;
pub mod daemon;
pub mod deliveries;
pub mod demo;
pub mod event;
pub mod exit;
pub mod http;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod poller;
pub mod redact;
pub mod schedule;
pub mod secret;
pub mod signals;
pub mod sim;
pub mod status;
pub mod store;
pub mod tracker;
pub mod wait;
pub mod wall;
pub mod window;
