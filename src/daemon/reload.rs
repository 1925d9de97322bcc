//! SIGHUP: load the config again; keep the old one if the new one is invalid; otherwise apply
//! it without losing state (new documents start, removed ones stop quietly, pending deliveries
//! of removed notifiers die, `token_file` is re-read).

use super::engine::Engine;
use super::{Policies, notifiers, sd_notify_state};
use crate::config::{self, Mode};
use crate::coze::{ClientSettings, CozeClient};
use crate::status::{LAST_RELOAD, ReloadOutcome};

impl Engine {
    /// Makes a reload's outcome visible outside the journal: the store (for `status` and
    /// `/status`) and `/metrics`.
    async fn record_reload(&mut self, error: Option<String>) {
        let now = self.clock.wall();
        let outcome = ReloadOutcome {
            at: now.rfc3339_seconds(),
            ok: error.is_none(),
            error,
        };
        self.metrics.reloaded(outcome.ok, now);
        let text = serde_json::to_string(&outcome).unwrap_or_else(|_| "{}".into());
        if let Err(e) = self
            .store
            .write(move |s| s.set_meta(LAST_RELOAD, &text, now))
            .await
        {
            tracing::warn!(error = %e, "cannot record the reload's outcome");
        }
    }

    /// Tells systemd RELOADING=1 (with MONOTONIC_USEC) before and READY=1 after, either way.
    pub(super) async fn reload(&mut self) {
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        if let Ok(t) = sd_notify::NotifyState::monotonic_usec_now() {
            reloading.push(t);
        }
        sd_notify_state(&reloading);
        self.apply_reload().await;
        sd_notify_state(&[sd_notify::NotifyState::Ready]);
    }

    async fn apply_reload(&mut self) {
        let path = self.config.file.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            config::load(&path, &config::process_env, Mode::Strict)
        })
        .await;
        let new = match loaded {
            Ok(Ok(l)) => l.config,
            Ok(Err(diags)) => {
                for e in &diags.errors {
                    tracing::error!(error = %e, "reload: invalid config");
                }
                tracing::error!(
                    errors = diags.errors.len(),
                    "reload failed; keeping the running config"
                );
                let text: Vec<String> = diags.errors.iter().map(ToString::to_string).collect();
                self.record_reload(Some(text.join("; "))).await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the running config");
                self.record_reload(Some(e.to_string())).await;
                return;
            }
        };
        if new.state.dir != self.config.state.dir
            || new.state.postgres != self.config.state.postgres
            || new.state.lease_ttl != self.config.state.lease_ttl
        {
            tracing::warn!("state changed (dir, url or lease_ttl): takes effect after a restart");
        }
        if new.http != self.config.http {
            tracing::warn!("http.listen changed: takes effect after a restart");
        }
        if new.api.base_url != self.config.api.base_url || new.api.limits != self.config.api.limits
        {
            match CozeClient::new(ClientSettings::from(&new.api)) {
                Ok(c) => self.client = c,
                Err(e) => tracing::error!(error = %e, "reload: keeping the old API client"),
            }
        } else {
            self.client.set_token(new.api.token.clone());
        }
        self.config = new;
        self.rebuild_watch_list();
        self.policy = Policies::from(&self.config);
        self.dispatch
            .set_notifiers(notifiers(&self.config, &self.extra, self.clock));
        self.sweep_removed_notifiers().await;
        self.resync(false).await;
        self.record_reload(None).await;
        tracing::info!(
            datasets = self.watch_list.datasets.len(),
            live = self.live_count(),
            "config reloaded"
        );
    }
}
