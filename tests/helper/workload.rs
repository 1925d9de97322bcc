//! A seeded workload of many documents for the crash and failover tests: the documents, the
//! config's `watch:` for all of them, the simulator's scenario, and what a receiver got.

use std::collections::BTreeMap;

use coze_watch::sim::{Outcome, Scenario, SimDocument};

use super::receiver::Receiver;
use super::{doc, scenario};

/// Knowledge bases with their documents.
pub type Workload = Vec<(String, Vec<SimDocument>)>;

/// `datasets` x `per` documents finishing between `lo` and `hi` seconds, 1 in 10 failing;
/// the same every run (a fixed seed).
pub fn workload(datasets: usize, per: usize, lo: u64, hi: u64) -> Workload {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..datasets)
        .map(|d| {
            let docs = (0..per)
                .map(|i| {
                    let id = format!("{}", 7_500_000_000_000_000_000u64 + (d * per + i) as u64);
                    let secs = lo + next() % (hi - lo + 1);
                    let outcome = if next() % 10 == 0 {
                        Outcome::Failed
                    } else {
                        Outcome::Completed
                    };
                    doc(&id, secs, outcome)
                })
                .collect();
            (format!("{}", 7_400_000_000_000_000_000u64 + d as u64), docs)
        })
        .collect()
}

/// The simulator's scenario serving `w`.
pub fn scenario_of(w: &Workload) -> Scenario {
    scenario(
        w.iter()
            .map(|(d, docs)| (d.as_str(), docs.clone()))
            .collect(),
    )
}

/// `watch:` naming every document of `w`.
pub fn watch_all(w: &Workload) -> String {
    let mut s = String::from("watch:\n");
    for (ds, docs) in w {
        let ids: Vec<String> = docs.iter().map(|d| format!("\"{}\"", d.id)).collect();
        s.push_str(&format!(
            "  - dataset: \"{ds}\"\n    documents: [{}]\n",
            ids.join(", ")
        ));
    }
    s
}

/// Each document's event ids, in the order the receiver accepted them (answers other than
/// 200 left out).
pub fn received_by_document(rx: &Receiver) -> BTreeMap<String, Vec<String>> {
    let mut by_doc: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rx.requests().iter().filter(|r| r.answered == 200) {
        let v = r.json();
        by_doc
            .entry(v["data"]["document_id"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(v["data"]["event_id"].as_str().unwrap_or("").to_string());
    }
    by_doc
}
