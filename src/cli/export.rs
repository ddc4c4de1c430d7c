//! `dataloom schema export DIR`: every registered JSON Schema as a standalone file, so code
//! generators (json-schema-to-typescript, quicktype, datamodel-code-generator) give typed
//! clients without a hand-written SDK.
//!
//! The layout is the one of the `schemas/` directory (a file's path is its filter; `#` is
//! written `%23`, `%` is `%25`), so an export can also seed another broker. Each document gets
//! a `title` usable as a type name when it has none (`sensors/+/temperature` becomes
//! `SensorsTemperature`), and `index.json` maps every filter to its file, version, title and
//! `$schema/` topic. The schemas come from a stopped broker's data directory, or from a running
//! broker's state API (`GET /v1/schemas`, with `--url` and a key that may read `$schema/#`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::Config;
use crate::schema::filter;
use crate::store::{FjallStore, Store, StoreError};

/// Why an export failed; each message names the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The data directory cannot be read (locked by a running broker, corrupt, ...).
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The running broker could not be asked, or refused.
    #[error("{0}")]
    Http(String),
    /// A file of the export cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// One exported schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The topic filter it governs.
    pub filter: String,
    /// Its registration version.
    pub version: u64,
    /// The type name given to it.
    pub title: String,
    /// The file, relative to the export directory.
    pub file: PathBuf,
}

/// Reads the schemas registered in `cfg`'s data directory (the broker must be stopped) and
/// writes them under `dir`.
///
/// # Errors
/// [`ExportError`]: the data directory is locked or unreadable, or a file cannot be written.
pub fn export(cfg: &Config, dir: &Path) -> Result<Vec<Exported>, ExportError> {
    let store = FjallStore::open(&cfg.storage.data_dir, cfg.storage.durability).map_err(|e| match e {
        StoreError::Locked { .. } => {
            let http = cfg.http.bind.replace("0.0.0.0", "127.0.0.1");
            ExportError::Http(format!("{e}, or ask the running broker: --url http://{http}"))
        }
        e => e.into(),
    })?;
    let mut found = Vec::new();
    for m in store.recover()?.retained {
        let Some(Ok(f)) = filter::filter_of_topic(&m.topic) else { continue };
        let version = m
            .properties
            .user_properties
            .iter()
            .find(|(k, _)| k == "version")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1);
        if let Ok(doc) = serde_json::from_slice::<Value>(&m.payload) {
            found.push((f, version, doc));
        }
    }
    drop(store);
    write_all(dir, found)
}

/// Asks the broker at `url` (`GET /v1/schemas`, as `key` when given) and writes what it
/// answers under `dir`.
///
/// # Errors
/// [`ExportError::Http`] when the broker cannot be reached, refuses (401, 403) or answers
/// something else than the schema list; [`ExportError::Write`] as for [`export`].
pub fn export_from(url: &str, key: Option<&str>, dir: &Path) -> Result<Vec<Exported>, ExportError> {
    let http = |e: crate::auth::cli::CliError| ExportError::Http(e.to_string());
    let (status, body) = crate::auth::cli::http_get(url, "/v1/schemas", key).map_err(http)?;
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if status != 200 {
        let why = v.get("error").and_then(Value::as_str).unwrap_or(body.trim());
        return Err(ExportError::Http(format!("broker at {url} answered {status}: {why}")));
    }
    let bad = || ExportError::Http(format!("broker at {url} sent no schema list: {body}"));
    let items = v.get("items").and_then(Value::as_array).ok_or_else(bad)?;
    let mut found = Vec::new();
    for item in items {
        let filter = item.get("filter").and_then(Value::as_str).ok_or_else(bad)?;
        let version = item.get("version").and_then(Value::as_u64).unwrap_or(1);
        let document = item.get("document").cloned().ok_or_else(bad)?;
        found.push((filter.to_string(), version, document));
    }
    write_all(dir, found)
}

/// Writes each `(filter, version, document)` and `index.json`; returns what was written.
///
/// # Errors
/// [`ExportError::Write`] naming the file that could not be written.
pub fn write_all(dir: &Path, mut schemas: Vec<(String, u64, Value)>) -> Result<Vec<Exported>, ExportError> {
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    let mut titles = HashSet::new();
    let mut out = Vec::new();
    let mut index = BTreeMap::new();
    for (f, version, mut doc) in schemas {
        let title = unique(title_of(&f, &doc), &mut titles);
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("title".into(), Value::String(title.clone()));
        }
        let file = path_of(&f);
        write(&dir.join(&file), &doc)?;
        index.insert(
            f.clone(),
            json!({"file": file, "version": version, "title": title, "topic": filter::topic_of_filter(&f)}),
        );
        out.push(Exported { filter: f, version, title, file });
    }
    write(&dir.join("index.json"), &json!(index))?;
    Ok(out)
}

fn write(path: &Path, doc: &Value) -> Result<(), ExportError> {
    let fail = |source| ExportError::Write { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let text = serde_json::to_string_pretty(doc).unwrap_or_default() + "\n";
    std::fs::write(path, text).map_err(fail)
}

/// The file of `filter`, as in `schemas/`: one directory per level, `#` as `%23`, `%` as `%25`.
pub fn path_of(filter: &str) -> PathBuf {
    let mut p = PathBuf::new();
    for level in filter.split('/') {
        let level =
            if level.is_empty() { "%00".to_string() } else { level.replace('%', "%25").replace('#', "%23") };
        p.push(level);
    }
    p.set_extension("json");
    p
}

/// The document's own title when it is a type name already, else one from the filter's literal
/// levels in PascalCase (`sensors/+/temperature` → `SensorsTemperature`).
pub fn title_of(filter: &str, doc: &Value) -> String {
    if let Some(t) = doc.get("title").and_then(Value::as_str)
        && is_type_name(t)
    {
        return t.to_string();
    }
    let mut name = String::new();
    for word in filter.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.push(first.to_ascii_uppercase());
            name.extend(chars);
        }
    }
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "Topic");
    }
    name
}

fn is_type_name(t: &str) -> bool {
    t.starts_with(|c: char| c.is_ascii_alphabetic())
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name`, or `name2`, `name3`, ... when taken.
fn unique(name: String, taken: &mut HashSet<String>) -> String {
    let mut candidate = name.clone();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{name}{n}");
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_type_names_and_unique() {
        assert_eq!(title_of("sensors/+/temperature", &json!({})), "SensorsTemperature");
        assert_eq!(title_of("meters/+/#", &json!({})), "Meters");
        assert_eq!(title_of("+/9lives", &json!({})), "Topic9lives");
        assert_eq!(title_of("a/b", &json!({"title": "Reading"})), "Reading");
        assert_eq!(title_of("a/b", &json!({"title": "not a type"})), "AB");
        let mut taken = HashSet::new();
        assert_eq!(unique("A".into(), &mut taken), "A");
        assert_eq!(unique("A".into(), &mut taken), "A2");
    }

    #[test]
    fn files_follow_the_schemas_directory_layout() {
        assert_eq!(path_of("sensors/+/temperature"), PathBuf::from("sensors/+/temperature.json"));
        assert_eq!(path_of("meters/+/#"), PathBuf::from("meters/+/%23.json"));
        assert_eq!(path_of("a%b"), PathBuf::from("a%25b.json"));
        for f in ["sensors/+/temperature", "meters/+/#", "a%b"] {
            assert_eq!(filter::filter_of_path(&path_of(f)).expect("maps back"), f);
        }
    }

    #[test]
    fn an_export_writes_documents_with_titles_and_an_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let schemas = vec![
            ("sensors/+/temperature".to_string(), 3, json!({"type": "object"})),
            ("meters/+/#".to_string(), 1, json!({"type": "object", "title": "Meter"})),
        ];
        let out = write_all(dir.path(), schemas).expect("export");
        assert_eq!(out.len(), 2);
        let doc: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("sensors/+/temperature.json")).expect("file"),
        )
        .expect("json");
        assert_eq!(doc["title"], "SensorsTemperature");
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).expect("index"))
                .expect("json");
        assert_eq!(index["meters/+/#"]["file"], "meters/+/%23.json");
        assert_eq!(index["meters/+/#"]["title"], "Meter");
        assert_eq!(index["sensors/+/temperature"]["version"], 3);
        assert_eq!(index["sensors/+/temperature"]["topic"], "$schema/sensors/%2B/temperature");
    }
}
