//! The configuration file as written: serde structs that mirror the YAML one to one.
//!
//! Every struct denies unknown keys (typo safety) and every value that may hold `${VAR}` is a
//! plain `String` here; nothing is defaulted, expanded or validated. `resolve` turns these into
//! the typed `Config` in one step. The same structs generate the config's JSON Schema
//! (`coze-watch config schema`), so the schema cannot drift from what is read; its patterns
//! accept `${VAR}` wherever a value may be one.

use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub poll: RawPoll,
    #[serde(default)]
    pub state: RawState,
    pub http: Option<RawHttp>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub notifiers: Vec<RawNotifier>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub watch: Vec<RawWatch>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub base_url: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
    pub request_timeout: Option<RawDuration>,
    pub max_ids_per_request: Option<u64>,
    pub max_requests_per_second: Option<f64>,
    pub max_requests_per_day: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
    #[schemars(extend("pattern" = r"^(cloud|studio)$|\$\{"))]
    pub flavor: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    pub min_interval: Option<RawDuration>,
    pub max_interval: Option<RawDuration>,
    pub jitter: Option<f64>,
    pub error_backoff: Option<RawBackoff>,
    pub stall_after: Option<RawDuration>,
    pub give_up_after: Option<RawDuration>,
    pub missing_after: Option<u64>,
    pub missing_grace: Option<RawDuration>,
    pub progress_step: Option<u64>,
    pub discover_interval: Option<RawDuration>,
    pub relist_interval: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub initial: Option<RawDuration>,
    pub max: Option<RawDuration>,
    pub multiplier: Option<f64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Option<String>,
    pub retention: Option<RawDuration>,
    /// `postgres://user@host:port/db?sslmode=..`: a PostgreSQL store instead of SQLite.
    pub url: Option<String>,
    pub password_file: Option<String>,
    pub lease_ttl: Option<RawDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: String,
    #[serde(default)]
    pub allow_remote: bool,
    pub api_token_env: Option<String>,
    pub api_token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[schemars(extend("pattern" = r"^(text|json)$|\$\{"))]
    pub format: Option<String>,
}

/// One notifier. All types share one flat struct so that parse errors keep their line numbers;
/// `resolve` rejects keys that do not belong to the notifier's `type`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotifier {
    pub name: Option<String>,
    #[serde(rename = "type")]
    #[schemars(extend("pattern" = r"^(log|webhook|exec)$|\$\{"))]
    pub kind: Option<String>,
    pub events: Option<Vec<String>>,
    pub retry: Option<RawRetry>,
    pub timeout: Option<RawDuration>,
    // webhook
    pub url: Option<String>,
    pub secret: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    #[schemars(extend("pattern" = r"^(standard|feishu|dingtalk|wecom|slack)$|\$\{"))]
    pub format: Option<String>,
    #[schemars(extend("pattern" = r"^(zh|en)$|\$\{"))]
    pub language: Option<String>,
    pub max_per_minute: Option<u64>,
    pub allow_insecure_http: Option<bool>,
    // exec
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub concurrency: Option<u64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub initial: Option<RawDuration>,
    pub max: Option<RawDuration>,
    pub multiplier: Option<f64>,
    pub max_attempts: Option<u64>,
    pub max_age: Option<RawDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWatch {
    pub dataset: Option<RawId>,
    pub space: Option<RawId>,
    pub documents: Option<RawDocuments>,
    /// `space` entries: only these knowledge bases.
    pub datasets: Option<Vec<RawId>>,
    /// `space` entries: never these knowledge bases.
    pub exclude: Option<Vec<RawId>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub notify: Option<Vec<String>>,
    /// Names the entry's documents as one batch (`batch.completed`); explicit documents only.
    pub batch: Option<String>,
}

/// `documents:` as written: a list of ids, or `all`.
#[derive(Debug, Clone)]
pub enum RawDocuments {
    All,
    List(Vec<RawId>),
    /// A single scalar other than `all` (an error naming it).
    Other(String),
}

impl<'de> Deserialize<'de> for RawDocuments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDocuments;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of document ids, or `all`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDocuments, E> {
                Ok(if v == "all" {
                    RawDocuments::All
                } else {
                    RawDocuments::Other(v.to_string())
                })
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawDocuments, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<RawId>()? {
                    ids.push(id);
                }
                Ok(RawDocuments::List(ids))
            }
        }
        d.deserialize_any(V)
    }
}

/// An include file: a YAML list of watch entries.
pub type RawWatchFile = Vec<RawWatch>;

/// A duration as written (`30s`, `1h 30m`, or `${VAR}`), parsed by `resolve` after expansion.
#[derive(Debug, Clone)]
pub struct RawDuration(pub String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\" or \"1h 30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A Coze id as written. Read as the scalar's exact text, so an unquoted 19-digit id keeps every
/// digit (it never passes through an integer or a float); a list or a mapping is rejected.
#[derive(Debug, Clone)]
pub struct RawId(pub String);

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id string such as \"7442585813587000000\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A pattern that also accepts a value given as `${VAR}` (checked after expansion).
const OR_VARIABLE: &str = r"|\$\{";

impl JsonSchema for RawDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as 500ms, 30s, 5m, 1h 30m or 30d",
            "pattern": format!(r"^\s*([0-9]+\s*[a-zA-Zµ]+\s*)+$|^0$|^\s*[0-9]+\s*$|^0\s*[a-z]*${OR_VARIABLE}")
        })
    }
}

impl JsonSchema for RawId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Id".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "description": "A Coze id: 1 to 19 decimal digits (quote it)",
            "pattern": format!("^[0-9]{{1,19}}${OR_VARIABLE}")
        })
    }
}

impl JsonSchema for RawDocuments {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Documents".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let id = generator.subschema_for::<RawId>();
        json_schema!({
            "description": "Document ids, or `all` for every document of the knowledge base",
            "anyOf": [
                {"const": "all"},
                {"type": "array", "items": id}
            ]
        })
    }
}
