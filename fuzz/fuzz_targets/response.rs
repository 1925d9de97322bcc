//! The Coze answer parser: any status, any headers, any body must classify without a panic,
//! and a good answer's documents must keep ids as strings.
#![no_main]

use coze_watch::coze::error::{Exchange, classify};
use coze_watch::ids::{DatasetId, DocumentId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = data.split_at(data.len().min(4));
    let http = head
        .first()
        .map_or(200, |b| [200u16, 200, 200, 401, 403, 404, 429, 400, 500, 502, 302][*b as usize % 11]);
    let retry_after = head.get(1).map(|b| b.to_string());
    let logid = head.get(2).map(|b| format!("L{b}"));
    let ds = DatasetId::new("7400000000000000001");
    let batch = [DocumentId::new("1"), DocumentId::new("2")];
    let x = Exchange {
        dataset: &ds,
        batch: &batch,
        http,
        retry_after: retry_after.as_deref(),
        header_logid: logid.as_deref(),
        body,
    };
    if let Ok(answer) = classify(&x) {
        for d in answer.documents {
            let _ = d.status.is_terminal();
        }
    }
});
