//! SIGHUP: load the config again; keep the old one if the new one is invalid; otherwise apply
//! it without losing state (new documents start, removed ones stop quietly, pending deliveries
//! of removed notifiers die, `token_file` is re-read).

use super::engine::Engine;
use super::{Policies, notifiers, sd_notify_state};
use crate::config::{self, Mode};
use crate::coze::{ClientSettings, CozeClient};

impl Engine {
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
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the running config");
                return;
            }
        };
        if new.state.dir != self.config.state.dir {
            tracing::warn!("state.dir changed: takes effect after a restart");
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
        if let Ok(mut w) = self.watch.write() {
            *w = self.config.watch.clone();
        }
        self.policy = Policies::from(&self.config);
        self.dispatch
            .set_notifiers(notifiers(&self.config, &self.extra));
        self.sweep_removed_notifiers().await;
        self.adopt_watch_list(false).await;
        tracing::info!(
            datasets = self.config.watch.datasets.len(),
            live = self.live_count(),
            "config reloaded"
        );
    }
}
