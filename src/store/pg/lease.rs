//! Leadership on a shared database: the one-row `lease` table (holder, epoch, expiry by the
//! database's clock), taken and renewed with single-statement conditional updates (they work
//! through pgbouncer in transaction mode), and the fence: with a fence set, every write
//! transaction first checks, under a share lock on the lease row, that the epoch is still
//! this holder's, so a paused old leader writes nothing after a takeover.

use std::time::Duration;

use super::documents::col;
use super::{PgStore, PgTx};
use crate::store::StoreError;

/// What a leader's writes carry: its holder id and epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub epoch: i64,
}

/// What an attempt to take the lease found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Ours, with this epoch.
    Leader(i64),
    /// Another holder's, for about this long still (the database's clock).
    Held {
        holder: String,
        expires_in: Duration,
    },
}

/// The lease as stored: who holds it, and for how long still.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub holder: String,
    pub epoch: i64,
    /// Negative once expired.
    pub expires_in_ms: i64,
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl PgStore {
    /// Takes the lease if nobody holds it or it expired (a new epoch), else says who holds it.
    pub fn try_acquire(&self, holder: &str, ttl: Duration) -> Result<Acquired, StoreError> {
        let rows = self.query(
            "INSERT INTO lease (id, holder, epoch, expires_at)
             VALUES (1, $1, 1, now() + $2::bigint * interval '1 millisecond')
             ON CONFLICT (id) DO UPDATE
             SET holder = excluded.holder, epoch = lease.epoch + 1, expires_at = excluded.expires_at
             WHERE lease.expires_at < now()
             RETURNING epoch",
            &[&holder, &millis(ttl)],
        )?;
        if let Some(r) = rows.first() {
            return Ok(Acquired::Leader(col(self, r, 0)?));
        }
        match self.lease()? {
            Some(l) => Ok(Acquired::Held {
                holder: l.holder,
                expires_in: Duration::from_millis(l.expires_in_ms.max(0) as u64),
            }),
            // Deleted between the two statements: try again at once.
            None => Ok(Acquired::Held {
                holder: String::new(),
                expires_in: Duration::ZERO,
            }),
        }
    }

    /// Extends this holder's lease of `epoch`; `false` when it is not ours any more.
    pub fn renew(&self, holder: &str, epoch: i64, ttl: Duration) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE lease SET expires_at = now() + $3::bigint * interval '1 millisecond'
             WHERE id = 1 AND holder = $1 AND epoch = $2",
            &[&holder, &epoch, &millis(ttl)],
        )?;
        Ok(n == 1)
    }

    /// Gives the lease up (a clean stop): a standby takes over at its next look.
    pub fn release(&self, holder: &str, epoch: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE lease SET expires_at = now() - interval '1 millisecond'
             WHERE id = 1 AND holder = $1 AND epoch = $2",
            &[&holder, &epoch],
        )
        .map(|_| ())
    }

    /// The lease as stored, if anyone ever held it.
    pub fn lease(&self) -> Result<Option<LeaseRow>, StoreError> {
        let rows = self.query(
            "SELECT holder, epoch,
                    (extract(epoch FROM (expires_at - now())) * 1000)::bigint
             FROM lease WHERE id = 1",
            &[],
        )?;
        rows.first()
            .map(|r| {
                Ok(LeaseRow {
                    holder: col(self, r, 0)?,
                    epoch: col(self, r, 1)?,
                    expires_in_ms: col(self, r, 2)?,
                })
            })
            .transpose()
    }

    /// From now on every write transaction of this connection checks `fence` first (`None`:
    /// no check, as for the operator's commands).
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.borrow_mut() = fence;
    }
}

/// The fence check, first in a write transaction: the lease row still carries this holder and
/// epoch, share-locked until the transaction ends, so a takeover waits for it or it fails.
pub(super) fn check_fence(tx: &mut PgTx<'_>, fence: &Fence) -> Result<(), StoreError> {
    let rows = tx.query(
        "SELECT 1 FROM lease WHERE id = 1 AND holder = $1 AND epoch = $2 FOR SHARE",
        &[&fence.holder, &fence.epoch],
    )?;
    if rows.is_empty() {
        return Err(StoreError::Fenced {
            at: tx.path().to_path_buf(),
            epoch: fence.epoch,
        });
    }
    Ok(())
}
