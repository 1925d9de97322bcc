//! Adoption: which listed documents are live, merging the watch list with the store's
//! key-and-state index (both in key order), recording documents never seen before, and
//! setting the schedules of datasets that start or stop being polled.
//!
//! Reads only the index, never the rows, and allocates nothing per stored row, so a restart
//! with 100,000 stored documents stays quick.

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

use super::engine::Engine;
use super::persist::Hot;
use crate::config::WatchList;
use crate::ids::{DatasetId, DocumentId};
use crate::schedule::DatasetSchedule;
use crate::tracker::Lifecycle;
use crate::wall::UnixMs;

impl Engine {
    /// Starts watching every document of the config that is not terminal in the store, and
    /// stops polling documents no longer listed (their history stays). Reads only the
    /// store's key-and-state index, merged with the (sorted) watch list; documents never seen
    /// before are recorded as new.
    pub(super) async fn adopt_watch_list(&mut self, first: bool) {
        let watch = self.config.watch.clone();
        let sorted = self
            .store
            .read_long(move |s| {
                let mut merge = Adoption::new(&watch);
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
        let now_wall = UnixMs::now();
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
    fn new(watch: &'a WatchList) -> Self {
        let listed: Box<dyn Iterator<Item = (&'a DatasetId, &'a DocumentId)> + 'a> = Box::new(
            watch
                .datasets
                .iter()
                .flat_map(|(ds, docs)| docs.keys().map(move |d| (ds, d))),
        );
        Adoption {
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
                // Stored, no longer listed.
                std::cmp::Ordering::Greater => return,
            }
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
        let mut m = Adoption::new(&w);
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
