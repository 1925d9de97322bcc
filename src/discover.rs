//! Discovery (SPEC section 11): which knowledge bases to list, and which listed documents to
//! watch.
//!
//! Pure decisions on explicit times: [`plan_space`] turns a space probe into the knowledge
//! bases to page through (only those whose `doc_count` or `update_time` changed, or whose full
//! re-listing is due), [`decide`] turns a listing into documents to watch and documents to
//! record silently (the baseline), and [`page_all`] pages a document list without ever looping
//! on a short or repeated page. I/O goes through the closure it is given; this module never
//! talks to the API or the store itself.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration;

use crate::config::SpaceWatch;
use crate::coze::{ApiError, DatasetInfo, DocumentInfo, DocumentPage, DocumentStatus};
use crate::ids::{DatasetId, DocumentId, SpaceId};
use crate::wall::UnixMs;

/// The most pages one listing reads (100 documents a page: a million documents). A server that
/// never says it is done stops here rather than looping for ever.
pub const MAX_PAGES: u32 = 10_000;

/// What discovery lists: a whole space, or one knowledge base (`documents: all`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Space(SpaceId),
    Dataset(DatasetId),
}

impl Scope {
    /// The stored key: `space:ID` or `dataset:ID`.
    pub fn key(&self) -> String {
        match self {
            Scope::Space(s) => format!("space:{s}"),
            Scope::Dataset(d) => format!("dataset:{d}"),
        }
    }

    pub fn parse(key: &str) -> Option<Scope> {
        match key.split_once(':')? {
            ("space", id) => Some(Scope::Space(SpaceId::new(id))),
            ("dataset", id) => Some(Scope::Dataset(DatasetId::new(id))),
            _ => None,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Space(s) => write!(f, "space {s}"),
            Scope::Dataset(d) => write!(f, "knowledge base {d}"),
        }
    }
}

/// Why a knowledge base of a space is not watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Status 3.
    Disabled,
    /// A Volcano-engine knowledge base: `/process` does not serve it.
    Volcano,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Disabled => "disabled",
            Skip::Volcano => "volcano",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "disabled" => Some(Skip::Disabled),
            "volcano" => Some(Skip::Volcano),
            _ => None,
        }
    }
}

/// What discovery remembers of one knowledge base (persisted, so a restart never
/// re-baselines and never lists an unchanged knowledge base again).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KbState {
    pub doc_count: Option<i64>,
    pub update_time: Option<i64>,
    /// The last complete listing.
    pub listed_at: Option<UnixMs>,
    /// It was there when its entry was first adopted: its first listing records the documents
    /// already terminal without events.
    pub baseline_pending: bool,
    pub skipped: Option<Skip>,
}

/// What discovery remembers of one scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeState {
    /// The first probe (space) or listing (dataset) has happened.
    pub baselined: bool,
    pub datasets: BTreeMap<DatasetId, KbState>,
    /// The last failure, for `status` (cleared by a success).
    pub last_error: Option<String>,
}

impl ScopeState {
    /// The state of a scope seen for the first time: for a knowledge base, its first listing
    /// is the baseline.
    pub fn new(scope: &Scope) -> Self {
        let mut state = ScopeState::default();
        if let Scope::Dataset(ds) = scope {
            state.datasets.insert(
                ds.clone(),
                KbState {
                    baseline_pending: true,
                    ..KbState::default()
                },
            );
        }
        state
    }

    /// The knowledge bases whose documents this scope watches.
    pub fn covered(&self) -> impl Iterator<Item = &DatasetId> {
        self.datasets
            .iter()
            .filter(|(_, kb)| kb.skipped.is_none())
            .map(|(ds, _)| ds)
    }
}

/// What a space probe asks for next.
#[derive(Debug, Default, PartialEq)]
pub struct SpacePlan {
    /// Knowledge bases to page through.
    pub to_list: Vec<DatasetId>,
    /// Knowledge bases that only grew: no listing is needed when the new documents are all in
    /// `processing` (see [`explained`]); each with how many documents it gained.
    pub grown: Vec<(DatasetId, i64)>,
    /// Documents processing now (`processing_file_id_list`): watched at once.
    pub processing: Vec<(DatasetId, DocumentId)>,
    /// Knowledge bases skipped for the first time (logged once).
    pub newly_skipped: Vec<(DatasetId, Skip)>,
}

/// Applies a space probe to `state`: which knowledge bases to list now, and which documents
/// are processing. A knowledge base is listed when it was never listed, when its `doc_count`
/// or `update_time` changed, or when its last full listing is `relist` old.
pub fn plan_space(
    state: &mut ScopeState,
    entry: &SpaceWatch,
    probe: &[DatasetInfo],
    now: UnixMs,
    relist: Duration,
) -> SpacePlan {
    let mut plan = SpacePlan::default();
    let first = !state.baselined;
    for info in probe {
        let ds = &info.dataset_id;
        if !entry.covers(ds) {
            continue;
        }
        let kb = state.datasets.entry(ds.clone()).or_insert_with(|| KbState {
            baseline_pending: first,
            ..KbState::default()
        });
        let skip = if info.is_volcano() {
            Some(Skip::Volcano)
        } else if info.is_disabled() {
            Some(Skip::Disabled)
        } else {
            None
        };
        if skip != kb.skipped {
            if let Some(s) = skip {
                plan.newly_skipped.push((ds.clone(), s));
            }
            kb.skipped = skip;
        }
        if skip.is_some() {
            continue;
        }
        plan.processing.extend(
            info.processing_file_id_list
                .iter()
                .map(|doc| (ds.clone(), doc.clone())),
        );
        let changed = kb.doc_count != info.doc_count || kb.update_time != info.update_time;
        let due = kb.listed_at.is_none_or(|t| now.since(t) >= relist) || kb.baseline_pending;
        let grew = match (kb.doc_count, info.doc_count) {
            (Some(old), Some(new)) if new > old => Some(new - old),
            _ => None,
        };
        // The counts are remembered only once a listing succeeded (see `decide`), or once
        // the growth is explained by documents processing now (see `explained`).
        match grew {
            Some(n) if !due => plan.grown.push((ds.clone(), n)),
            _ if changed || due => plan.to_list.push(ds.clone()),
            _ => {}
        }
    }
    state.baselined = true;
    plan
}

/// Whether a knowledge base that gained `grew` documents needs no listing: the probe showed at
/// least that many documents processing that were not known before (each upload is one of
/// them). Then its counts are taken as listed.
pub fn explained(kb: &mut KbState, grew: i64, new_processing: usize, probe: &DatasetInfo) -> bool {
    let ok = grew <= new_processing as i64;
    if ok {
        kb.doc_count = probe.doc_count;
        kb.update_time = probe.update_time;
    }
    ok
}

/// What to do with one knowledge base's listing.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Documents to watch (not known before), as listed.
    pub watch: Vec<DocumentInfo>,
    /// Documents already terminal at the baseline: recorded without events.
    pub baseline: Vec<DocumentInfo>,
}

/// Decides about a complete listing of `kb` (`listed`), given the documents the store already
/// knows. At the baseline, documents already terminal are recorded silently and the others
/// watched; afterwards every unknown document is watched (one already terminal fires its
/// event once, at its first poll).
pub fn decide(
    kb: &mut KbState,
    listed: Vec<DocumentInfo>,
    known: &HashSet<DocumentId>,
    probe: Option<&DatasetInfo>,
    now: UnixMs,
) -> Decision {
    let mut d = Decision::default();
    for doc in listed {
        if known.contains(&doc.document_id) {
            continue;
        }
        let terminal = doc.status.is_some_and(DocumentStatus::is_terminal);
        if kb.baseline_pending && terminal {
            d.baseline.push(doc);
        } else {
            d.watch.push(doc);
        }
    }
    kb.baseline_pending = false;
    kb.listed_at = Some(now);
    if let Some(p) = probe {
        kb.doc_count = p.doc_count;
        kb.update_time = p.update_time;
    }
    d
}

/// Reads every page of a document list from `first`, calling `fetch(page)`. Stops when
/// `total` documents were read, on a short or empty page, on a page that brings no document
/// not seen before (a server that ignores the page number), or after [`MAX_PAGES`].
pub async fn page_all<F, Fut>(
    first: u32,
    per_page: usize,
    mut fetch: F,
) -> Result<Vec<DocumentInfo>, ApiError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<DocumentPage, ApiError>>,
{
    let mut seen: HashSet<DocumentId> = HashSet::new();
    let mut out = Vec::new();
    for page in first..first.saturating_add(MAX_PAGES) {
        let p = fetch(page).await?;
        let len = p.documents.len();
        let before = out.len();
        for doc in p.documents {
            if seen.insert(doc.document_id.clone()) {
                out.push(doc);
            }
        }
        let fresh = out.len() - before;
        let complete = p.total.is_some_and(|t| out.len() as u64 >= t);
        if len == 0 || fresh == 0 || len < per_page || complete {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::config::WatchedDocument;

    fn space(only: Option<&[&str]>, exclude: &[&str]) -> SpaceWatch {
        SpaceWatch {
            space: SpaceId::new("9"),
            only: only.map(|o| o.iter().map(DatasetId::new).collect()),
            exclude: exclude.iter().map(DatasetId::new).collect::<BTreeSet<_>>(),
            rule: WatchedDocument {
                labels: Arc::default(),
                notify: None,
                batch: None,
            },
        }
    }

    fn kb(id: &str, count: i64, updated: i64, processing: &[&str]) -> DatasetInfo {
        DatasetInfo {
            dataset_id: DatasetId::new(id),
            name: None,
            status: Some(1),
            doc_count: Some(count),
            update_time: Some(updated),
            processing_file_id_list: processing.iter().map(DocumentId::new).collect(),
            dataset_type: None,
        }
    }

    fn doc(id: &str, status: i64) -> DocumentInfo {
        DocumentInfo {
            document_id: DocumentId::new(id),
            name: Some(format!("{id}.pdf")),
            status: Some(DocumentStatus::from(status)),
            create_time: None,
            update_time: None,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_space_lists_only_what_changed_or_is_due_for_a_relisting() {
        let entry = space(None, &["3"]);
        let mut state = ScopeState::new(&Scope::Space(SpaceId::new("9")));
        let probe = [
            kb("1", 5, 100, &["11"]),
            kb("2", 0, 100, &[]),
            kb("3", 1, 1, &[]),
        ];
        let plan = plan_space(&mut state, &entry, &probe, UnixMs(0), HOUR);
        assert_eq!(plan.to_list, [DatasetId::new("1"), DatasetId::new("2")]);
        assert_eq!(
            plan.processing,
            [(DatasetId::new("1"), DocumentId::new("11"))]
        );
        assert!(
            state.datasets[&DatasetId::new("1")].baseline_pending,
            "there at adoption"
        );
        for ds in ["1", "2"] {
            let kb = state.datasets.get_mut(&DatasetId::new(ds)).unwrap();
            decide(
                kb,
                vec![],
                &HashSet::new(),
                probe.iter().find(|p| p.dataset_id.as_str() == ds),
                UnixMs(0),
            );
        }
        // Nothing changed: nothing to list.
        let plan = plan_space(&mut state, &entry, &probe, UnixMs(60_000), HOUR);
        assert!(plan.to_list.is_empty(), "{plan:?}");
        // One grew, one changed otherwise, and a new knowledge base appeared.
        let probe2 = [
            kb("1", 6, 100, &["12"]),
            kb("2", 0, 101, &[]),
            kb("4", 1, 5, &[]),
        ];
        let plan = plan_space(&mut state, &entry, &probe2, UnixMs(120_000), HOUR);
        assert_eq!(plan.to_list, [DatasetId::new("2"), DatasetId::new("4")]);
        assert_eq!(plan.grown, [(DatasetId::new("1"), 1)]);
        let one = state.datasets.get_mut(&DatasetId::new("1")).unwrap();
        assert!(
            !explained(one, 1, 0, &probe2[0]),
            "the new one is not processing"
        );
        assert!(
            explained(one, 1, 1, &probe2[0]),
            "the new one is processing"
        );
        assert_eq!(one.doc_count, Some(6));
        assert!(
            !state.datasets[&DatasetId::new("4")].baseline_pending,
            "new after adoption"
        );
        // An hour after its listing, an unchanged one is listed again.
        let plan = plan_space(&mut state, &entry, &probe, UnixMs(3_600_000), HOUR);
        assert!(plan.to_list.contains(&DatasetId::new("2")));
    }

    #[test]
    fn disabled_and_volcano_knowledge_bases_are_skipped_and_reported_once() {
        let entry = space(None, &[]);
        let mut state = ScopeState::default();
        let mut off = kb("1", 1, 1, &["5"]);
        off.status = Some(3);
        let mut volcano = kb("2", 1, 1, &[]);
        volcano.dataset_type = Some("volcano".into());
        let probe = [off, volcano];
        let plan = plan_space(&mut state, &entry, &probe, UnixMs(0), HOUR);
        assert!(plan.to_list.is_empty() && plan.processing.is_empty());
        assert_eq!(
            plan.newly_skipped,
            [
                (DatasetId::new("1"), Skip::Disabled),
                (DatasetId::new("2"), Skip::Volcano)
            ]
        );
        let again = plan_space(&mut state, &entry, &probe, UnixMs(1), HOUR);
        assert!(again.newly_skipped.is_empty(), "logged once");
        assert_eq!(state.covered().count(), 0);
    }

    #[test]
    fn the_baseline_records_terminal_documents_silently_and_later_ones_are_watched() {
        let mut kb_state = KbState {
            baseline_pending: true,
            ..KbState::default()
        };
        let known = HashSet::new();
        let first = decide(
            &mut kb_state,
            vec![doc("1", 1), doc("2", 9), doc("3", 0)],
            &known,
            None,
            UnixMs(0),
        );
        let ids = |d: &Decision| -> Vec<DocumentId> {
            d.watch.iter().map(|w| w.document_id.clone()).collect()
        };
        assert_eq!(ids(&first), [DocumentId::new("3")]);
        assert_eq!(first.baseline.len(), 2);
        let known: HashSet<DocumentId> = ["1", "2", "3"].iter().map(DocumentId::new).collect();
        let later = decide(
            &mut kb_state,
            vec![doc("1", 1), doc("4", 1), doc("3", 1)],
            &known,
            None,
            UnixMs(1),
        );
        assert_eq!(ids(&later), [DocumentId::new("4")], "new, even though done");
        assert!(later.baseline.is_empty());
    }

    fn pages(
        total: usize,
        per: usize,
        repeat: bool,
        first: u32,
    ) -> impl FnMut(u32) -> std::future::Ready<Result<DocumentPage, ApiError>> {
        let mut calls = 0;
        move |page: u32| {
            calls += 1;
            assert!(calls < 50, "looped");
            let index = if repeat { 0 } else { (page - first) as usize };
            let docs = (index * per..((index + 1) * per).min(total))
                .map(|i| doc(&format!("{}", 100 + i), 1))
                .collect();
            std::future::ready(Ok(DocumentPage {
                total: Some(total as u64),
                documents: docs,
            }))
        }
    }

    #[tokio::test]
    async fn paging_reads_every_page_from_one_or_zero_and_stops_on_a_repeat() {
        let one = page_all(1, 10, pages(25, 10, false, 1)).await.unwrap();
        assert_eq!(one.len(), 25);
        let zero = page_all(0, 10, pages(25, 10, false, 0)).await.unwrap();
        assert_eq!(zero.len(), 25);
        let repeated = page_all(1, 10, pages(25, 10, true, 1)).await.unwrap();
        assert_eq!(repeated.len(), 10, "a repeated page ends the listing");
        let exact = page_all(1, 10, pages(20, 10, false, 1)).await.unwrap();
        assert_eq!(exact.len(), 20);
    }
}
