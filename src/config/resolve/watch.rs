//! The watch list: `watch:` entries and the files of `include:`, ids, labels, `notify`, and
//! documents listed twice (named with both places).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::super::error::{KeyPath, Source, locate};
use super::super::raw::{RawConfig, RawDocuments, RawId, RawWatch, RawWatchFile};
use super::super::*;
use super::{Ctx, read_source};

/// Where a document was listed, for the "listed twice" error. The line is looked up only when
/// that error happens: locating re-reads the YAML, which is too slow to do per document.
struct Origin {
    file: PathBuf,
    path: KeyPath,
}

impl Origin {
    /// `file:line:column (key path)`, reading the file again to find the line.
    fn describe(&self) -> String {
        let at = std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|text| locate(&text, &self.path))
            .map(|at| format!(":{}:{}", at.line, at.column))
            .unwrap_or_default();
        format!("{}{at} ({})", self.file.display(), self.path)
    }
}

/// The watch list while it is being built: each document remembers where it was listed as
/// two numbers (its watch entry, its index there), so 100,000 documents cost no key paths.
#[derive(Default)]
struct WatchBuilder {
    datasets: BTreeMap<DatasetId, BTreeMap<DocumentId, (WatchedDocument, u32, u32)>>,
    all_of: BTreeMap<DatasetId, WatchedDocument>,
    spaces: Vec<SpaceWatch>,
    /// Per watch entry: its file and key path.
    entries: Vec<(PathBuf, KeyPath)>,
}

impl WatchBuilder {
    fn origin(&self, entry: u32, index: u32) -> Option<Origin> {
        let (file, path) = self.entries.get(entry as usize)?;
        Some(Origin {
            file: file.clone(),
            path: path.key("documents").index(index as usize),
        })
    }

    fn finish(self) -> WatchList {
        let mut list = WatchList {
            datasets: self
                .datasets
                .into_iter()
                // An entry whose documents were all invalid (or none) lists no dataset.
                .filter(|(_, docs)| !docs.is_empty())
                .map(|(ds, docs)| (ds, docs.into_iter().map(|(d, (w, _, _))| (d, w)).collect()))
                .collect(),
            all_of: self.all_of,
            spaces: self.spaces,
            batches: BTreeMap::new(),
        };
        list.index_batches();
        list
    }
}

pub(super) fn resolve_watch_list(
    ctx: &mut Ctx<'_>,
    src: &Source,
    raw: &mut RawConfig,
    notifiers: &BTreeSet<String>,
) -> WatchList {
    let mut list = WatchBuilder::default();
    let watch_path = KeyPath::root().key("watch");
    for (i, entry) in std::mem::take(&mut raw.watch).into_iter().enumerate() {
        let p = watch_path.index(i);
        add_watch_entry(ctx, src, &p, entry, notifiers, &mut list);
    }
    let include_path = KeyPath::root().key("include");
    let base = src.file.parent().unwrap_or(Path::new("."));
    for (i, pattern) in raw.include.iter().enumerate() {
        let p = include_path.index(i);
        let Some(pattern) = ctx.string(src, &p, pattern) else {
            continue;
        };
        for file in include_files(ctx, src, &p, base, &pattern) {
            let inc = match read_source(&file) {
                Ok(s) => s,
                Err(e) => {
                    ctx.diags.errors.push(e);
                    continue;
                }
            };
            if inc.text.trim().is_empty() {
                continue;
            }
            let entries: RawWatchFile = match serde_yaml::from_str(&inc.text) {
                Ok(e) => e,
                Err(e) => {
                    ctx.diags.errors.push(inc.parse_error(&e));
                    continue;
                }
            };
            for (j, entry) in entries.into_iter().enumerate() {
                let p = KeyPath::root().index(j);
                add_watch_entry(ctx, &inc, &p, entry, notifiers, &mut list);
            }
        }
    }
    list.finish()
}

fn include_files(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    base: &Path,
    pattern: &str,
) -> Vec<PathBuf> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let Some(full) = full.to_str() else {
        ctx.error(src, path, "include path is not valid UTF-8");
        return Vec::new();
    };
    match glob::glob(full) {
        Ok(paths) => {
            let mut files: Vec<PathBuf> = Vec::new();
            for entry in paths {
                match entry {
                    Ok(p) => files.push(p),
                    Err(e) => ctx.error(src, path, format!("cannot read {}", e.path().display())),
                }
            }
            files.sort();
            files
        }
        Err(e) => {
            ctx.error(src, path, format!("invalid glob pattern: {e}"));
            Vec::new()
        }
    }
}

fn add_watch_entry(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    entry: RawWatch,
    notifiers: &BTreeSet<String>,
    list: &mut WatchBuilder,
) {
    let rule = resolve_rule(ctx, src, path, &entry, notifiers);
    match (&entry.dataset, &entry.space) {
        (Some(_), Some(_)) => {
            ctx.error(
                src,
                &path.key("space"),
                "an entry names either a `dataset` or a `space`, not both",
            );
        }
        (None, None) => ctx.error(src, path, "an entry needs a `dataset` or a `space`"),
        (None, Some(space)) => add_space(ctx, src, path, space.clone(), &entry, rule, list),
        (Some(dataset), None) => add_dataset(ctx, src, path, dataset.clone(), entry, rule, list),
    }
}

/// The labels and notifiers an entry gives its documents.
fn resolve_rule(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    entry: &RawWatch,
    notifiers: &BTreeSet<String>,
) -> WatchedDocument {
    let mut labels = BTreeMap::new();
    for (k, v) in &entry.labels {
        if let Some(v) = ctx.string(src, &path.key("labels").key(k), v) {
            labels.insert(k.clone(), v);
        }
    }
    let notify = entry.notify.as_ref().map(|names| {
        for (i, n) in names.iter().enumerate() {
            if !notifiers.contains(n) {
                ctx.error(
                    src,
                    &path.key("notify").index(i),
                    format!("unknown notifier {n:?} (not in `notifiers`)"),
                );
            }
        }
        std::sync::Arc::<[String]>::from(names.clone())
    });
    let batch = entry.batch.as_ref().and_then(|b| {
        let b = ctx.string(src, &path.key("batch"), b)?;
        match crate::config::validate::batch_name(&b) {
            Ok(()) => Some(std::sync::Arc::<str>::from(b)),
            Err(m) => {
                ctx.error(src, &path.key("batch"), m);
                None
            }
        }
    });
    WatchedDocument {
        labels: std::sync::Arc::new(labels),
        notify,
        batch,
    }
}

fn add_space(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    space: RawId,
    entry: &RawWatch,
    rule: WatchedDocument,
    list: &mut WatchBuilder,
) {
    if entry.documents.is_some() {
        ctx.error(
            src,
            &path.key("documents"),
            "a `space` entry watches every document of its knowledge bases; use `datasets` or `exclude` to choose knowledge bases",
        );
    }
    if entry.batch.is_some() {
        ctx.error(
            src,
            &path.key("batch"),
            "a batch needs its documents named: a `space` entry never completes",
        );
    }
    let space = ctx
        .string(src, &path.key("space"), &space.0)
        .and_then(|s| check_id(ctx, src, &|| path.key("space"), s));
    let mut ids = |key: &'static str, raw: &Option<Vec<RawId>>| -> BTreeSet<DatasetId> {
        let mut out = BTreeSet::new();
        for (i, id) in raw.iter().flatten().enumerate() {
            if let Some(id) = ctx.id(src, &|| path.key(key).index(i), id.0.clone()) {
                out.insert(DatasetId::new(id));
            }
        }
        out
    };
    let only = entry
        .datasets
        .is_some()
        .then(|| ids("datasets", &entry.datasets));
    let exclude = ids("exclude", &entry.exclude);
    let Some(space) = space.map(SpaceId::new) else {
        return;
    };
    if list.spaces.iter().any(|s| s.space == space) {
        ctx.error(
            src,
            &path.key("space"),
            format!("space {space} is listed twice"),
        );
        return;
    }
    list.spaces.push(SpaceWatch {
        space,
        only,
        exclude,
        rule,
    });
}

fn add_dataset(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &KeyPath,
    dataset: RawId,
    entry: RawWatch,
    rule: WatchedDocument,
    list: &mut WatchBuilder,
) {
    for key in ["datasets", "exclude"] {
        let present = if key == "datasets" {
            entry.datasets.is_some()
        } else {
            entry.exclude.is_some()
        };
        if present {
            ctx.error(
                src,
                &path.key(key),
                format!("`{key}` belongs to a `space` entry"),
            );
        }
    }
    let dataset = ctx
        .string(src, &path.key("dataset"), &dataset.0)
        .and_then(|d| check_id(ctx, src, &|| path.key("dataset"), d))
        .map(DatasetId::new);
    let documents = match entry.documents {
        Some(RawDocuments::All) if entry.batch.is_some() => {
            ctx.error(
                src,
                &path.key("batch"),
                "a batch needs its documents named: `documents: all` never completes",
            );
            return;
        }
        Some(RawDocuments::All) => {
            if let Some(ds) = dataset
                && list.all_of.insert(ds.clone(), rule).is_some()
            {
                ctx.error(
                    src,
                    &path.key("documents"),
                    format!("dataset {ds} is listed with `documents: all` twice"),
                );
            }
            return;
        }
        Some(RawDocuments::Other(text)) => {
            ctx.error(
                src,
                &path.key("documents"),
                format!("{text:?} is not a list of document ids (write `documents: all` to watch every document)"),
            );
            return;
        }
        Some(RawDocuments::List(ids)) => ids,
        None => Vec::new(),
    };
    if documents.is_empty() {
        ctx.warn(src, &path.key("documents"), "no documents listed");
    }
    let entry_no = list.entries.len() as u32;
    list.entries.push((src.file.clone(), path.clone()));
    let Some(dataset) = dataset else {
        // Still check the ids, so one run reports every problem.
        for (i, doc) in documents.into_iter().enumerate() {
            ctx.id(src, &|| path.key("documents").index(i), doc.0);
        }
        return;
    };
    let mut duplicates = Vec::new();
    let docs = list.datasets.entry(dataset.clone()).or_default();
    for (i, doc) in documents.into_iter().enumerate() {
        let doc_path = || path.key("documents").index(i);
        let Some(doc) = ctx.id(src, &doc_path, doc.0) else {
            continue;
        };
        match docs.entry(DocumentId::new(doc)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((rule.clone(), entry_no, i as u32));
            }
            std::collections::btree_map::Entry::Occupied(o) => {
                let (_, first_entry, first_index) = o.get();
                duplicates.push((i, o.key().clone(), *first_entry, *first_index));
            }
        }
    }
    for (i, document, first_entry, first_index) in duplicates {
        let first = list
            .origin(first_entry, first_index)
            .map(|o| o.describe())
            .unwrap_or_default();
        ctx.error(
            src,
            &path.key("documents").index(i),
            format!("document {document} of dataset {dataset} is listed twice; first at {first}"),
        );
    }
}

/// Checks an expanded id ([`validate::id`]). The key path is built only for an error.
pub(super) fn check_id(
    ctx: &mut Ctx<'_>,
    src: &Source,
    path: &dyn Fn() -> KeyPath,
    id: String,
) -> Option<String> {
    match validate::id(&id) {
        Ok(()) => Some(id),
        Err(msg) => {
            ctx.error(src, &path(), msg);
            None
        }
    }
}
