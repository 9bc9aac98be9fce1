//! walcompactd on a WAL written the way the Diotec360 application writes it.
//!
//! `tests/fixtures/diotec360_wal.py` reproduces the application (see its docstring): its
//! writer produces a scripted history (commits, retries reusing a tx_id, crashes, rollbacks,
//! legacy lines, torn writes followed by more appends) and its reader gives the
//! application's view of a WAL (per tx_id: committed?, the changes of its last PREPARE;
//! legacy entries in order). Every test drives the real binary and compares that view, or
//! the file's bytes, before and after.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{backups, python_fixture, run_python_fixture, stdout_json, walcompactd};
use serde_json::Value;

const FIXTURE: &str = "diotec360_wal.py";
const QUARANTINE: &str = "wal_quarantine.log";

/// A WAL written by the fixture in a temp dir: `<dir>/.diotec360_wal/wal.log`.
struct Scenario {
    dir: tempfile::TempDir,
    wal: PathBuf,
    /// The fixture's manifest: `lines`, `torn` (`line`, `offset`, `bytes` of each torn line).
    manifest: Value,
}

impl Scenario {
    /// The scripted history with `torn` torn writes in the middle.
    fn new(seed: u64, torn: u32) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join(".diotec360_wal");
        let state_dir = dir.path().join("state");
        let out = python_fixture(
            FIXTURE,
            &[
                "scenario".to_string(),
                wal_dir.display().to_string(),
                state_dir.display().to_string(),
                "--seed".into(),
                seed.to_string(),
                "--torn".into(),
                torn.to_string(),
            ],
        );
        let manifest: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(manifest["torn"].as_array().unwrap().len(), torn as usize);
        Scenario {
            wal: wal_dir.join("wal.log"),
            dir,
            manifest,
        }
    }

    fn wal_dir(&self) -> &Path {
        self.wal.parent().unwrap()
    }

    /// The torn lines as the manifest gives them: (1-based line, offset, length without "\n").
    fn torn(&self) -> Vec<(u64, u64, u64)> {
        self.manifest["torn"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["line"].as_u64().unwrap(),
                    t["offset"].as_u64().unwrap(),
                    t["bytes"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

/// The application's view of `wal` (canonical JSON, sorted keys), from the fixture's reader.
fn view(wal: &Path) -> String {
    python_fixture(FIXTURE, &["view".as_ref(), wal.as_os_str()])
}

/// `walcompactd compact --json <args> WAL`.
fn compact(wal: &Path, args: &[&str]) -> Output {
    walcompactd()
        .args(["compact", "--json"])
        .args(args)
        .arg(wal)
        .output()
        .unwrap()
}

/// `walcompactd verify WAL --against BACKUP`.
fn verify_against(wal: &Path, backup: &Path) -> Output {
    walcompactd()
        .arg("verify")
        .arg(wal)
        .arg("--against")
        .arg(backup)
        .output()
        .unwrap()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn explain(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Compacts under the default policy; asserts exit 0 and returns the backup it reports,
/// checking it is the one `wal_backup_*.log` file beside the WAL.
fn compact_ok(s: &Scenario) -> PathBuf {
    let out = compact(&s.wal, &[]);
    assert_eq!(code(&out), Some(0), "compact: {}", explain(&out));
    let backup = PathBuf::from(stdout_json(&out)["backup"].as_str().unwrap());
    assert_eq!(backups(s.wal_dir(), &s.wal), vec![backup.clone()]);
    backup
}

/// Each complete line with its 1-based number and byte offset (without its "\n").
fn lines(bytes: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut out = Vec::new();
    let mut start = 0;
    let ends = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n');
    for (n, (end, _)) in ends.enumerate() {
        out.push((n as u64 + 1, start as u64, &bytes[start..end]));
        start = end + 1;
    }
    out
}

/// Whether `sub`'s lines appear in `all`'s lines in the same order (survivors keep order).
fn is_subsequence(sub: &[u8], all: &[u8]) -> bool {
    let all = lines(all);
    let mut it = all.iter();
    lines(sub)
        .iter()
        .all(|(_, _, l)| it.by_ref().any(|(_, _, a)| a == l))
}

/// `line` with the first ASCII digit after `marker` changed (9 → 8, else d → d + 1), so the
/// JSON stays valid and the length the same.
fn change_digit_after(line: &str, marker: &str) -> String {
    let from = line
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {line}"))
        + marker.len();
    let at = from + line[from..].find(|c: char| c.is_ascii_digit()).unwrap();
    let d = line.as_bytes()[at];
    let new = if d == b'9' { b'8' } else { d + 1 };
    let mut bytes = line.as_bytes().to_vec();
    bytes[at] = new;
    String::from_utf8(bytes).unwrap()
}

/// In a compacted WAL, the line number (0-based) of the one PREPARE of a committed
/// transaction that has exactly one PREPARE left: its deciding PREPARE.
fn a_deciding_prepare(text: &str) -> usize {
    let parsed: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    let prepares_of = |tx: &Value| {
        parsed
            .iter()
            .filter(|v| v["op"] == "PREPARE" && &v["tx_id"] == tx)
            .count()
    };
    let committed = |tx: &Value| {
        parsed
            .iter()
            .any(|v| v["op"] == "COMMIT" && &v["tx_id"] == tx)
    };
    parsed
        .iter()
        .position(|v| {
            v["op"] == "PREPARE"
                && v["changes"].to_string().contains("\"balance\"")
                && committed(&v["tx_id"])
                && prepares_of(&v["tx_id"]) == 1
        })
        .expect("a committed transaction with one PREPARE")
}

/// A copy of the compacted WAL with line `n` replaced by `f(line)`.
fn tampered_copy(s: &Scenario, n: usize, f: impl Fn(&str) -> String) -> PathBuf {
    let text = fs::read_to_string(&s.wal).unwrap();
    let mut out = String::new();
    for (i, l) in text.lines().enumerate() {
        out += &if i == n { f(l) } else { l.to_string() };
        out.push('\n');
    }
    assert_ne!(out, text, "the copy differs");
    let copy = s.dir.path().join("tampered.log");
    fs::write(&copy, out).unwrap();
    copy
}

// ---------------------------------------------------------------------------------------------
// The fixture itself: its reader does what the application's reader does.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_fixture_reader_follows_the_applications_rules() {
    let d = tempfile::tempdir().unwrap();
    let (wal_dir, state) = (d.path().join("w"), d.path().join("s"));
    let append = |args: &[&str]| {
        let mut a = vec![
            "append".to_string(),
            wal_dir.display().to_string(),
            state.display().to_string(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        a.extend(["--timestamp".to_string(), "1732780000.5".to_string()]);
        python_fixture(FIXTURE, &a);
    };
    append(&["commit-marker", "early"]); // a COMMIT before its PREPARE still counts
    append(&["crash", "early", r#"{"a": 1}"#]);
    append(&["commit", "retried", r#"{"b": 1}"#]);
    append(&["commit", "retried", r#"{"b": 2}"#]); // the last PREPARE's changes win
    append(&["crash", "inflight", r#"{"c": 1}"#]);
    append(&["rollback", "rolled", r#"{"d": 1}"#]); // nothing written
    append(&["legacy", "old_yes", r#"{"e": 1}"#, "--committed"]);
    append(&["legacy", "old_no", r#"{"f": 1}"#, "--uncommitted"]);
    let wal = wal_dir.join("wal.log");
    common::append(
        &wal,
        concat!(
            "\n   \n",                                                               // blank lines
            "{\"op\": \"PREPARE\", \"tx_id\": \"nochanges\", \"timestamp\": 1.0}\n", // skipped
            "{\"op\": \"COMMIT\", \"tx_id\": \"nochanges\", \"timestamp\": 1.0}\n",
            "{\"op\": \"ABORT\", \"tx_id\": \"inflight\"}\n", // unknown to it: ignored
            "{\"op\": \"PREP\n",                              // a corrupt line: skipped
        ),
    );
    append(&["torn", "torn", r#"{"g": 1}"#, "--keep", "35"]);
    append(&["commit", "after_torn", r#"{"h": 1}"#]); // its PREPARE lands on the torn line
    let text = fs::read_to_string(&wal).unwrap();
    assert!(
        text.starts_with(
            "{\"op\": \"COMMIT\", \"tx_id\": \"early\", \"timestamp\": 1732780000.5}\n"
        )
    );
    assert!(text.contains(
        "{\"op\": \"PREPARE\", \"tx_id\": \"retried\", \"changes\": {\"b\": 2}, \"timestamp\": 1732780000.5}\n"
    ));
    assert!(text.contains(
        "{\"op\": \"PREPARE\", \"tx_id\": \"torn\", {\"op\": \"PREPARE\", \"tx_id\": \"after_torn\""
    ));
    assert_eq!(
        view(&wal).trim_end(),
        concat!(
            r#"{"legacy":[{"changes":{"e":1},"committed":true,"tx_id":"old_yes"},"#,
            r#"{"changes":{"f":1},"committed":false,"tx_id":"old_no"}],"#,
            r#""transactions":{"early":{"changes":{"a":1},"committed":true},"#,
            r#""inflight":{"changes":{"c":1},"committed":false},"#,
            r#""retried":{"changes":{"b":2},"committed":true}}}"#
        )
    );
    let state: Value =
        serde_json::from_slice(&fs::read(state.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        state,
        serde_json::json!({"b": 2, "h": 1}),
        "committed changes are in the state"
    );
}

#[test]
fn the_fixture_reader_fails_on_non_object_json_and_invalid_utf8() {
    let d = tempfile::tempdir().unwrap();
    for (name, bad, error) in [
        ("array.log", &b"[1, 2]\n"[..], "TypeError"),
        ("number.log", b"5\n", "TypeError"),
        (
            "utf8.log",
            b"{\"op\": \"COMMIT\", \"tx_id\": \"\xff\"}\n",
            "UnicodeDecodeError",
        ),
    ] {
        let wal = d.path().join(name);
        let mut content = common::commit("tx_ok").into_bytes();
        content.extend_from_slice(bad);
        fs::write(&wal, content).unwrap();
        let out = run_python_fixture(FIXTURE, &["view".as_ref(), wal.as_os_str()]);
        assert!(!out.status.success(), "{name}: the reader must fail");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(error),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Default policy (corrupt_lines = "keep")
// ---------------------------------------------------------------------------------------------

#[test]
fn compaction_keeps_the_readers_view_of_a_diotec360_wal_without_torn_writes() {
    let s = Scenario::new(11, 0);
    let before = view(&s.wal);
    let original = fs::read(&s.wal).unwrap();
    let backup = compact_ok(&s);
    let after = fs::read(&s.wal).unwrap();
    assert!(
        after.len() < original.len(),
        "retries and crashes leave reclaimable lines"
    );
    assert!(
        is_subsequence(&after, &original),
        "survivors keep their bytes and order"
    );
    assert_eq!(view(&s.wal), before, "the application's view is unchanged");
    assert_eq!(
        fs::read(&backup).unwrap(),
        original,
        "the backup is the original"
    );
    let out = verify_against(&s.wal, &backup);
    assert_eq!(code(&out), Some(0), "verify --against: {}", explain(&out));
}

#[test]
fn compaction_keeps_the_readers_view_of_a_diotec360_wal() {
    let s = Scenario::new(1, 2);
    let before = view(&s.wal);
    let original = fs::read(&s.wal).unwrap();
    compact_ok(&s);
    let after = fs::read(&s.wal).unwrap();
    assert!(after.len() < original.len(), "something was reclaimed");
    assert!(
        is_subsequence(&after, &original),
        "survivors keep their bytes and order"
    );
    let kept: Vec<&[u8]> = lines(&after).into_iter().map(|(_, _, l)| l).collect();
    for (line, offset, len) in s.torn() {
        let torn = &original[offset as usize..(offset + len) as usize];
        assert!(kept.contains(&torn), "torn line {line} is kept verbatim");
    }
    assert_eq!(view(&s.wal), before, "the application's view is unchanged");
}

#[test]
fn compacting_a_compacted_diotec360_wal_again_changes_nothing() {
    let s = Scenario::new(2, 2);
    compact_ok(&s);
    let once = fs::read(&s.wal).unwrap();
    let backups_once = backups(s.wal_dir(), &s.wal);
    let out = compact(&s.wal, &[]);
    assert_eq!(code(&out), Some(0), "second compact: {}", explain(&out));
    assert_eq!(
        fs::read(&s.wal).unwrap(),
        once,
        "the WAL's bytes are unchanged"
    );
    assert_eq!(backups(s.wal_dir(), &s.wal), backups_once, "no new backup");
}

#[test]
fn the_compacted_diotec360_wal_verifies_against_its_backup() {
    let s = Scenario::new(3, 2);
    let backup = compact_ok(&s);
    let out = verify_against(&s.wal, &backup);
    assert_eq!(code(&out), Some(0), "verify --against: {}", explain(&out));
}

#[test]
fn verify_detects_a_changed_digit_in_a_committed_changes_value() {
    let s = Scenario::new(4, 0);
    let backup = compact_ok(&s);
    let text = fs::read_to_string(&s.wal).unwrap();
    let n = a_deciding_prepare(&text);
    let copy = tampered_copy(&s, n, |l| change_digit_after(l, "\"balance\": "));
    assert_ne!(
        view(&copy),
        view(&s.wal),
        "the application sees a different balance"
    );
    let out = verify_against(&copy, &backup);
    assert_eq!(code(&out), Some(1), "verify must fail: {}", explain(&out));
}

#[test]
fn verify_detects_a_changed_digit_in_a_deciding_prepares_timestamp() {
    let s = Scenario::new(5, 0);
    let backup = compact_ok(&s);
    let text = fs::read_to_string(&s.wal).unwrap();
    let n = a_deciding_prepare(&text);
    let copy = tampered_copy(&s, n, |l| change_digit_after(l, "\"timestamp\": "));
    // The view holds no timestamps: only a digest over the whole PREPARE line sees this.
    assert_eq!(view(&copy), view(&s.wal));
    let out = verify_against(&copy, &backup);
    assert_eq!(code(&out), Some(1), "verify must fail: {}", explain(&out));
}

// ---------------------------------------------------------------------------------------------
// corrupt_lines = "refuse" / "quarantine", and status
// ---------------------------------------------------------------------------------------------

#[test]
fn refuse_mode_exits_3_and_changes_nothing_on_a_torn_diotec360_wal() {
    let s = Scenario::new(6, 2);
    let original = fs::read(&s.wal).unwrap();
    let out = compact(&s.wal, &["--corrupt-lines", "refuse"]);
    assert_eq!(
        code(&out),
        Some(3),
        "compact --corrupt-lines refuse: {}",
        explain(&out)
    );
    assert_eq!(
        fs::read(&s.wal).unwrap(),
        original,
        "the WAL's bytes are unchanged"
    );
    assert_eq!(
        backups(s.wal_dir(), &s.wal),
        Vec::<PathBuf>::new(),
        "no backup left"
    );
    let left: Vec<String> = common::names(s.wal_dir())
        .into_iter()
        .filter(|n| n.ends_with(".tmp") || n == QUARANTINE)
        .collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}");
}

/// One record of the quarantine file: its header's fields and the raw line.
struct Quarantined {
    header: Value,
    raw: Vec<u8>,
}

/// Parses a quarantine file: a JSON header line `{"quarantined": {...}}`, then the raw line
/// and "\n", per quarantined line.
fn quarantine_records(bytes: &[u8]) -> Vec<Quarantined> {
    let all = lines(bytes);
    assert_eq!(
        bytes.len(),
        all.last().map_or(0, |(_, o, l)| *o as usize + l.len() + 1),
        "the quarantine file ends with a complete line"
    );
    assert_eq!(all.len() % 2, 0, "a header and a raw line per record");
    all.chunks(2)
        .map(|pair| {
            let header: Value = serde_json::from_slice(pair[0].2)
                .unwrap_or_else(|e| panic!("header is not JSON ({e}): {:?}", pair[0].2));
            Quarantined {
                header: header["quarantined"].clone(),
                raw: pair[1].2.to_vec(),
            }
        })
        .collect()
}

#[test]
fn quarantine_mode_moves_the_torn_lines_to_the_quarantine_file() {
    let s = Scenario::new(7, 2);
    let before = view(&s.wal);
    let original = fs::read(&s.wal).unwrap();
    let out = compact(&s.wal, &["--corrupt-lines", "quarantine"]);
    assert_eq!(
        code(&out),
        Some(0),
        "compact --corrupt-lines quarantine: {}",
        explain(&out)
    );
    let after = fs::read(&s.wal).unwrap();
    assert!(
        is_subsequence(&after, &original),
        "survivors keep their bytes and order"
    );

    let torn = s.torn();
    let torn_raw: Vec<&[u8]> = torn
        .iter()
        .map(|&(_, o, l)| &original[o as usize..(o + l) as usize])
        .collect();
    for (_, _, l) in lines(&after) {
        assert!(!torn_raw.contains(&l), "a torn line is still in the WAL");
    }

    // Beside the backups: by default the WAL's directory.
    let q = s.wal_dir().join(QUARANTINE);
    let records = quarantine_records(&fs::read(&q).unwrap());
    assert_eq!(records.len(), torn.len(), "one record per torn line");
    for (r, (&(line, offset, len), raw)) in records.iter().zip(torn.iter().zip(&torn_raw)) {
        let h = &r.header;
        assert_eq!(&r.raw[..], *raw, "the raw bytes of line {line}");
        assert_eq!(h["line"].as_u64(), Some(line), "{h}");
        assert_eq!(h["offset"].as_u64(), Some(offset), "{h}");
        // The original line's length, without its "\n".
        assert_eq!(h["bytes"].as_u64(), Some(len), "{h}");
        assert!(!h["reason"].as_str().unwrap().is_empty(), "{h}");
        assert_eq!(
            fs::canonicalize(h["wal"].as_str().unwrap()).unwrap(),
            fs::canonicalize(&s.wal).unwrap(),
            "{h}"
        );
        chrono::DateTime::parse_from_rfc3339(h["at"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("at is not RFC 3339 ({e}): {h}"));
    }
    assert_eq!(
        view(&s.wal),
        before,
        "the reader skipped those lines anyway"
    );
}

#[test]
fn status_reports_the_torn_lines_of_a_diotec360_wal() {
    let s = Scenario::new(8, 2);
    let out = walcompactd()
        .args(["status", "--json"])
        .arg(&s.wal)
        .output()
        .unwrap();
    // It reports either way; today a corrupt line also makes it exit 3 (tests/cli.rs).
    assert!(
        matches!(code(&out), Some(0 | 3)),
        "status: {}",
        explain(&out)
    );
    let v = stdout_json(&out);
    let torn = s.torn();
    assert_eq!(v["corrupt_lines"].as_u64(), Some(torn.len() as u64), "{v}");
    let listed: Vec<(u64, u64)> = v["corrupt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(!c["reason"].as_str().unwrap().is_empty(), "{c}");
            (c["line"].as_u64().unwrap(), c["offset"].as_u64().unwrap())
        })
        .collect();
    let expected: Vec<(u64, u64)> = torn.iter().map(|&(l, o, _)| (l, o)).collect();
    assert_eq!(listed, expected);
    assert_eq!(v["lines"].as_u64(), s.manifest["lines"].as_u64());
}
