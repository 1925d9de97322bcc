//! Leadership on a shared (PostgreSQL) store: a lease task takes and renews the lease on a
//! connection of its own, and this instance polls and delivers (a term of `super::term`)
//! only while it holds the lease; otherwise it is a standby serving the ops endpoint.
//!
//! A leader renews every `lease_ttl / 3` and stops its term on its own clock before the
//! database's expiry (`lease_ttl` less a sixth) when it cannot renew: it starts no poll or
//! delivery after that, and whatever its in-flight work writes is fenced by its epoch. A
//! standby looks again when the holder's lease is due to expire, so a takeover after a
//! `kill -9` takes about `lease_ttl`. Role changes are logged once each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DaemonError, RunContext, Shared, ready, term};
use crate::config::{Config, PostgresConfig};
use crate::metrics::Metrics;
use crate::store::{Acquired, Fence, PgStore, StoreError};

/// This instance's role, as the lease task sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Standby,
    Leader(i64),
}

/// Stands by, leads while holding the lease, stands by again when it is lost; until
/// shutdown. Returns a store found unusable during a term.
pub(super) async fn run(
    mut config: Config,
    ctx: &mut RunContext,
    shared: &mut Shared,
    pg: &PostgresConfig,
) -> Result<Option<crate::store::StoreError>, DaemonError> {
    let holder = holder_id();
    let ttl = config.state.lease_ttl;
    let (role_tx, mut role) = watch::channel(Role::Standby);
    let lease = tokio::spawn(lease_loop(
        pg.clone(),
        holder.clone(),
        ttl,
        role_tx,
        ctx.shutdown.clone(),
        shared.metrics.clone(),
    ));
    shared.metrics.set_role(Some(None));
    // A healthy standby is ready: it serves the ops endpoint and can take over.
    ready(ctx);
    tracing::info!(holder = %holder, lease_ttl = ?ttl, "standby: waiting for the lease");
    let mut unusable = None;
    loop {
        let epoch = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            e = leader_epoch(&mut role) => match e {
                Some(e) => e,
                None => break,
            },
        };
        shared
            .store
            .set_fence(Some(Fence {
                holder: holder.clone(),
                epoch,
            }))
            .await;
        let stop = ctx.shutdown.child_token();
        let ends = tokio::spawn(end_of_term(role.clone(), epoch, stop.clone()));
        let (c, found) = term(config, ctx, shared, &stop).await?;
        config = c;
        ends.abort();
        // The term's engine and dispatcher have stopped: what this standby writes from now on
        // (the ops endpoint's run-time entries) is an operator's write, not a leader's.
        shared.store.set_fence(None).await;
        if found.is_some() {
            unusable = found;
            ctx.shutdown.cancel();
            break;
        }
        if ctx.shutdown.is_cancelled() {
            break;
        }
    }
    ctx.shutdown.cancel();
    if let Err(e) = lease.await {
        tracing::error!(error = %e, "the lease task failed");
    }
    Ok(unusable)
}

/// Waits until this instance leads; its epoch (`None`: the lease task ended).
async fn leader_epoch(role: &mut watch::Receiver<Role>) -> Option<i64> {
    loop {
        if let Role::Leader(e) = *role.borrow_and_update() {
            return Some(e);
        }
        role.changed().await.ok()?;
    }
}

/// Ends the term of `epoch` (cancels `stop`) when the role is anything else.
async fn end_of_term(mut role: watch::Receiver<Role>, epoch: i64, stop: CancellationToken) {
    loop {
        if *role.borrow_and_update() != Role::Leader(epoch) {
            stop.cancel();
            return;
        }
        if role.changed().await.is_err() {
            stop.cancel();
            return;
        }
    }
}

/// `host:pid:random`, unique per process run.
fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The lease task's connection: opened when needed, dropped after an error, abandoned (to
/// the blocked thread) after a timeout.
type Conn = Arc<Mutex<Option<PgStore>>>;

/// Runs `f` on the lease connection on the blocking pool, within `limit`.
async fn call<R: Send + 'static>(
    conn: &mut Conn,
    pg: &PostgresConfig,
    limit: Duration,
    f: impl FnOnce(&PgStore) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, String> {
    let slot = conn.clone();
    let pg = pg.clone();
    let job = tokio::task::spawn_blocking(move || {
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let store = match guard.take() {
            Some(s) => guard.insert(s),
            None => guard.insert(PgStore::open_existing(&pg)?),
        };
        let r = f(store);
        if r.is_err() {
            // A fresh connection next time.
            *guard = None;
        }
        r
    });
    match tokio::time::timeout(limit, job).await {
        Ok(Ok(r)) => r.map_err(|e| e.to_string()),
        Ok(Err(join)) => Err(format!("the lease task's store call failed: {join}")),
        Err(_) => {
            *conn = Arc::new(Mutex::new(None));
            Err(format!("no answer from the database within {limit:?}"))
        }
    }
}

/// Takes, renews and (at shutdown) releases the lease; publishes the role.
async fn lease_loop(
    pg: PostgresConfig,
    holder: String,
    ttl: Duration,
    role: watch::Sender<Role>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let renew_every = ttl / 3;
    // The term ends this much before the database's expiry when renewals fail.
    let margin = ttl / 6;
    let mut conn: Conn = Arc::new(Mutex::new(None));
    let mut held: Option<(i64, Instant)> = None;
    let mut said_error = false;
    loop {
        let now = Instant::now();
        let next = match held {
            None => {
                let h = holder.clone();
                match call(&mut conn, &pg, renew_every, move |s| s.try_acquire(&h, ttl)).await {
                    Ok(Acquired::Leader(epoch)) => {
                        held = Some((epoch, now + ttl - margin));
                        said_error = false;
                        metrics.set_role(Some(Some(epoch)));
                        tracing::info!(epoch, holder = %holder, "leader: took the lease");
                        role.send_replace(Role::Leader(epoch));
                        now + renew_every
                    }
                    Ok(Acquired::Held { expires_in, .. }) => {
                        said_error = false;
                        now + renew_every.min(expires_in + Duration::from_millis(50))
                    }
                    Err(e) => {
                        if !said_error {
                            tracing::warn!(error = %e, "cannot reach the lease; still a standby");
                            said_error = true;
                        }
                        now + renew_every
                    }
                }
            }
            Some((epoch, valid_until)) => {
                let h = holder.clone();
                let limit = valid_until
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                match call(&mut conn, &pg, limit, move |s| s.renew(&h, epoch, ttl)).await {
                    Ok(true) => {
                        held = Some((epoch, now + ttl - margin));
                        said_error = false;
                        now + renew_every
                    }
                    Ok(false) => {
                        step_down(
                            &mut held,
                            &role,
                            &metrics,
                            epoch,
                            "the lease was taken over",
                        );
                        now
                    }
                    Err(e) => {
                        if !said_error {
                            tracing::warn!(error = %e, epoch, "cannot renew the lease; retrying until it runs out");
                            said_error = true;
                        }
                        (Instant::now() + Duration::from_secs(1)).min(valid_until)
                    }
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        if let Some((epoch, valid_until)) = held
            && Instant::now() >= valid_until
        {
            step_down(
                &mut held,
                &role,
                &metrics,
                epoch,
                "the lease ran out before a renewal",
            );
        }
    }
    // A clean stop hands the lease over at once.
    if let Some((epoch, _)) = held {
        let h = holder.clone();
        match call(&mut conn, &pg, Duration::from_secs(2), move |s| {
            s.release(&h, epoch)
        })
        .await
        {
            Ok(()) => tracing::info!(epoch, "released the lease"),
            Err(e) => {
                tracing::warn!(error = %e, epoch, "cannot release the lease; it runs out by itself")
            }
        }
    }
    role.send_replace(Role::Standby);
}

/// Leaves the leader's role (logged once, with why).
fn step_down(
    held: &mut Option<(i64, Instant)>,
    role: &watch::Sender<Role>,
    metrics: &Metrics,
    epoch: i64,
    why: &str,
) {
    *held = None;
    metrics.set_role(Some(None));
    tracing::warn!(
        epoch,
        reason = why,
        "standby: stopped polling and delivering"
    );
    role.send_replace(Role::Standby);
}
