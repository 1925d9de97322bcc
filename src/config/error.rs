//! Configuration diagnostics: key paths, source locations, and the error type every config
//! problem becomes.
//!
//! Locations of validation errors are found after the fact by [`locate`], which re-walks the
//! YAML text along a key path and asks the YAML parser where that node starts. Messages built
//! here never contain a secret's value: callers pass descriptions, not values.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    /// A list index, with an optional label shown next to it (a notifier's name).
    Index(usize, Option<String>),
}

/// Where a value sits in a YAML document, e.g. `notifiers[1] (ci): url`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }

    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i, None));
        KeyPath(v)
    }

    pub fn labelled_index(&self, i: usize, label: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i, Some(label.to_string())));
        KeyPath(v)
    }

    pub fn segs(&self) -> &[Seg] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut after_label = false;
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if after_label {
                        write!(f, ": {k}")?;
                    } else if n == 0 {
                        write!(f, "{k}")?;
                    } else {
                        write!(f, ".{k}")?;
                    }
                    after_label = false;
                }
                Seg::Index(i, label) => {
                    write!(f, "[{i}]")?;
                    if let Some(l) = label {
                        write!(f, " ({l})")?;
                        after_label = true;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Line and column, both 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineCol {
    pub line: usize,
    pub column: usize,
}

/// One configuration problem: an error, or (under `check --lint`) a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub at: Option<LineCol>,
    pub path: KeyPath,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(at) = self.at {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        if self.path.is_root() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found while loading, in the order found.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

/// A YAML file and its text, so problems can be located in it.
pub struct Source {
    pub file: PathBuf,
    pub text: String,
}

impl Source {
    pub fn problem(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            at: locate(&self.text, path),
            path: path.clone(),
            message: message.into(),
        }
    }

    /// Whether the line of `at` holds a tab in its indentation or at `at` itself.
    fn tab_at(&self, at: LineCol) -> bool {
        let Some(line) = self.text.lines().nth(at.line.saturating_sub(1)) else {
            return false;
        };
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        line[..indent].contains('\t') || line.chars().nth(at.column.saturating_sub(1)) == Some('\t')
    }

    /// Turns a YAML parse or type error into a `ConfigError` with the parser's location.
    pub fn parse_error(&self, err: &serde_yaml::Error) -> ConfigError {
        let at = err.location().map(|l| LineCol {
            line: l.line(),
            column: l.column(),
        });
        let text = err.to_string();
        // The parser appends " at line L column C"; we print the location up front instead.
        let mut message = match text.rfind(" at line ") {
            Some(cut) if at.is_some() => text[..cut].to_string(),
            _ => text,
        };
        if at.is_some_and(|at| self.tab_at(at)) {
            message.push_str(" (YAML indents with spaces, not tabs)");
        }
        ConfigError {
            file: self.file.clone(),
            at,
            path: KeyPath::root(),
            message,
        }
    }
}

impl Diagnostics {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

const LOCATE_MARKER: &str = "\u{0}coze-watch-locate\u{0}";

/// Finds where the node at `path` starts in `text`, by walking the YAML with a seed that stops
/// with a marker error at the target: the parser attaches its position to that error.
pub fn locate(text: &str, path: &KeyPath) -> Option<LineCol> {
    let de = serde_yaml::Deserializer::from_str(text);
    match (Locate { path: path.segs() }).deserialize(de) {
        Err(e) if e.to_string().contains(LOCATE_MARKER) => e.location().map(|l| LineCol {
            line: l.line(),
            column: l.column(),
        }),
        _ => None,
    }
}

struct Locate<'a> {
    path: &'a [Seg],
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.path.split_first() {
            None => d.deserialize_any(Found),
            Some((Seg::Key(k), rest)) => d.deserialize_any(InMap { key: k, rest }),
            Some((Seg::Index(i, _), rest)) => d.deserialize_any(InSeq { index: *i, rest }),
        }
    }
}

/// Fails on whatever node it is given: the failure carries the node's position.
struct Found;

impl<'de> Visitor<'de> for Found {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(LOCATE_MARKER))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(LOCATE_MARKER))
    }
}

struct InMap<'a> {
    key: &'a str,
    rest: &'a [Seg],
}

impl<'de> Visitor<'de> for InMap<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key::<serde_yaml::Value>()? {
            if k.as_str() == Some(self.key) {
                return map.next_value_seed(Locate { path: self.rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct InSeq<'a> {
    index: usize,
    rest: &'a [Seg],
}

impl<'de> Visitor<'de> for InSeq<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0;
        loop {
            if n == self.index {
                return seq
                    .next_element_seed(Locate { path: self.rest })
                    .map(|_| ());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "api:\n  base_url: x\nnotifiers:\n  - name: a\n    type: log\n  - name: b\n    url: http://h\n";

    #[test]
    fn locates_nested_keys_and_list_items() {
        let p = KeyPath::root().key("notifiers").index(1).key("url");
        assert_eq!(
            locate(DOC, &p),
            Some(LineCol {
                line: 7,
                column: 10
            })
        );
        let p = KeyPath::root().key("api").key("base_url");
        assert_eq!(
            locate(DOC, &p),
            Some(LineCol {
                line: 2,
                column: 13
            })
        );
    }

    #[test]
    fn missing_paths_have_no_location() {
        let p = KeyPath::root().key("notifiers").index(5);
        assert_eq!(locate(DOC, &p), None);
        let p = KeyPath::root().key("poll");
        assert_eq!(locate(DOC, &p), None);
    }

    #[test]
    fn key_paths_render_like_the_spec() {
        let p = KeyPath::root()
            .key("notifiers")
            .labelled_index(1, "ci")
            .key("url");
        assert_eq!(p.to_string(), "notifiers[1] (ci): url");
        let p = KeyPath::root().key("poll").key("error_backoff").key("max");
        assert_eq!(p.to_string(), "poll.error_backoff.max");
        let p = KeyPath::root()
            .key("watch")
            .index(0)
            .key("documents")
            .index(2);
        assert_eq!(p.to_string(), "watch[0].documents[2]");
    }
}
