//! `verify WAL --against BACKUP --archive ARCHIVE...` through the real binary, on state made
//! by real retention runs (in-process `pipeline::run`): the WAL and its archives replay to
//! the backup's state; without the archives, with a changed archive line or with a kept
//! line missing from the WAL they do not; archives of two runs verify together in any order;
//! lines a writer appends after the run count on both sides.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use walcompactd::pipeline::retain::RetentionRequest;
use walcompactd::pipeline::{PipelineError, Request, archive, run};
use walcompactd::writer::{Durability, WalWriter};

const DAY: u64 = 86_400;

/// For each `(tag, age_days, n)`: `n` committed transactions `age_days` old (each with a
/// retried, byte-identical PREPARE), interleaved round-robin across the tags so that the
/// transactions of different ages alternate in the file; then 20 from the last minute.
fn history(dir: &Path, ages: &[(&str, u64, u64)]) -> PathBuf {
    let now = chrono::Utc::now().timestamp() as u64;
    let mut s = String::new();
    let most = ages.iter().map(|a| a.2).max().unwrap_or(0);
    for i in 0..most {
        for &(tag, days, n) in ages {
            if i >= n {
                continue;
            }
            let ts = now - days * DAY + i;
            let prepare = format!(
                "{{\"op\": \"PREPARE\", \"tx_id\": \"{tag}{i}\", \"changes\": {{\"k\": {i}}}, \"timestamp\": {ts}}}\n"
            );
            s += &prepare;
            s += &prepare;
            s += &format!("{{\"op\": \"COMMIT\", \"tx_id\": \"{tag}{i}\", \"timestamp\": {ts}}}\n");
        }
    }
    for i in 0..20 {
        s += &format!(
            "{{\"op\": \"PREPARE\", \"tx_id\": \"new{i}\", \"changes\": {{\"k\": {i}}}, \"timestamp\": {}.5}}\n",
            now - 60 + i
        );
        s += &format!(
            "{{\"op\": \"COMMIT\", \"tx_id\": \"new{i}\", \"timestamp\": {}.5}}\n",
            now - 60 + i
        );
    }
    common::write_wal(dir, "wal.log", &s)
}

/// One retention run expiring what is older than `days`: (its backup, its archive).
fn expire(wal: &Path, days: u64) -> (PathBuf, PathBuf) {
    let mut req = Request::new(wal, "test");
    req.retention = Some(RetentionRequest {
        expire_after_secs: Some(days * DAY),
        expire_in_flight_after_secs: None,
        archive_dir: None,
    });
    let r = run(&req).unwrap();
    (r.backup.expect("a backup"), r.archive.expect("an archive"))
}

/// `verify --json WAL --against BACKUP --archive A...`: (exit code, report, stdout+stderr).
fn verify(wal: &Path, backup: &Path, archives: &[&Path]) -> (i32, serde_json::Value, String) {
    let mut cmd = common::walcompactd();
    cmd.args(["verify", "--json"])
        .arg(wal)
        .arg("--against")
        .arg(backup);
    for a in archives {
        cmd.arg("--archive").arg(a);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap(), report, text)
}

fn archived(path: &Path) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    archive::read_lines::<PipelineError>(path, |l| {
        lines.push(l.to_vec());
        Ok(())
    })
    .unwrap();
    lines
}

#[test]
fn the_wal_and_its_archive_replay_to_the_backup_and_the_wal_alone_does_not() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path(), &[("old", 30, 200)]);
    let (backup, arch) = expire(&wal, 7);
    let (code, v, text) = verify(&wal, &backup, &[&arch]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(v["archived_lines"], 400, "{v}");
    assert_eq!(v["appended_lines"], 0, "{v}");
    assert_eq!(v["archives"][0]["lines"], 400, "{v}");
    assert_eq!(
        v["archives"][0]["first_unmatched_line"],
        serde_json::Value::Null
    );
    assert_eq!(v["against"]["equal"], true);
    assert_eq!(v["digest"], v["against"]["digest"]);
    assert_eq!(v["committed"], 220, "the archived transactions are back");
    // The same files without the archive: the old transactions are missing.
    let out = common::walcompactd()
        .arg("verify")
        .arg(&wal)
        .arg("--against")
        .arg(&backup)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DIFFERENT replay state"));
    // The human report says what was merged.
    let out = common::walcompactd()
        .arg("verify")
        .arg(&wal)
        .arg("--against")
        .arg(&backup)
        .arg("--archive")
        .arg(&arch)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("400 archive lines merged"), "{text}");
    assert!(text.contains("same replay state"), "{text}");
}

#[test]
fn an_archive_with_a_changed_digit_fails_naming_it_and_its_line() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path(), &[("old", 30, 50)]);
    let (backup, arch) = expire(&wal, 7);
    // Rewrite the archive through the real writer with line 5 (old2's PREPARE) changed.
    let mut lines = archived(&arch);
    assert!(String::from_utf8_lossy(&lines[4]).contains("\"old2\""));
    let text = String::from_utf8(lines[4].clone()).unwrap();
    lines[4] = text.replace("{\"k\": 2}", "{\"k\": 3}").into_bytes();
    assert_ne!(lines[4], text.as_bytes());
    let meta = fs::metadata(&wal).unwrap();
    let at = chrono::Utc::now() + chrono::Duration::days(1);
    let mut w = archive::ArchiveWriter::create(&wal, d.path(), at, &meta).unwrap();
    for l in &lines {
        w.write_line(l).unwrap();
    }
    let tampered = w.finish().unwrap().path;
    let (code, v, out) = verify(&wal, &backup, &[&tampered]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(v["archives"][0]["archive"], tampered.to_str().unwrap());
    assert_eq!(v["archives"][0]["first_unmatched_line"], 5, "{v}");
    assert_eq!(v["archives"][0]["lines"], 4, "{v}");
    // In words too, naming the archive and the line.
    let human = common::walcompactd()
        .arg("verify")
        .arg(&wal)
        .arg("--against")
        .arg(&backup)
        .arg("--archive")
        .arg(&tampered)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert_eq!(human.status.code(), Some(1));
    assert!(
        text.contains(&format!(
            "archive {}: line 5 is NOT in the backup",
            tampered.display()
        )),
        "{text}"
    );
    // The untouched archive still verifies.
    assert_eq!(verify(&wal, &backup, &[&arch]).0, 0);
}

#[test]
fn a_kept_line_missing_from_the_wal_fails() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path(), &[("old", 30, 20)]);
    let (backup, arch) = expire(&wal, 7);
    let text = fs::read_to_string(&wal).unwrap();
    let gone = text
        .lines()
        .find(|l| l.contains("COMMIT") && l.contains("\"new7\""))
        .unwrap();
    fs::write(&wal, text.replace(&format!("{gone}\n"), "")).unwrap();
    let (code, v, out) = verify(&wal, &backup, &[&arch]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(v["against"]["equal"], false, "{v}");
    assert_eq!(
        v["archives"][0]["first_unmatched_line"],
        serde_json::Value::Null,
        "the archive itself is whole: {v}"
    );
}

#[test]
fn archives_of_two_runs_verify_together_in_any_order() {
    let d = tempfile::tempdir().unwrap();
    // Two ages alternating in the file: the two archives' lines interleave in the backup.
    let wal = history(d.path(), &[("ancient", 60, 30), ("old", 30, 30)]);
    let (first_backup, first) = expire(&wal, 45);
    let (_, second) = expire(&wal, 7);
    assert_ne!(first, second);
    assert!(
        archived(&first)
            .iter()
            .all(|l| String::from_utf8_lossy(l).contains("ancient"))
    );
    let (code, v, out) = verify(&wal, &first_backup, &[&second, &first]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["archived_lines"], 120, "{v}");
    assert_eq!(v["archives"][0]["lines"], 60);
    assert_eq!(v["archives"][1]["lines"], 60);
    assert_eq!(verify(&wal, &first_backup, &[&first, &second]).0, 0);
    // Either archive alone is not enough.
    assert_eq!(verify(&wal, &first_backup, &[&first]).0, 1);
    assert_eq!(verify(&wal, &first_backup, &[&second]).0, 1);
    // The same archive twice: its second copy is not in the backup (beyond a retried
    // PREPARE the backup holds twice), and that fails even though a retried line leaves
    // the replay state as it was.
    let (code, v, _) = verify(&wal, &first_backup, &[&first, &second, &first]);
    assert_eq!(code, 1);
    assert_eq!(
        v["archives"][0]["first_unmatched_line"],
        serde_json::Value::Null
    );
    assert_eq!(v["archives"][2]["first_unmatched_line"], 2, "{v}");
}

#[test]
fn lines_a_writer_appends_after_the_run_count_on_both_sides() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path(), &[("old", 30, 40)]);
    let (backup, arch) = expire(&wal, 7);
    let mut w = WalWriter::open(&wal, Durability::None).unwrap();
    w.append(br#"{"op": "PREPARE", "tx_id": "late", "changes": {"k": 1}}"#)
        .unwrap();
    w.append(br#"{"op": "COMMIT", "tx_id": "late"}"#).unwrap();
    // And a torn tail: a writer in the middle of its next line.
    drop(w);
    let mut f = fs::OpenOptions::new().append(true).open(&wal).unwrap();
    std::io::Write::write_all(&mut f, br#"{"op": "PREPARE", "tx_"#).unwrap();
    let (code, v, out) = verify(&wal, &backup, &[&arch]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["appended_lines"], 2, "{v}");
    assert_eq!(v["archived_lines"], 80, "{v}");
    assert_eq!(v["committed"], 61, "{v}");
    assert!(v["torn_tail_bytes"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn archive_needs_against_and_a_missing_archive_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path(), &[("old", 30, 5)]);
    let (backup, _) = expire(&wal, 7);
    let out = common::walcompactd()
        .arg("verify")
        .arg(&wal)
        .args(["--archive", "x.log.zst"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses --archive alone");
    let missing = d.path().join("wal_archive_20000101_000000.log.zst");
    let (code, _, text) = verify(&wal, &backup, &[&missing]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains(missing.to_str().unwrap()), "{text}");
}

#[test]
fn a_damaged_archive_is_an_error_naming_it_even_when_its_lines_match() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path(), &[("old", 30, 3000)]);
    let (backup, arch) = expire(&wal, 7);
    // Every line as archived, the last one's newline cut: what a truncated write leaves.
    let mut bytes = archived(&arch).concat();
    assert!(bytes.len() > 256 << 10, "more than a few batches");
    bytes.pop();
    let damaged = d.path().join("damaged.log.zst");
    fs::write(&damaged, zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
    let (code, _, text) = verify(&wal, &backup, &[&damaged]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains(damaged.to_str().unwrap()), "{text}");
    assert!(text.contains("without a newline"), "{text}");
}
