//! Counters and gauges the daemon exposes on `/metrics` (OpenMetrics, or the classic
//! Prometheus text format, as the scraper's `Accept` asks), every name prefixed `coze_watch_`,
//! and the health state behind `/healthz`.
//!
//! The run loop and the dispatcher only increment; gauges that describe the store (documents by
//! state, outbox depth) are read from the store at scrape time by `ops`. Nothing here does I/O.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ids::DatasetId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    pub notifier: String,
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub polls: Family<ResultLabel, Counter>,
    pub poll_seconds: Histogram,
    pub api_requests: Counter,
    pub api_errors: Family<KindLabel, Counter>,
    pub events: Family<TypeLabel, Counter>,
    pub deliveries: Family<DeliveryLabel, Counter>,
    pub documents: Family<StateLabel, Gauge>,
    pub outbox_pending: Gauge,
    pub outbox_dead: Gauge,
    pub healthy: Gauge,
    pub reload_success: Gauge,
    pub last_reload: Gauge,
    /// 1 while this instance polls and delivers (always on SQLite).
    pub leader: Gauge,
    /// The lease epoch this instance holds or last held (0: none; SQLite: 0).
    pub lease_epoch: Gauge,
    pub health: Health,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("coze_watch");
        let m = Metrics {
            polls: Family::default(),
            poll_seconds: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            api_requests: Counter::default(),
            api_errors: Family::default(),
            events: Family::default(),
            deliveries: Family::default(),
            documents: Family::default(),
            outbox_pending: Gauge::default(),
            outbox_dead: Gauge::default(),
            healthy: Gauge::default(),
            reload_success: Gauge::default(),
            last_reload: Gauge::default(),
            leader: Gauge::default(),
            lease_epoch: Gauge::default(),
            health: Health::default(),
            registry: Registry::default(),
        };
        registry.register(
            "polls",
            "Polls of a dataset, by result (ok, error)",
            m.polls.clone(),
        );
        registry.register(
            "poll_duration_seconds",
            "Time one poll of a dataset took, requests included",
            m.poll_seconds.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Coze API",
            m.api_requests.clone(),
        );
        registry.register(
            "api_errors",
            "Failed Coze API requests by kind (auth, permission, dataset_not_found, rate_limited, bad_request, transient)",
            m.api_errors.clone(),
        );
        registry.register("events", "Events fired, by type", m.events.clone());
        registry.register(
            "deliveries",
            "Delivery attempts by notifier and result (delivered, retry, dead)",
            m.deliveries.clone(),
        );
        registry.register(
            "documents",
            "Watched documents by state",
            m.documents.clone(),
        );
        registry.register(
            "outbox_pending",
            "Deliveries waiting to be made or retried",
            m.outbox_pending.clone(),
        );
        registry.register(
            "outbox_dead",
            "Deliveries that gave up",
            m.outbox_dead.clone(),
        );
        registry.register("healthy", "1 when /healthz answers 200", m.healthy.clone());
        registry.register(
            "config_reload_success",
            "1 when the last reload applied the config, 0 when it was refused (1 before any)",
            m.reload_success.clone(),
        );
        registry.register(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last reload attempt (0 before any)",
            m.last_reload.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance polls and delivers (on a shared store: holds the lease)",
            m.leader.clone(),
        );
        registry.register(
            "lease_epoch",
            "The lease epoch this instance holds or last held (0: none)",
            m.lease_epoch.clone(),
        );
        // No reload yet: nothing was refused.
        m.reload_success.set(1);
        Metrics { registry, ..m }
    }

    /// A reload's outcome (`coze_watch_config_reload_success`, `..._last_reload_timestamp_seconds`).
    /// The role on a shared store (`Some(epoch)`: leader), or `None` on SQLite (always the
    /// one instance).
    pub fn set_role(&self, role: Option<Option<i64>>) {
        match role {
            None => {
                self.leader.set(1);
                self.health.set_role(None);
            }
            Some(Some(epoch)) => {
                self.leader.set(1);
                self.lease_epoch.set(epoch);
                self.health.set_role(Some("leader"));
            }
            Some(None) => {
                self.leader.set(0);
                self.health.set_role(Some("standby"));
            }
        }
    }

    pub fn reloaded(&self, ok: bool, at: crate::wall::UnixMs) {
        self.reload_success.set(i64::from(ok));
        self.last_reload.set(at.0 / 1000);
    }

    pub fn poll(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.polls
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn api_error(&self, kind: &str) {
        self.api_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn event(&self, ty: &str) {
        self.events
            .get_or_create(&TypeLabel { r#type: ty.into() })
            .inc();
    }

    pub fn delivery(&self, notifier: &str, result: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabel {
                notifier: notifier.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Everything registered, in the format the scraper asked for.
    pub fn encode(&self, format: Exposition) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        match format {
            Exposition::OpenMetrics => out,
            Exposition::Classic => to_classic(&out),
        }
    }
}

/// The two text formats of `/metrics`, chosen by the scraper's `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 (`# EOF`, counter families named without `_total`).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4.
    Classic,
}

impl Exposition {
    /// OpenMetrics when the `Accept` header takes it at least as willingly as plain text,
    /// else the classic format (also with no header).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut open, mut plain) = (0.0_f64, 0.0_f64);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= plain {
            Exposition::OpenMetrics
        } else {
            Exposition::Classic
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites an OpenMetrics exposition in the classic text format: no `# EOF` or `# UNIT`,
/// counter families named by their `_total` sample, no `_created` samples.
fn to_classic(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<&str> = None;
    let mut counters: Vec<&str> = Vec::new();
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            // Held until the TYPE line says whether the family is a counter.
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => {
                    counters.push(name);
                    (format!("{name}_total"), "counter")
                }
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|r| r.split_once(' '))
                    .map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        let sample = line.split([' ', '{']).next().unwrap_or_default();
        if sample
            .strip_suffix("_created")
            .is_some_and(|family| counters.contains(&family))
        {
            continue;
        }
        // Exemplars (` # {...}`) are OpenMetrics only.
        let line = line.split_once(" # ").map_or(line, |(l, _)| l);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Whether polls succeed, and if not, why.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// The token is refused: nothing works until it is fixed.
    auth: Option<String>,
    /// Datasets whose last poll failed, with the error.
    failing: BTreeMap<DatasetId, String>,
    /// Datasets polled at least once.
    polled: BTreeMap<DatasetId, ()>,
    store: Option<String>,
    /// Discovery scopes refused by the API (a token without `listKnowledge`), with the error.
    discovery: BTreeMap<String, String>,
    /// `leader` or `standby` on a shared store.
    role: Option<&'static str>,
}

impl Health {
    fn with<R>(&self, f: impl FnOnce(&mut HealthState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn poll_ok(&self, dataset: &DatasetId) {
        self.with(|s| {
            s.auth = None;
            s.failing.remove(dataset);
            s.polled.insert(dataset.clone(), ());
        });
    }

    pub fn poll_failed(&self, dataset: &DatasetId, error: String, auth: bool) {
        self.with(|s| {
            if auth {
                s.auth = Some(error.clone());
            }
            s.failing.insert(dataset.clone(), error);
            s.polled.insert(dataset.clone(), ());
        });
    }

    pub fn dataset_gone(&self, dataset: &DatasetId) {
        self.with(|s| {
            s.failing.remove(dataset);
            s.polled.remove(dataset);
        });
    }

    /// A discovery scope the API refuses (auth or permission): a reason for `/healthz`.
    pub fn discovery_failed(&self, scope: &str, error: String) {
        self.with(|s| {
            s.discovery.insert(scope.to_string(), error);
        });
    }

    pub fn discovery_ok(&self, scope: &str) {
        self.with(|s| {
            s.discovery.remove(scope);
        });
    }

    /// Every current problem, healthy-making or not, for `/status`.
    pub fn reasons(&self) -> Vec<String> {
        self.problems()
            .map(|p| p.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// A standby polls nothing: what its last term saw of the API is forgotten.
    pub fn set_role(&self, role: Option<&'static str>) {
        self.with(|s| {
            if role == Some("standby") {
                s.auth = None;
                s.failing.clear();
                s.polled.clear();
                s.discovery.clear();
            }
            s.role = role;
        });
    }

    pub fn role(&self) -> Option<&'static str> {
        self.with(|s| s.role)
    }

    pub fn store_result(&self, error: Option<String>) {
        self.with(|s| s.store = error);
    }

    /// `None` when healthy, else the reasons. Unhealthy when the token is refused, the store
    /// fails, or every polled dataset's last poll failed.
    pub fn problems(&self) -> Option<String> {
        self.with(|s| {
            let mut reasons = Vec::new();
            if let Some(a) = &s.auth {
                reasons.push(format!("API token refused: {a}"));
            }
            if let Some(e) = &s.store {
                reasons.push(format!("store: {e}"));
            }
            reasons.extend(s.discovery.values().cloned());
            if s.auth.is_none() && !s.polled.is_empty() && s.failing.len() == s.polled.len() {
                for (ds, e) in &s.failing {
                    reasons.push(format!("dataset {ds}: {e}"));
                }
            }
            (!reasons.is_empty()).then(|| reasons.join("\n"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_prefixed_and_counters_count() {
        let m = Metrics::new();
        m.poll(true);
        m.api_error("auth");
        m.delivery("hook", "delivered");
        let text = m.encode(Exposition::OpenMetrics);
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("coze_watch_"), "{line}");
        }
        assert!(
            text.contains("coze_watch_polls_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("coze_watch_api_errors_total{kind=\"auth\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("coze_watch_deliveries_total{notifier=\"hook\",result=\"delivered\"} 1")
        );
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        for classic in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4,application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0"),
        ] {
            assert_eq!(
                Exposition::negotiate(classic),
                Exposition::Classic,
                "{classic:?}"
            );
        }
    }

    #[test]
    fn the_classic_format_names_counters_by_their_total_and_has_no_eof() {
        let m = Metrics::new();
        m.poll(true);
        let text = m.encode(Exposition::Classic);
        assert!(
            text.contains("# TYPE coze_watch_polls_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP coze_watch_polls_total "), "{text}");
        assert!(
            text.contains("coze_watch_polls_total{result=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT") && !text.contains("_created"));
    }

    #[test]
    fn health_turns_bad_on_auth_and_recovers() {
        let h = Health::default();
        let ds = DatasetId::new("1");
        assert!(h.problems().is_none());
        h.poll_failed(&ds, "4100".into(), true);
        assert!(h.problems().unwrap().contains("API token refused"));
        h.poll_ok(&ds);
        assert!(h.problems().is_none());
        let other = DatasetId::new("2");
        h.poll_ok(&other);
        h.poll_failed(&ds, "HTTP 502".into(), false);
        assert!(
            h.problems().is_none(),
            "one dataset of two failing is not unhealthy"
        );
        h.poll_failed(&other, "HTTP 502".into(), false);
        assert!(h.problems().is_some());
    }
}
