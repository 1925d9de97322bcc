//! Every exit code of the `coze-watch` binary, in one place (SPEC section 2). Sysexits where
//! one fits.

/// Success: a clean shutdown, a valid config, every document completed.
pub const OK: u8 = 0;
/// A fatal error (another instance holds the state dir), a failed or missing document
/// (`wait`), a notifier that did not deliver (`notify-test`).
pub const FAILURE: u8 = 1;
/// Usage error (clap's own, and `wait`'s argument checks).
pub const USAGE: u8 = 2;
/// `wait --timeout` passed.
pub const TIMED_OUT: u8 = 3;
/// `wait`: the API is unusable (auth, permission, dataset not found, a local condition).
pub const API_UNUSABLE: u8 = 4;
/// The store is unusable: corrupt, from a newer version, or not migrated (EX_DATAERR).
pub const STORE: u8 = 65;
/// The config is invalid (EX_CONFIG).
pub const CONFIG: u8 = 78;
/// Interrupted by SIGINT or SIGTERM (`wait`).
pub const INTERRUPTED: u8 = 130;
