//! What the simulator serves: datasets, documents, their processing timelines and outcomes,
//! how honest `remaining_time` is, and the faults to inject.
//!
//! A scenario is data (YAML or JSON) or the output of [`generate`]. Given a document and the
//! time since the simulator started, [`SimDocument::view_at`] says exactly what the API reports,
//! so the timeline logic is testable without a server.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// The bearer token the simulator accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "sim-token";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "default_token")]
    pub token: String,
    #[serde(default)]
    pub hints: Hints,
    #[serde(default)]
    pub faults: Faults,
    /// Enforce a per-space quota like Coze's, read strictly: at most floor(this) requests in any
    /// sliding second and 60 times that in any sliding minute; excess gets 429 (code 4013).
    #[serde(default)]
    pub quota_per_second: Option<f64>,
    /// The most document ids one `/process` request may carry; more get code 4000 ("too many
    /// document_ids (at most N)"). `None`: no limit.
    #[serde(default)]
    pub max_ids: Option<usize>,
    /// Serve like a self-hosted Coze Studio: document-list pages from 0.
    #[serde(default)]
    pub studio: bool,
    /// How long documents created through the create endpoint take.
    #[serde(default = "default_create_duration", with = "duration_text")]
    pub create_duration: Duration,
    pub datasets: Vec<SimDataset>,
}

fn default_create_duration() -> Duration {
    Duration::from_secs(3)
}

fn default_token() -> String {
    DEFAULT_TOKEN.to_string()
}

/// How `remaining_time` relates to the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hints {
    #[default]
    Honest,
    /// Twice the truth.
    X2,
    /// Half the truth.
    Half,
    /// Always 0.
    Zero,
}

impl std::str::FromStr for Hints {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "honest" => Ok(Hints::Honest),
            "x2" => Ok(Hints::X2),
            "half" => Ok(Hints::Half),
            "zero" => Ok(Hints::Zero),
            _ => Err(format!("unknown hints mode {s:?} (honest, x2, half, zero)")),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDataset {
    pub id: String,
    /// The space `GET /v1/datasets` lists it in.
    #[serde(default)]
    pub space: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Listed as disabled (status 3).
    #[serde(default)]
    pub disabled: bool,
    /// Listed as a Volcano-engine knowledge base (`dataset_type: "volcano"`).
    #[serde(default)]
    pub volcano: bool,
    pub documents: Vec<SimDocument>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDocument {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_type", rename = "type")]
    pub file_type: String,
    #[serde(default = "default_size")]
    pub size: i64,
    /// When processing starts, after the simulator starts (an upload arriving later).
    #[serde(default, with = "duration_text")]
    pub start_after: Duration,
    /// How long processing takes.
    #[serde(with = "duration_text")]
    pub duration: Duration,
    #[serde(default)]
    pub outcome: Outcome,
    /// `status_descript` of a failed document.
    #[serde(default)]
    pub reason: Option<String>,
    /// Where a `stalled` document's progress stops, in percent.
    #[serde(default = "default_stall_at")]
    pub stall_at: u8,
}

fn default_type() -> String {
    "pdf".to_string()
}
fn default_size() -> i64 {
    171_340
}
fn default_stall_at() -> u8 {
    50
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    Completed,
    Failed,
    /// Progress stops at `stall_at` and the document stays processing forever.
    Stalled,
    /// Status 3 at the end (self-hosted Coze Studio's deleted).
    Deleted,
    /// Left out of every answer after the end (a deletion on the SaaS).
    Vanished,
}

/// Faults applied to process requests. `script` entries are used first, one per request; then
/// each rate is rolled independently.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// HTTP 500 with code 5000.
    pub error_rate: f64,
    /// HTTP 429 with code 4013 and `Retry-After: retry_after_secs`.
    pub rate_limit_rate: f64,
    pub retry_after_secs: Option<u64>,
    /// Added to every answer.
    pub latency_ms: u64,
    /// HTTP 200 with an HTML body.
    pub malformed_rate: f64,
    /// HTTP 200 with code 5000.
    pub code_error_rate: f64,
    pub script: Vec<Injection>,
    /// Listing endpoints answer 4101 (a token without `listKnowledge`/`listDocument`).
    pub listing_denied: bool,
    /// The create endpoint answers 4101 (a token without `createDocument`).
    pub create_denied: bool,
    /// The document list ignores the page number (every page is the first).
    pub repeat_pages: bool,
}

/// One scripted answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Injection {
    /// The normal answer (places a fault at the k-th request of a script).
    Pass,
    /// Answer with this HTTP status and (if given) this body code.
    Status {
        http: u16,
        #[serde(default)]
        code: Option<i64>,
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// An HTML page with this HTTP status (a proxy's 502).
    Html { http: u16 },
    /// A JSON answer cut in the middle.
    Truncated,
    /// The connection breaks after the headers.
    Reset,
    /// The normal answer, this much later.
    Delay { ms: u64 },
    /// The normal answer with unknown extra fields everywhere.
    ExtraFields,
    /// The normal answer, with every document's status replaced by this value.
    UnknownStatus { status: i64 },
    /// The normal answer, with progress lowered (as if it went backwards).
    ProgressBack,
    /// A body larger than any client cap.
    Oversize,
    /// The normal answer with `document_id` as JSON numbers instead of strings.
    NumericIds,
    /// Exactly this body, with this HTTP status.
    Raw { http: u16, body: String },
}

/// What the API reports for one document at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub status: i64,
    pub progress: i64,
    pub remaining_time: i64,
    pub status_descript: Option<String>,
}

impl SimDocument {
    /// When the document reaches its terminal state, after the simulator starts.
    /// `None` for a stalled document, which never does.
    pub fn terminal_after(&self) -> Option<Duration> {
        match self.outcome {
            Outcome::Stalled => None,
            _ => Some(self.start_after + self.duration),
        }
    }

    /// What the API says at `elapsed` since start; `None` when the document is left out.
    pub fn view_at(&self, elapsed: Duration, hints: Hints) -> Option<View> {
        let end = self.start_after + self.duration;
        let done = elapsed >= end;
        let run = elapsed.saturating_sub(self.start_after).as_secs_f64();
        let total = self.duration.as_secs_f64().max(0.001);
        let mut progress = ((run / total) * 100.0).floor().clamp(0.0, 99.0) as i64;
        let remaining = end.saturating_sub(elapsed).as_secs_f64().ceil() as i64;
        if self.outcome == Outcome::Stalled {
            progress = progress.min(i64::from(self.stall_at));
        }
        let hint = match hints {
            Hints::Honest => remaining,
            Hints::X2 => remaining * 2,
            Hints::Half => remaining / 2,
            Hints::Zero => 0,
        };
        let processing = View {
            status: 0,
            progress,
            remaining_time: hint,
            status_descript: None,
        };
        if !done || self.outcome == Outcome::Stalled {
            return Some(processing);
        }
        match self.outcome {
            Outcome::Completed => Some(View {
                status: 1,
                progress: 100,
                remaining_time: 0,
                status_descript: None,
            }),
            Outcome::Failed => Some(View {
                status: 9,
                progress,
                remaining_time: 0,
                status_descript: Some(
                    self.reason
                        .clone()
                        .unwrap_or_else(|| "slicing failed (simulated)".to_string()),
                ),
            }),
            Outcome::Deleted => Some(View {
                status: 3,
                progress,
                remaining_time: 0,
                status_descript: None,
            }),
            Outcome::Vanished | Outcome::Stalled => None,
        }
    }
}

/// Generator parameters (`simulate --datasets N ...`, the benchmarks).
#[derive(Clone, Debug)]
pub struct Generator {
    pub datasets: usize,
    pub documents_per_dataset: usize,
    pub fail_rate: f64,
    pub min_duration: Duration,
    pub max_duration: Duration,
    /// Uploads start uniformly within this window.
    pub upload_spread: Duration,
    pub hints: Hints,
    pub seed: u64,
    /// Every dataset in this space (for discovery).
    pub space: Option<String>,
}

/// Dataset ids start here; document ids at [`FIRST_DOCUMENT_ID`]. 19 digits, like Coze's.
pub const FIRST_DATASET_ID: u64 = 7_400_000_000_000_000_000;
pub const FIRST_DOCUMENT_ID: u64 = 7_500_000_000_000_000_000;

pub fn generate(g: &Generator) -> Scenario {
    let mut rng = StdRng::seed_from_u64(g.seed);
    let mut next_doc = FIRST_DOCUMENT_ID;
    let types = ["pdf", "txt", "docx", "doc", "md", "jpg"];
    let datasets = (0..g.datasets)
        .map(|i| SimDataset {
            id: (FIRST_DATASET_ID + i as u64).to_string(),
            space: g.space.clone(),
            name: None,
            disabled: false,
            volcano: false,
            documents: (0..g.documents_per_dataset)
                .map(|_| {
                    next_doc += 1;
                    let failed = rng.random_bool(g.fail_rate.clamp(0.0, 1.0));
                    let file_type = types[rng.random_range(0..types.len())].to_string();
                    SimDocument {
                        id: next_doc.to_string(),
                        name: Some(format!("doc-{next_doc}.{file_type}")),
                        file_type,
                        size: rng.random_range(1_000..50_000_000),
                        start_after: random_between(&mut rng, Duration::ZERO, g.upload_spread),
                        duration: random_between(&mut rng, g.min_duration, g.max_duration),
                        outcome: if failed {
                            Outcome::Failed
                        } else {
                            Outcome::Completed
                        },
                        reason: failed.then(|| "document parsing failed (simulated)".to_string()),
                        stall_at: default_stall_at(),
                    }
                })
                .collect(),
        })
        .collect();
    Scenario {
        token: default_token(),
        hints: g.hints,
        faults: Faults::default(),
        quota_per_second: None,
        max_ids: None,
        studio: false,
        create_duration: default_create_duration(),
        datasets,
    }
}

fn random_between(rng: &mut StdRng, lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    let ms = rng.random_range(lo.as_millis() as u64..=hi.as_millis() as u64);
    Duration::from_millis(ms)
}

/// Durations as humantime text (`20s`, `1m 30s`) in scenario files.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(outcome: Outcome) -> SimDocument {
        SimDocument {
            id: "1".into(),
            name: None,
            file_type: "pdf".into(),
            size: 1,
            start_after: Duration::from_secs(10),
            duration: Duration::from_secs(100),
            outcome,
            reason: None,
            stall_at: 30,
        }
    }

    #[test]
    fn progress_and_remaining_time_move_with_time() {
        let d = doc(Outcome::Completed);
        let v = d.view_at(Duration::from_secs(0), Hints::Honest).unwrap();
        assert_eq!((v.status, v.progress, v.remaining_time), (0, 0, 110));
        let v = d.view_at(Duration::from_secs(60), Hints::Honest).unwrap();
        assert_eq!((v.status, v.progress, v.remaining_time), (0, 50, 50));
        let v = d.view_at(Duration::from_secs(110), Hints::Honest).unwrap();
        assert_eq!((v.status, v.progress, v.remaining_time), (1, 100, 0));
    }

    #[test]
    fn hints_lie_as_asked() {
        let d = doc(Outcome::Completed);
        let at = Duration::from_secs(60);
        assert_eq!(d.view_at(at, Hints::X2).unwrap().remaining_time, 100);
        assert_eq!(d.view_at(at, Hints::Half).unwrap().remaining_time, 25);
        assert_eq!(d.view_at(at, Hints::Zero).unwrap().remaining_time, 0);
    }

    #[test]
    fn outcomes_at_the_end() {
        let end = Duration::from_secs(200);
        let f = doc(Outcome::Failed).view_at(end, Hints::Honest).unwrap();
        assert_eq!(f.status, 9);
        assert!(f.status_descript.is_some());
        assert_eq!(
            doc(Outcome::Deleted)
                .view_at(end, Hints::Honest)
                .unwrap()
                .status,
            3
        );
        assert_eq!(doc(Outcome::Vanished).view_at(end, Hints::Honest), None);
        let s = doc(Outcome::Stalled).view_at(end, Hints::Honest).unwrap();
        assert_eq!((s.status, s.progress), (0, 30));
        assert_eq!(doc(Outcome::Stalled).terminal_after(), None);
    }

    #[test]
    fn generator_is_deterministic_and_uses_19_digit_ids() {
        let g = Generator {
            datasets: 3,
            documents_per_dataset: 4,
            fail_rate: 0.5,
            min_duration: Duration::from_secs(1),
            max_duration: Duration::from_secs(5),
            upload_spread: Duration::from_secs(2),
            hints: Hints::Honest,
            space: None,
            seed: 7,
        };
        let a = generate(&g);
        let b = generate(&g);
        assert_eq!(a.datasets.len(), 3);
        assert_eq!(a.datasets[0].id.len(), 19);
        assert_eq!(a.datasets[2].documents[3].id.len(), 19);
        assert_eq!(
            serde_json::to_string(&a.datasets).unwrap(),
            serde_json::to_string(&b.datasets).unwrap()
        );
    }
}
