//! Adoption: which listed documents are live, merging the watch list with the store's
//! key-and-state index (both in key order), recording documents never seen before, and
//! setting the schedules of datasets that start or stop being polled.
//!
//! Reads only the index, never the rows, and allocates nothing per stored row, so a restart
//! with 100,000 stored documents stays quick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

use super::engine::Engine;
use super::persist::Hot;
use crate::config::{WatchList, WatchedDocument};
use crate::ids::{DatasetId, DocumentId};
use crate::schedule::DatasetSchedule;
use crate::store::RuntimeEntry;
use crate::tracker::Lifecycle;

/// The config's watch list with the run-time entries merged in. An entry in both keeps the
/// config's labels and notifiers.
pub(super) fn effective(config: &WatchList, runtime: &[RuntimeEntry]) -> WatchList {
    let mut w = config.clone();
    for e in runtime {
        let rule = WatchedDocument {
            labels: Arc::new(e.labels.clone()),
            notify: e.notify.clone().map(Arc::from),
            batch: e.batch.as_deref().map(Arc::from),
        };
        match &e.document {
            Some(doc) => {
                w.datasets
                    .entry(e.dataset.clone())
                    .or_default()
                    .entry(doc.clone())
                    .or_insert(rule);
            }
            None => {
                w.all_of.entry(e.dataset.clone()).or_insert(rule);
            }
        }
    }
    w.index_batches();
    w
}

impl Engine {
    /// The effective watch list from the config and the run-time entries; `/status` sees it.
    pub(super) fn rebuild_watch_list(&mut self) {
        self.watch_list = Arc::new(effective(&self.config.watch, &self.runtime));
        if let Ok(mut w) = self.watch.write() {
            *w = self.watch_list.clone();
        }
    }

    /// Reads the run-time entries again (after `watch add/remove` or `POST /v1/watch`) and,
    /// when they changed, starts and stops what they name.
    pub(super) async fn refresh_runtime(&mut self) {
        let entries = match self.store.read_long(|s| s.watch_entries()).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the run-time watch list");
                return;
            }
        };
        if entries == self.runtime {
            return;
        }
        tracing::info!(entries = entries.len(), "run-time watch list changed");
        self.runtime = entries;
        self.rebuild_watch_list();
        self.resync(false).await;
    }

    /// At start: the run-time entries, what discovery knows, and the documents to poll.
    pub(super) async fn start(&mut self) {
        self.runtime = match self.store.read_long(|s| s.watch_entries()).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the run-time watch list");
                Vec::new()
            }
        };
        self.rebuild_watch_list();
        self.resync(true).await;
    }

    /// Starts and stops scopes and documents after the watch list changed (`first`: at start,
    /// when stored schedules are resumed).
    pub(super) async fn resync(&mut self, first: bool) {
        let mut stored = match self.store.read_long(|s| s.load_scopes()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read what discovery knows");
                Default::default()
            }
        };
        self.sync_scopes(&mut stored);
        self.adopt_watch_list(first).await;
    }

    /// Starts watching every document of the config that is not terminal in the store, and
    /// stops polling documents no longer listed (their history stays). Reads only the
    /// store's key-and-state index, merged with the (sorted) watch list; documents never seen
    /// before are recorded as new.
    pub(super) async fn adopt_watch_list(&mut self, first: bool) {
        let watch = self.watch_list.clone();
        let covered: HashSet<String> = self
            .covered_datasets()
            .iter()
            .map(|d| d.to_string())
            .collect();
        let sorted = self
            .store
            .read_long(move |s| {
                let mut merge = Adoption::new(&watch, &covered);
                s.for_each_document_state(|ds, doc, state| merge.stored(ds, doc, state))?;
                Ok(merge.finish())
            })
            .await;
        let Adopted {
            live: live_ids,
            fresh,
        } = match sorted {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot read documents from the store");
                return;
            }
        };
        let schedules = self
            .store
            .read_long(|s| s.load_schedules())
            .await
            .unwrap_or_default();
        let now_wall = self.clock.wall();
        let now = Instant::now();
        if !fresh.is_empty() {
            let n = fresh.len();
            if let Err(e) = self
                .store
                .write(move |s| s.insert_new_documents(&fresh, now_wall))
                .await
            {
                tracing::error!(error = %e, "cannot record new documents; they are watched anyway and recorded with their first poll");
            } else {
                tracing::info!(documents = n, "new documents watched");
            }
        }
        let mut live: HashMap<DatasetId, BTreeMap<DocumentId, Hot>> = HashMap::new();
        for (ds, docs) in live_ids {
            let old = self.live.remove(&ds).unwrap_or_default();
            let hot = docs
                .into_iter()
                .map(|doc| {
                    // Keep what memory knows of documents already being polled.
                    let h = old.get(&doc).copied().unwrap_or_default();
                    (doc, h)
                })
                .collect();
            live.insert(ds, hot);
        }
        let gone: Vec<DatasetId> = self
            .schedules
            .keys()
            .filter(|ds| !live.contains_key(*ds))
            .cloned()
            .collect();
        for ds in &gone {
            self.drop_schedule(ds);
        }
        for ds in live.keys() {
            if self.schedules.contains_key(ds) {
                continue;
            }
            let (at, failures) = match schedules.get(ds) {
                Some(s) if first => (now + s.next_poll_at.since(now_wall), s.failures),
                _ => (now, 0),
            };
            self.set_schedule(ds.clone(), DatasetSchedule::new(at, failures));
        }
        self.live = live;
    }
}

/// The start-up merge of the watch list with the store's documents, both in key order: which
/// listed documents are live, and which the store has never seen. Allocates nothing per stored
/// row, so a restart with 100,000 stored documents stays quick.
struct Adoption<'a> {
    listed: std::iter::Peekable<Box<dyn Iterator<Item = (&'a DatasetId, &'a DocumentId)> + 'a>>,
    /// Knowledge bases watched whole: their stored live documents are live too.
    covered: &'a HashSet<String>,
    live: Vec<(DatasetId, Vec<DocumentId>)>,
    fresh: Vec<(DatasetId, DocumentId)>,
}

/// What adoption found.
struct Adopted {
    /// Live documents per dataset, in key order.
    live: Vec<(DatasetId, Vec<DocumentId>)>,
    /// Listed documents the store has never seen.
    fresh: Vec<(DatasetId, DocumentId)>,
}

impl<'a> Adoption<'a> {
    fn new(watch: &'a WatchList, covered: &'a HashSet<String>) -> Self {
        let listed: Box<dyn Iterator<Item = (&'a DatasetId, &'a DocumentId)> + 'a> = Box::new(
            watch
                .datasets
                .iter()
                .flat_map(|(ds, docs)| docs.keys().map(move |d| (ds, d))),
        );
        Adoption {
            covered,
            listed: listed.peekable(),
            live: Vec::new(),
            fresh: Vec::new(),
        }
    }

    fn add_live(&mut self, ds: &DatasetId, doc: &DocumentId) {
        match self.live.last_mut() {
            Some((last, docs)) if last == ds => docs.push(doc.clone()),
            _ => self.live.push((ds.clone(), vec![doc.clone()])),
        }
    }

    /// The next stored document (in key order).
    fn stored(&mut self, ds: &str, doc: &str, state: Lifecycle) {
        while let Some(&(lds, ldoc)) = self.listed.peek() {
            match (lds.as_str(), ldoc.as_str()).cmp(&(ds, doc)) {
                std::cmp::Ordering::Less => {
                    // Listed, never stored.
                    self.add_live(lds, ldoc);
                    self.fresh.push((lds.clone(), ldoc.clone()));
                    self.listed.next();
                }
                std::cmp::Ordering::Equal => {
                    if !state.is_terminal() {
                        self.add_live(lds, ldoc);
                    }
                    self.listed.next();
                    return;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        // Stored, not listed one by one: live if its knowledge base is watched whole
        // (discovered documents), else no longer watched.
        if !state.is_terminal() && self.covered.contains(ds) {
            self.add_live(&DatasetId::new(ds), &DocumentId::new(doc));
        }
    }

    fn finish(mut self) -> Adopted {
        while let Some((ds, doc)) = self.listed.next() {
            self.add_live(ds, doc);
            self.fresh.push((ds.clone(), doc.clone()));
        }
        Adopted {
            live: self.live,
            fresh: self.fresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::WatchedDocument;

    fn watch(list: &[(&str, &[&str])]) -> WatchList {
        let mut w = WatchList::default();
        for (ds, docs) in list {
            let m = w.datasets.entry(DatasetId::new(ds)).or_default();
            for d in *docs {
                m.insert(
                    DocumentId::new(d),
                    WatchedDocument {
                        labels: Arc::default(),
                        notify: None,
                        batch: None,
                    },
                );
            }
        }
        w
    }

    fn ids(v: &[(DatasetId, Vec<DocumentId>)]) -> Vec<(String, Vec<String>)> {
        v.iter()
            .map(|(ds, docs)| (ds.to_string(), docs.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn adoption_merges_the_watch_list_with_the_stored_states() {
        let w = watch(&[("1", &["a", "b", "c"]), ("2", &["x"]), ("3", &["y"])]);
        let covered = HashSet::new();
        let mut m = Adoption::new(&w, &covered);
        // In key order: a stored document no longer listed ("0"/"z", "1"/"bb") is skipped.
        m.stored("0", "z", Lifecycle::Watching);
        m.stored("1", "a", Lifecycle::Completed);
        m.stored("1", "bb", Lifecycle::Watching);
        m.stored("1", "c", Lifecycle::Watching);
        m.stored("2", "x", Lifecycle::Failed);
        let Adopted { live, fresh } = m.finish();
        assert_eq!(
            ids(&live),
            [
                ("1".to_string(), vec!["b".to_string(), "c".to_string()]),
                ("3".to_string(), vec!["y".to_string()]),
            ]
        );
        let fresh: Vec<String> = fresh.iter().map(|(ds, d)| format!("{ds}/{d}")).collect();
        assert_eq!(fresh, ["1/b", "3/y"]);
    }
}
