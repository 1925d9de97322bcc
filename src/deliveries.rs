//! `coze-watch deliveries`: list dead deliveries, re-queue or drop them.
//!
//! Works on the running daemon's store (SQLite serialises the writers) and then tells the
//! daemon (SIGUSR1) to look at its outbox at once. Never delivers anything itself.

use crate::store::{self, DeliveryRow, Location, Store, StoreError};
use crate::wall::UnixMs;

/// The most dead deliveries listed.
const LISTED: usize = 1000;

/// What to do before listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    List,
    /// Re-queue the dead deliveries of these event ids.
    Retry(Vec<String>),
    RetryAllDead,
    /// Forget the dead deliveries of these event ids.
    Drop(Vec<String>),
}

/// What the command did and what is dead now.
#[derive(Debug)]
pub struct Report {
    /// `None` for [`Action::List`].
    pub changed: Option<String>,
    pub dead: Vec<DeliveryRow>,
}

/// Applies `action` to the store at `at`, nudges a running daemon, and lists what is dead.
pub fn run(at: &Location, action: &Action) -> Result<Report, StoreError> {
    let store = Store::open_existing_at(at)?;
    let now = UnixMs::now();
    let changed = match action {
        Action::List => None,
        Action::RetryAllDead => Some(format!(
            "re-queued {} dead deliveries",
            store.requeue_dead(None, now)?
        )),
        Action::Retry(ids) => Some(format!(
            "re-queued {} dead deliveries",
            store.requeue_dead(Some(ids), now)?
        )),
        Action::Drop(ids) => Some(format!(
            "dropped {} dead deliveries",
            store.drop_dead(Some(ids))?
        )),
    };
    if changed.is_some()
        && let Location::Dir(dir) = at
        && let Some(pid) = store::daemon_pid(dir)
    {
        // Best effort: the daemon also looks at its outbox on its own schedule.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        );
    }
    Ok(Report {
        changed,
        dead: store.deliveries("dead", LISTED)?,
    })
}

/// The report for people: what changed, then one line per dead delivery.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    if let Some(changed) = &r.changed {
        out.push_str(changed);
        out.push('\n');
    }
    out.push_str(&format!("{} dead deliveries\n", r.dead.len()));
    for d in &r.dead {
        out.push_str(&format!(
            "  {} {} {} -> {} (attempts {}, dead since {}): {}\n",
            d.event_id,
            d.event_type,
            d.document_id,
            d.notifier,
            d.attempts,
            d.updated_at.rfc3339_seconds(),
            crate::status::one_line(
                d.last_error.as_deref().unwrap_or_default(),
                crate::status::ERROR_CHARS
            )
        ));
    }
    out
}
