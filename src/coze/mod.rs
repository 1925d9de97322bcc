//! The Coze API: wire types ([`wire`]), error classification ([`error`]), the shared request
//! budget ([`limiter`]) and the HTTP client ([`client`]).
//!
//! This module speaks HTTP to Coze and classifies what comes back. It keeps no document state
//! and makes no scheduling decisions.

pub mod client;
pub mod error;
pub mod limiter;
pub mod listing;
pub mod wire;

pub use client::{BatchOutcome, ClientSettings, CozeClient};
pub use error::{Answer, ApiError, Endpoint, LocalError, TransientKind};
pub use listing::{DatasetInfo, DatasetPage, DocumentInfo, DocumentPage};
pub use wire::{DocumentProgress, DocumentStatus};
