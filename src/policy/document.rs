//! Structural pass: TOML text → raw sections, collecting every syntax, type and
//! unknown-key error with its key path.
//!
//! serde stops at the first error, so the document is first parsed into a
//! `toml::Table` and each independent section (`[daemon]`, every `[[wal]]` and
//! its sub-tables, every `[[alert]]`) is deserialized on its own. Within a
//! section, unknown keys are all reported up front, and after a type error the
//! offending key is dropped and deserialization retried, so one bad key does not
//! hide the next.

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use toml::{Table, Value};

use super::KeyError;
use super::schema::{RawAlert, RawDaemon, RawWal, field_names};

/// Top-level keys of a policy file.
const TOP_LEVEL_KEYS: &[&str] = &["daemon", "wal", "alert"];

/// What the structural pass recovered. Keys that had errors are left at their
/// defaults so semantic validation can still check the rest of each section;
/// `parse` fails anyway if any error was reported.
#[derive(Debug, Default)]
pub(crate) struct RawDocument {
    /// Absent `[daemon]` yields all-defaults.
    pub daemon: RawDaemon,
    /// One slot per `[[wal]]` entry, in file order; `None` if the entry is not a table.
    pub wals: Vec<Option<RawWal>>,
    /// The `name` of every `[[wal]]` entry that has a string one, even if the entry
    /// itself had errors, so alert `wal = "..."` references are not misreported.
    pub wal_names: Vec<String>,
    /// One slot per `[[alert]]` entry, in file order; `None` if the entry is not a table.
    pub alerts: Vec<Option<RawAlert>>,
}

/// Parses `text`; returns `None` only for a TOML syntax error (nothing else can be checked then).
pub(crate) fn read(text: &str, errors: &mut Vec<KeyError>) -> Option<RawDocument> {
    let mut table = match text.parse::<Table>() {
        Ok(table) => table,
        Err(error) => {
            errors.push(syntax_error(text, &error));
            return None;
        }
    };
    report_unknown(&mut table, "", TOP_LEVEL_KEYS, errors);
    let mut doc = RawDocument {
        daemon: read_daemon(table.remove("daemon"), errors),
        ..RawDocument::default()
    };
    for (index, entry) in array_of_tables(table.remove("wal"), "wal", errors) {
        let prefix = format!("wal[{index}]");
        if let Some(name) = entry.as_ref().and_then(|t| t.get("name")?.as_str()) {
            doc.wal_names.push(name.to_string());
        }
        doc.wals.push(entry.map(|t| read_wal(t, &prefix, errors)));
    }
    for (index, entry) in array_of_tables(table.remove("alert"), "alert", errors) {
        let prefix = format!("alert[{index}]");
        doc.alerts
            .push(entry.map(|t| read_section(t, &prefix, errors)));
    }
    Some(doc)
}

/// A syntax error keyed by nothing (there is no key yet), with line:column in the message.
fn syntax_error(text: &str, error: &toml::de::Error) -> KeyError {
    let position = error
        .span()
        .map(|span| line_column(text, span.start))
        .map(|(line, column)| format!(" at line {line}, column {column}"))
        .unwrap_or_default();
    let message = error.message().trim_end().replace('\n', "; ");
    KeyError::new("", format!("TOML syntax error{position}: {message}"))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn read_daemon(value: Option<Value>, errors: &mut Vec<KeyError>) -> RawDaemon {
    match value {
        None => RawDaemon::default(),
        Some(Value::Table(table)) => read_section(table, "daemon", errors),
        Some(other) => {
            errors.push(wrong_type("daemon", "a table ([daemon])", &other));
            RawDaemon::default()
        }
    }
}

/// Splits `wal` / `alert` into its entries; a non-table entry is reported and yields `None`.
fn array_of_tables(
    value: Option<Value>,
    key: &str,
    errors: &mut Vec<KeyError>,
) -> Vec<(usize, Option<Table>)> {
    let items = match value {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            errors.push(wrong_type(
                key,
                &format!("an array of tables ([[{key}]])"),
                &other,
            ));
            return Vec::new();
        }
    };
    let entry = |(index, item)| match item {
        Value::Table(table) => (index, Some(table)),
        other => {
            errors.push(wrong_type(&format!("{key}[{index}]"), "a table", &other));
            (index, None)
        }
    };
    items.into_iter().enumerate().map(entry).collect()
}

/// One `[[wal]]` entry: its sub-tables first, then the rest. `[wal.retention]` stays `None`
/// when absent: its absence, not its defaults, is what keeps retention off.
fn read_wal(mut table: Table, prefix: &str, errors: &mut Vec<KeyError>) -> RawWal {
    let triggers = read_sub_table(&mut table, prefix, "triggers", errors);
    let backups = read_sub_table(&mut table, prefix, "backups", errors);
    let hooks = read_sub_table(&mut table, prefix, "hooks", errors);
    let retention = table
        .contains_key("retention")
        .then(|| read_sub_table(&mut table, prefix, "retention", errors));
    let offsite = table
        .contains_key("offsite")
        .then(|| read_sub_table(&mut table, prefix, "offsite", errors));
    RawWal {
        triggers,
        backups,
        hooks,
        retention,
        offsite,
        ..read_section(table, prefix, errors)
    }
}

fn read_sub_table<T: DeserializeOwned + Default>(
    table: &mut Table,
    prefix: &str,
    key: &str,
    errors: &mut Vec<KeyError>,
) -> T {
    let path = format!("{prefix}.{key}");
    match table.remove(key) {
        None => T::default(),
        Some(Value::Table(sub)) => read_section(sub, &path, errors),
        Some(other) => {
            errors.push(wrong_type(&path, &format!("a table ([wal.{key}])"), &other));
            T::default()
        }
    }
}

/// Deserializes one section, reporting every unknown key and every type error;
/// each offending key is dropped (left at its default) and the rest kept.
fn read_section<T: DeserializeOwned + Default>(
    mut table: Table,
    prefix: &str,
    errors: &mut Vec<KeyError>,
) -> T {
    report_unknown(&mut table, prefix, field_names::<T>(), errors);
    loop {
        let error = match serde_path_to_error::deserialize(Value::Table(table.clone())) {
            Ok(value) => return value,
            Err(error) => error,
        };
        errors.push(KeyError::new(
            join_path(prefix, &error.path().to_string()),
            plain_types(error.inner().message()),
        ));
        // Drop the offending top-level key and retry; give up if we cannot tell which.
        let Some(Segment::Map { key }) = error.path().iter().next() else {
            return T::default();
        };
        if table.remove(key).is_none() {
            return T::default();
        }
    }
}

/// serde names Rust types ("expected i64"); policy authors think in TOML types.
fn plain_types(message: &str) -> String {
    message
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected an array")
}

/// Reports and removes every key of `table` not in `expected`.
fn report_unknown(table: &mut Table, prefix: &str, expected: &[&str], errors: &mut Vec<KeyError>) {
    let unknown: Vec<String> = table
        .keys()
        .filter(|key| !expected.contains(&key.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        table.remove(&key);
        let message = format!("unknown key (expected one of {})", expected.join(", "));
        errors.push(KeyError::new(join_path(prefix, &key), message));
    }
}

fn wrong_type(key: &str, expected: &str, found: &Value) -> KeyError {
    KeyError::new(
        key,
        format!("expected {expected}, got {}", found.type_str()),
    )
}

/// `prefix` + `.` + `rest`, where either may be empty (serde_path_to_error renders "." for the root).
fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix, rest) {
        (_, "" | ".") => prefix.to_string(),
        ("", _) => rest.to_string(),
        _ if rest.starts_with('[') => format!("{prefix}{rest}"),
        _ => format!("{prefix}.{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_toml_names() {
        let errors = errors_of(
            "[[wal]]\nlock_timeout_ms = \"x\"\n[wal.triggers]\nmax_size_mb = \"y\"\nschedule = 1\n",
        );
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "invalid type: string \"y\", expected a number",
                "invalid type: integer `1`, expected an array",
                "invalid type: string \"x\", expected an integer",
            ]
        );
    }

    fn errors_of(text: &str) -> Vec<KeyError> {
        let mut errors = Vec::new();
        read(text, &mut errors);
        errors
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let errors = errors_of("[daemon]\nlog_level = \"info\"\nlog_format = \n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "");
        assert!(errors[0].message.contains("line 3, column"), "{errors:?}");
    }

    #[test]
    fn every_type_error_in_a_section_is_reported() {
        let errors = errors_of("[[wal]]\nname = 1\npath = 2\nlock_timeout_ms = \"x\"\n");
        let mut keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["wal[0].lock_timeout_ms", "wal[0].name", "wal[0].path"]
        );
    }

    #[test]
    fn element_type_error_keeps_its_index() {
        let errors = errors_of("[[wal]]\n[wal.triggers]\nschedule = [\"0 * * * * *\", 3]\n");
        assert_eq!(errors[0].key, "wal[0].triggers.schedule[1]");
    }

    #[test]
    fn wrong_section_shapes_are_reported() {
        let errors = errors_of("daemon = 3\nwal = 4\n[[alert]]\n");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["daemon", "wal"]);
        assert!(errors[1].message.contains("[[wal]]"));
    }

    #[test]
    fn unknown_top_level_key() {
        let errors = errors_of("[wals]\n");
        assert_eq!(errors[0].key, "wals");
        assert_eq!(
            errors[0].message,
            "unknown key (expected one of daemon, wal, alert)"
        );
    }

    #[test]
    fn join_path_cases() {
        assert_eq!(join_path("wal[0]", "."), "wal[0]");
        assert_eq!(join_path("", "daemon"), "daemon");
        assert_eq!(
            join_path("wal[0].triggers", "schedule[1]"),
            "wal[0].triggers.schedule[1]"
        );
        assert_eq!(join_path("x", "[2]"), "x[2]");
    }
}
