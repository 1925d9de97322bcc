//! [`StoreHandle`]: the store as the async daemon uses it, through three doors named for what
//! they do:
//!
//! - [`StoreHandle::write`]: the writing connection, on the blocking pool (a write may wait for
//!   the disk, which must never stall the async runtime);
//! - [`StoreHandle::read_inline`]: a short read (a dataset's rows, the due deliveries) on a
//!   second connection, on the calling thread: no hand-off to the blocking pool and back,
//!   which was a quarter of the daemon's CPU when every poll and every dispatcher turn did it;
//! - [`StoreHandle::read_long`]: a long read (`/status`, `/metrics` over 100,000 rows) on a
//!   third connection of its own, on the blocking pool, so it holds neither the writer nor the
//!   run loop's reader.
//!
//! Under WAL a reader never waits for the writer and sees every transaction committed before
//! the read starts. Std mutexes, because none is ever held across an await.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Fence, Location, Store, StoreError};

/// How long the inline reader waits for a lock: it runs on the runtime's thread, so it gives
/// up soon (recovery after a crash) and the caller retries, rather than stalling the runtime.
const INLINE_BUSY: Duration = Duration::from_millis(100);
/// How long a long read waits for a lock: it runs on the blocking pool.
const LONG_BUSY: Duration = Duration::from_secs(5);

type Shared = Arc<Mutex<Store>>;

#[derive(Clone, Debug)]
pub struct StoreHandle {
    writer: Shared,
    /// `None` when it could not be opened (logged): short reads then go through the writer.
    inline: Option<Shared>,
    /// Opened at the first long read.
    long: Arc<Mutex<Option<Store>>>,
    path: Arc<Path>,
    at: Arc<Location>,
    /// The leader's fence, for connections opened later too (PostgreSQL).
    fence: Arc<Mutex<Option<Fence>>>,
}

impl StoreHandle {
    /// Wraps the writing connection to the store at `at` and opens the inline reader (SQLite:
    /// PostgreSQL's reads are network round trips, never on the runtime's thread, so they all
    /// take the long door).
    pub fn new(store: Store, at: Location) -> Self {
        let inline = if store.reads_inline() {
            match Store::open_reader(&at, INLINE_BUSY) {
                Ok(r) => Some(Arc::new(Mutex::new(r))),
                Err(e) => {
                    tracing::warn!(error = %e, "no second store connection; reads share the writer's");
                    None
                }
            }
        } else {
            None
        };
        StoreHandle {
            path: Arc::from(store.path()),
            writer: Arc::new(Mutex::new(store)),
            inline,
            long: Arc::new(Mutex::new(None)),
            at: Arc::new(at),
            fence: Arc::new(Mutex::new(None)),
        }
    }

    /// Fences every write and every delivery read of this handle's connections with a
    /// leader's epoch (`None`: none). PostgreSQL only; SQLite ignores it.
    pub async fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence.clone();
        let (writer, long) = (self.writer.clone(), self.long.clone());
        let _ = self
            .blocking(move || {
                writer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_fence(fence.clone());
                if let Some(s) = long.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    s.set_fence(fence);
                }
                Ok(())
            })
            .await;
    }

    /// A short read on the calling thread (see the module doc). Only for reads that touch a
    /// handful of rows.
    pub async fn read_inline<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        match &self.inline {
            Some(reader) => {
                let store = reader.lock().unwrap_or_else(|p| p.into_inner());
                f(&store)
            }
            None if matches!(*self.at, Location::Postgres(_)) => self.read_long(f).await,
            None => self.write(move |s| f(s)).await,
        }
    }

    /// A long read on its own connection, on the blocking pool.
    pub async fn read_long<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let long = self.long.clone();
        let at = self.at.clone();
        let fence = self.fence.clone();
        self.blocking(move || {
            let mut slot = long.lock().unwrap_or_else(|p| p.into_inner());
            let store = match slot.take() {
                Some(s) => slot.insert(s),
                None => {
                    let s = Store::open_reader(&at, LONG_BUSY)?;
                    s.set_fence(fence.lock().unwrap_or_else(|p| p.into_inner()).clone());
                    slot.insert(s)
                }
            };
            f(store)
        })
        .await
    }

    /// Anything that writes (or must use the writing connection), on the blocking pool.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let writer = self.writer.clone();
        self.blocking(move || {
            let mut store = writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut store)
        })
        .await
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(f).await.unwrap_or_else(|join| {
            Err(StoreError::Dir {
                dir: path.to_path_buf(),
                source: std::io::Error::other(format!("store task failed: {join}")),
            })
        })
    }
}
