//! `coze-watch upload`: creates documents in a knowledge base (local files as base64, web
//! pages by URL), prints what was created, then waits for them like `wait` (`--wait`) or hands
//! them to the running daemon as a run-time watch entry (`--watch`).
//!
//! It owns the upload rules: which files may go (type, size), how they are grouped (at most
//! ten a request, one upload method a request), and what counts as created. It never retries a
//! create that may have reached the server (a create is not idempotent): a timeout after
//! sending is reported as an unknown outcome with the file names. Only a refusal (429) is
//! asked again. At most one request's files are in memory at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Serialize;

use crate::coze::{ApiError, ClientSettings, CozeClient, TransientKind, listing};
use crate::ids::{DatasetId, DocumentId};
use crate::wait::{self, Display, WaitOptions, WaitReport};

/// The most documents one create request may carry.
pub const PER_REQUEST: usize = 10;
/// The file types a text knowledge base takes, by extension.
pub const FILE_TYPES: [&str; 4] = ["pdf", "txt", "doc", "docx"];
/// The shortest auto-update interval of a web page, in hours.
pub const MIN_UPDATE_HOURS: u32 = 24;
/// How often a create refused with 429 is asked again before it counts as not created.
const RATE_LIMITED_TRIES: usize = 5;

/// The arguments of `coze-watch upload`.
#[derive(clap::Args)]
pub struct UploadArgs {
    /// The knowledge base (dataset) id.
    pub dataset_id: String,
    /// Local files to upload: pdf, txt, doc, docx.
    pub files: Vec<PathBuf>,
    /// A web page to add (repeatable).
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Re-crawl the --url pages every this many hours (at least 24; default: never).
    #[arg(long, value_name = "HOURS")]
    pub update_interval: Option<u32>,
    /// Name the documents as one batch (`batch.completed` fires when all are done; with
    /// --watch).
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,
    /// A label copied into every event of these documents, key=value (repeatable; with
    /// --watch).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Then block until every created document is processed, exactly like `wait`.
    #[arg(long, conflicts_with = "watch")]
    pub wait: bool,
    /// With --wait: give up after this long (exit 3), e.g. 30m.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "wait")]
    pub timeout: Option<Duration>,
    /// Then hand the created documents to the running daemon (a run-time watch entry in the
    /// config's store) and return.
    #[arg(long)]
    pub watch: bool,
    /// Print one JSON object with the batch and its documents on stdout.
    #[arg(long)]
    pub json: bool,
    /// With --wait: no progress output.
    #[arg(long)]
    pub quiet: bool,
    /// Refuse (before any request) a file larger than this, e.g. 100MiB, 20MB.
    #[arg(long, value_name = "SIZE", default_value = "100MiB", value_parser = parse_size)]
    pub max_file_size: u64,
    /// How long one create request may take (a large file on a slow link needs minutes).
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// API base URL [default: $COZE_API_BASE, else https://api.coze.cn].
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    #[command(flatten)]
    pub config: crate::cli::ConfigArg,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 30m, 1h 30m)"))
}

/// `100MiB`, `20MB`, `500KiB`, `1GiB` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 100MiB, 20MB, 500KiB)"))?;
    let k = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (B, KB, KiB, MB, MiB, GB, GiB)"
            ));
        }
    };
    n.checked_mul(k)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// One thing to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File {
        path: PathBuf,
        name: String,
        file_type: String,
    },
    Url(String),
}

impl Source {
    /// How the output names it.
    pub fn label(&self) -> String {
        match self {
            Source::File { path, .. } => path.display().to_string(),
            Source::Url(u) => u.clone(),
        }
    }
}

/// Checks every file and URL before any request and groups them into requests: at most
/// [`PER_REQUEST`] each, files and web pages never mixed. The error names what is refused.
pub fn plan(
    files: &[PathBuf],
    urls: &[String],
    update_interval: Option<u32>,
    max_file_size: u64,
) -> Result<Vec<Vec<Source>>, String> {
    if files.is_empty() && urls.is_empty() {
        return Err("nothing to upload: name files, or web pages with --url".into());
    }
    if let Some(h) = update_interval {
        if urls.is_empty() {
            return Err("--update-interval applies to --url pages; none given".into());
        }
        if h < MIN_UPDATE_HOURS {
            return Err(format!(
                "--update-interval {h}: at least {MIN_UPDATE_HOURS} hours"
            ));
        }
    }
    let mut checked = Vec::with_capacity(files.len());
    for path in files {
        checked.push(check_file(path, max_file_size)?);
    }
    for u in urls {
        crate::config::validate::parse_http_url(u).map_err(|m| format!("--url {u}: {m}"))?;
    }
    let mut groups: Vec<Vec<Source>> = checked
        .chunks(PER_REQUEST)
        .map(<[Source]>::to_vec)
        .collect();
    groups.extend(
        urls.chunks(PER_REQUEST)
            .map(|c| c.iter().cloned().map(Source::Url).collect()),
    );
    Ok(groups)
}

fn check_file(path: &Path, max: u64) -> Result<Source, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !FILE_TYPES.contains(&ext.as_str()) {
        return Err(format!(
            "{}: {} cannot be uploaded (a text knowledge base takes {})",
            path.display(),
            if ext.is_empty() {
                "a file without an extension".to_string()
            } else {
                format!(".{ext} files")
            },
            FILE_TYPES.join(", ")
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a file", path.display()));
    }
    if meta.len() > max {
        return Err(format!(
            "{}: {} bytes, over --max-file-size ({max} bytes)",
            path.display(),
            meta.len()
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(Source::File {
        path: path.to_path_buf(),
        name,
        file_type: ext,
    })
}

/// The create request of one group; reads its files now (and only its files).
async fn request_body(
    dataset: &DatasetId,
    group: &[Source],
    update_interval: Option<u32>,
) -> Result<serde_json::Value, String> {
    let mut bases = Vec::with_capacity(group.len());
    for s in group {
        bases.push(match s {
            Source::File {
                path,
                name,
                file_type,
            } => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::json!({
                    "name": name,
                    "source_info": {
                        "file_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
                        "file_type": file_type,
                    },
                })
            }
            Source::Url(u) => serde_json::json!({
                "name": u,
                "source_info": {"web_url": u, "document_source": 1},
                "update_rule": match update_interval {
                    Some(h) => serde_json::json!({"update_type": 1, "update_interval": h}),
                    None => serde_json::json!({"update_type": 0}),
                },
            }),
        });
    }
    Ok(serde_json::json!({
        "dataset_id": dataset.as_str(),
        "document_bases": bases,
    }))
}

/// One created document.
#[derive(Clone, Debug, Serialize)]
pub struct Created {
    pub document_id: String,
    pub name: Option<String>,
}

/// A request whose documents were not created, or may have been.
#[derive(Clone, Debug, Serialize)]
pub struct Uncreated {
    /// `2/3`: which request of how many.
    pub request: String,
    pub files: Vec<String>,
    pub error: String,
    pub logid: Option<String>,
}

/// What `upload` did; with `--json`, its output.
#[derive(Debug, Default, Serialize)]
pub struct UploadReport {
    pub dataset_id: String,
    pub batch: Option<String>,
    pub documents: Vec<Created>,
    /// Refused by the server or never sent: safe to upload again.
    pub not_created: Vec<Uncreated>,
    /// Sent, but no answer says what happened: look before uploading again.
    pub unknown_outcome: Vec<Uncreated>,
    /// The API refuses the token or the knowledge base (exit 4).
    pub api_unusable: Option<String>,
    /// Set with --watch: the run-time entries added.
    pub watched: Option<usize>,
    pub exit_code: u8,
    pub wait: Option<WaitReport>,
}

/// How one create request ended.
enum Outcome {
    Created(Vec<Created>),
    NotCreated(String, Option<String>),
    Unknown(String),
    Unusable(ApiError),
}

/// Sends one group's create request: a 429 is asked again (nothing was created); anything
/// that may have reached the server is not.
async fn create(client: &CozeClient, dataset: &DatasetId, body: &serde_json::Value) -> Outcome {
    let mut tries = 0;
    loop {
        tries += 1;
        let result = client.create_documents(dataset, body).await;
        return match result {
            Ok(answer) => match listing::document_page(&answer) {
                Ok(page) if !page.documents.is_empty() => Outcome::Created(
                    page.documents
                        .into_iter()
                        .map(|d| Created {
                            document_id: d.document_id.to_string(),
                            name: d.name,
                        })
                        .collect(),
                ),
                Ok(_) => Outcome::Unknown("the answer lists no created document".into()),
                Err(e) => Outcome::Unknown(format!("unreadable answer: {e}")),
            },
            Err(ApiError::RateLimited { .. }) if tries < RATE_LIMITED_TRIES => {
                // Refused, so nothing was created; the client paused for Retry-After.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(
                e @ (ApiError::Auth(_)
                | ApiError::Permission { .. }
                | ApiError::DatasetNotFound(_)
                | ApiError::Local(_)),
            ) => Outcome::Unusable(e),
            Err(
                e @ ApiError::Transient {
                    kind: TransientKind::Timeout | TransientKind::Body | TransientKind::InvalidBody,
                    ..
                },
            ) => Outcome::Unknown(e.to_string()),
            Err(e) => {
                let logid = e.logid().map(str::to_string);
                Outcome::NotCreated(e.to_string(), logid)
            }
        };
    }
}

/// Where `--watch` puts the run-time entry: the config's store and notifier names.
pub struct WatchTarget {
    pub store: crate::store::Location,
    pub notifiers: Vec<String>,
}

/// `coze-watch upload`: returns the exit code.
pub async fn command(
    args: UploadArgs,
    watch_target: Option<WatchTarget>,
) -> Result<u8, crate::http::BuildError> {
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        Ok(crate::exit::USAGE)
    };
    let groups = match plan(
        &args.files,
        &args.urls,
        args.update_interval,
        args.max_file_size,
    ) {
        Ok(g) => g,
        Err(msg) => return usage(msg),
    };
    // The wait shows what `wait` shows: bars on a terminal, lines elsewhere.
    let display = if args.quiet {
        Display::Quiet
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Display::Bars
    } else {
        Display::Lines
    };
    let mut opts = match wait::options(
        &args.dataset_id,
        &[],
        args.timeout,
        args.base_url.as_deref(),
        &crate::config::process_env,
        display,
    ) {
        Ok(o) => o,
        Err(msg) => return usage(msg),
    };
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.labels {
        match crate::runtime::parse_label(l) {
            Ok((k, v)) => {
                labels.insert(k, v);
            }
            Err(e) => return usage(e.to_string()),
        }
    }
    let mut report = upload(&opts, &groups, &args).await?;
    if let (Some(target), false) = (&watch_target, report.documents.is_empty()) {
        let req = crate::runtime::AddRequest {
            dataset_id: args.dataset_id.clone(),
            document_ids: report
                .documents
                .iter()
                .map(|d| d.document_id.clone())
                .collect(),
            labels,
            batch: args.batch.clone(),
            ..Default::default()
        };
        // The store's calls block (a PostgreSQL round trip, an SQLite write): not on the
        // runtime's thread.
        let (store, notifiers) = (target.store.clone(), target.notifiers.clone());
        let added =
            tokio::task::spawn_blocking(move || crate::runtime::cli::add(&store, &notifiers, &req))
                .await
                .unwrap_or_else(|e| Err(format!("the store task failed: {e}")));
        match added {
            Ok(n) => report.watched = Some(n),
            Err(e) => {
                eprintln!("error: cannot hand the documents to the daemon: {e}");
                report.exit_code = report.exit_code.max(crate::exit::FAILURE);
            }
        }
    }
    if args.wait && report.api_unusable.is_none() && !report.documents.is_empty() {
        opts.documents = report
            .documents
            .iter()
            .map(|d| DocumentId::new(&d.document_id))
            .collect();
        let interrupt = crate::signals::interrupt().unwrap_or_default();
        let waited = wait::run(opts, interrupt).await?;
        report.exit_code = combine(report.exit_code, waited.exit_code);
        report.wait = Some(waited);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into())
        );
    }
    Ok(report.exit_code)
}

/// The exit code of an upload followed by a wait: 130, then 4, then 1, then 3, then 0.
fn combine(upload: u8, waited: u8) -> u8 {
    use crate::exit::{API_UNUSABLE, FAILURE, INTERRUPTED, OK, TIMED_OUT};
    [INTERRUPTED, API_UNUSABLE, FAILURE, TIMED_OUT]
        .into_iter()
        .find(|c| upload == *c || waited == *c)
        .unwrap_or(OK)
}

/// Sends every group in order and prints each outcome (unless `--json`).
async fn upload(
    opts: &WaitOptions,
    groups: &[Vec<Source>],
    args: &UploadArgs,
) -> Result<UploadReport, crate::http::BuildError> {
    let client = CozeClient::new(ClientSettings {
        base_url: opts.base_url.clone(),
        token: opts.token.clone(),
        limits: crate::config::ApiLimits {
            request_timeout: args.request_timeout,
            ..crate::config::ApiLimits::default()
        },
        token_file: None,
    })?;
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    let mut report = UploadReport {
        dataset_id: opts.dataset.to_string(),
        batch: args.batch.clone(),
        ..Default::default()
    };
    let n = groups.len();
    for (k, group) in groups.iter().enumerate() {
        let files: Vec<String> = group.iter().map(Source::label).collect();
        let which = format!("{}/{n}", k + 1);
        let outcome = match request_body(&opts.dataset, group, args.update_interval).await {
            Ok(body) => create(&client, &opts.dataset, &body).await,
            Err(e) => Outcome::NotCreated(e, None),
        };
        match outcome {
            Outcome::Created(docs) => {
                for d in &docs {
                    say(format!(
                        "created {} {}",
                        d.document_id,
                        d.name.as_deref().unwrap_or("")
                    ));
                }
                report.documents.extend(docs);
            }
            Outcome::NotCreated(error, logid) => {
                say(format!(
                    "not created (request {which}): {}: {error}",
                    files.join(", ")
                ));
                report.not_created.push(Uncreated {
                    request: which,
                    files,
                    error,
                    logid,
                });
            }
            Outcome::Unknown(error) => {
                say(format!(
                    "unknown outcome (request {which}; not retried: look in the knowledge base before uploading these again): {}: {error}",
                    files.join(", ")
                ));
                report.unknown_outcome.push(Uncreated {
                    request: which,
                    files,
                    error,
                    logid: None,
                });
            }
            Outcome::Unusable(e) => {
                let rest: Vec<String> = groups[k..].iter().flatten().map(Source::label).collect();
                say(format!(
                    "error: the Coze API is unusable: {e}; not created: {}",
                    rest.join(", ")
                ));
                report.api_unusable = Some(e.to_string());
                break;
            }
        }
    }
    report.exit_code = if report.api_unusable.is_some() {
        crate::exit::API_UNUSABLE
    } else if report.not_created.is_empty() && report.unknown_outcome.is_empty() {
        crate::exit::OK
    } else {
        crate::exit::FAILURE
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("20MB"), Ok(20_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn files_are_grouped_by_ten_and_never_mixed_with_pages() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..23)
            .map(|i| {
                let p = dir.path().join(format!("f{i}.txt"));
                std::fs::write(&p, "x").unwrap();
                p
            })
            .collect();
        let urls = vec!["https://example.com/a".to_string()];
        let groups = plan(&files, &urls, Some(24), 1 << 20).unwrap();
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 3, 1]);
        assert!(matches!(groups[3][0], Source::Url(_)));
    }

    #[test]
    fn bad_input_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("a.png");
        std::fs::write(&png, "x").unwrap();
        let e = plan(&[png], &[], None, 100).unwrap_err();
        assert!(e.contains("a.png: .png files cannot be uploaded"), "{e}");
        let big = dir.path().join("big.pdf");
        std::fs::write(&big, vec![0u8; 101]).unwrap();
        let e = plan(&[big], &[], None, 100).unwrap_err();
        assert!(
            e.contains("big.pdf: 101 bytes, over --max-file-size (100 bytes)"),
            "{e}"
        );
        let url = vec!["https://example.com/".to_string()];
        assert!(
            plan(&[], &url, Some(12), 100)
                .unwrap_err()
                .contains("at least 24")
        );
        assert!(
            plan(&[], &[], None, 100)
                .unwrap_err()
                .contains("nothing to upload")
        );
    }

    #[test]
    fn exit_codes_combine_by_precedence() {
        assert_eq!(combine(0, 0), 0);
        assert_eq!(combine(1, 0), 1);
        assert_eq!(combine(0, 3), 3);
        assert_eq!(combine(1, 3), 1);
        assert_eq!(combine(0, 4), 4);
        assert_eq!(combine(1, 130), 130);
    }
}
