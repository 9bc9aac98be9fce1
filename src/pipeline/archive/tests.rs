//! Archives: names, what is written equals what is read back, partials never under an
//! archive's name, owner and mode of the WAL, planted links never followed, pruning.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const NOW: &str = "2026-11-30T12:00:00Z";

/// A temp dir holding `wal.log` (two lines) and a victim file outside it.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let wal = d.path().join("wal.log");
    fs::write(&wal, b"{\"op\": \"COMMIT\", \"tx_id\": \"a\"}\n").unwrap();
    let victim = d.path().join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    (d, wal, victim)
}

const LINES: [&[u8]; 4] = [
    b"{\"op\": \"PREPARE\", \"tx_id\": \"t1\", \"changes\": {\"k\": 1}}\n",
    b"{\"op\": \"COMMIT\", \"tx_id\": \"t1\"}\n",
    b"\n",
    // Corrupt, not UTF-8: archived bytes are never re-encoded.
    b"{\"op\": \"ABORT\", \"tx_id\": \"\xff\xfe\"}\n",
];

fn write_archive(wal: &Path, dir: &Path, now: DateTime<Utc>) -> Archive {
    let meta = fs::metadata(wal).unwrap();
    let mut w = ArchiveWriter::create(wal, dir, now, &meta).unwrap();
    for l in LINES {
        w.write_line(l).unwrap();
    }
    w.finish().unwrap()
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn names_round_trip_and_only_ours_parse() {
    let now = at(NOW);
    let wal = Path::new("d/wal.log");
    assert_eq!(
        archive_name(wal, now, 0),
        "wal_archive_20261130_120000.log.zst"
    );
    assert_eq!(
        archive_name(wal, now, 2),
        "wal_archive_20261130_120000_2.log.zst"
    );
    assert_eq!(
        archive_name(Path::new("journal"), now, 0),
        "journal_archive_20261130_120000.zst"
    );
    for n in [0, 1, 2, 10, 999] {
        let name = archive_name(wal, now, n);
        assert_eq!(parse(wal, &name), Some((now, n)), "{name}");
        assert_eq!(parse_archive_name(wal, &name), Some(now));
    }
    let journal = Path::new("journal");
    let name = archive_name(journal, now, 3);
    assert_eq!(parse_archive_name(journal, &name), Some(now));
    for other in [
        "wal.log",
        "wal_archive_20261130_120000.log",
        "wal_archive_20261130_120000.log.zst.partial",
        "wal_backup_20261130_120000.log.zst",
        "x_archive_20261130_120000.log.zst",
        "wal_archive_20261130_120000_.log.zst",
        "wal_archive_20261130_120000_0.log.zst",
        "wal_archive_20261130_120000_x.log.zst",
        "wal_archive_2026113_120000.log.zst",
        "wal_archive_20261130_120000.jsonl.zst",
    ] {
        assert_eq!(parse_archive_name(wal, other), None, "{other}");
    }
    // Another WAL's archive in the same directory is not this one's.
    assert_eq!(
        parse_archive_name(journal, "wal_archive_20261130_120000.log.zst"),
        None
    );
}

#[test]
fn archives_of_the_same_second_take_the_next_name() {
    let (d, wal, _) = setup();
    let now = at(NOW);
    let a = write_archive(&wal, d.path(), now);
    let b = write_archive(&wal, d.path(), now);
    let c = write_archive(&wal, d.path(), now);
    assert_eq!(a.path, d.path().join(archive_name(&wal, now, 0)));
    assert_eq!(b.path, d.path().join(archive_name(&wal, now, 1)));
    assert_eq!(c.path, d.path().join(archive_name(&wal, now, 2)));
    let listed: Vec<PathBuf> = list(&wal, d.path())
        .unwrap()
        .into_iter()
        .map(|a| a.path)
        .collect();
    assert_eq!(listed, [a.path, b.path, c.path]);
}

#[test]
fn what_is_written_is_what_reads_back() {
    let (d, wal, _) = setup();
    let written = write_archive(&wal, d.path(), at(NOW));
    let all: Vec<u8> = LINES.concat();
    assert_eq!(written.lines, LINES.len() as u64);
    assert_eq!(written.bytes, all.len() as u64);
    assert_eq!(
        written.hash,
        xxhash_rust::xxh3::xxh3_64_with_seed(&all, HASH_SEED)
    );
    assert_eq!(
        written.compressed_bytes,
        fs::metadata(&written.path).unwrap().len()
    );
    assert_eq!(read_back(&written.path).unwrap(), written);
    // The file is plain zstd of the original bytes.
    let raw = zstd::decode_all(fs::File::open(&written.path).unwrap()).unwrap();
    assert_eq!(raw, all);
    let mut seen = Vec::new();
    let streamed = read_lines(&written.path, |l| {
        seen.push(l.to_vec());
        Ok::<(), PipelineError>(())
    })
    .unwrap();
    assert_eq!(streamed, written);
    assert_eq!(seen, LINES.map(<[u8]>::to_vec));
}

/// The read-back check decompresses an archive's frames on several threads and takes them a
/// buffer at a time: lines crossing frames and buffers count and hash as line by line, and
/// any zstd reader sees one stream of the lines.
#[test]
fn the_read_back_check_agrees_with_reading_line_by_line() {
    let (d, wal, _) = setup();
    let meta = fs::metadata(&wal).unwrap();
    let mut w = ArchiveWriter::create(&wal, d.path(), at(NOW), &meta).unwrap();
    let mut all = Vec::new();
    for i in 0..80_000u32 {
        let line = format!(
            "{{\"op\": \"COMMIT\", \"tx_id\": \"t{i}\"}}{}\n",
            " ".repeat(i as usize % 97)
        );
        w.write_line(line.as_bytes()).unwrap();
        all.extend_from_slice(line.as_bytes());
    }
    let written = w.finish().unwrap();
    assert!(
        written.bytes > 2 * frames::FRAME_BYTES as u64,
        "several frames"
    );
    let by_line = read_lines(&written.path, |_| Ok::<(), PipelineError>(())).unwrap();
    assert_eq!(by_line, written);
    assert_eq!(read_back(&written.path).unwrap(), written);
    let raw = zstd::decode_all(fs::File::open(&written.path).unwrap()).unwrap();
    assert_eq!(raw, all);
}

/// An archive written as one zstd stream (as before archives were written in frames) reads
/// back the same: the check falls back to decompressing it as a stream.
#[test]
fn an_archive_of_one_stream_reads_back() {
    let (d, _, _) = setup();
    let all: Vec<u8> = LINES.concat().repeat(50_000);
    let path = d.path().join("stream.zst");
    let mut enc = zstd::Encoder::new(fs::File::create(&path).unwrap(), 1).unwrap();
    std::io::Write::write_all(&mut enc, &all).unwrap();
    enc.finish().unwrap();
    let back = read_back(&path).unwrap();
    assert_eq!((back.lines, back.bytes), (4 * 50_000, all.len() as u64));
    assert_eq!(
        back.hash,
        xxhash_rust::xxh3::xxh3_64_with_seed(&all, HASH_SEED)
    );
    let by_line = read_lines(&path, |_| Ok::<(), PipelineError>(())).unwrap();
    assert_eq!(back, by_line);
}

#[test]
fn an_empty_archive_reads_back_empty() {
    let (d, wal, _) = setup();
    let meta = fs::metadata(&wal).unwrap();
    let a = ArchiveWriter::create(&wal, d.path(), at(NOW), &meta)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!((a.lines, a.bytes), (0, 0));
    assert_eq!(read_back(&a.path).unwrap(), a);
}

#[test]
fn a_line_must_be_one_line_with_its_newline() {
    let (d, wal, _) = setup();
    let meta = fs::metadata(&wal).unwrap();
    let mut w = ArchiveWriter::create(&wal, d.path(), at(NOW), &meta).unwrap();
    for bad in [&b"no newline"[..], b"two\nlines\n", b""] {
        let e = w.write_line(bad).unwrap_err();
        assert!(e.to_string().contains("not one line"), "{e}");
    }
    w.write_line(b"ok\n").unwrap();
    assert_eq!(w.lines(), 1);
    assert_eq!(w.finish().unwrap().lines, 1);
}

#[test]
fn a_damaged_archive_is_an_error_not_fewer_lines() {
    let (d, wal, _) = setup();
    let a = write_archive(&wal, d.path(), at(NOW));
    // Cut short: the zstd stream ends early.
    let bytes = fs::read(&a.path).unwrap();
    let cut = d.path().join("cut.zst");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(read_back(&cut).is_err());
    // A stream whose last line has no newline was never finished by a writer.
    let torn = d.path().join("torn.zst");
    fs::write(&torn, zstd::encode_all(&b"a\nb"[..], 3).unwrap()).unwrap();
    let e = read_back(&torn).unwrap_err();
    assert!(
        e.to_string().contains("without a newline after line 1"),
        "{e}"
    );
    // Not zstd at all.
    assert!(read_back(&wal).is_err());
}

#[test]
fn a_partial_never_has_the_final_name() {
    let (d, wal, _) = setup();
    let before = names(d.path());
    let meta = fs::metadata(&wal).unwrap();
    let mut w = ArchiveWriter::create(&wal, d.path(), at(NOW), &meta).unwrap();
    for l in LINES {
        w.write_line(l).unwrap();
    }
    // While written (and after a crash now): only the partial, which is no archive.
    let partial = format!("{}{PARTIAL_SUFFIX}", archive_name(&wal, at(NOW), 0));
    assert!(w.partial_path().ends_with(&partial));
    let mut want = before.clone();
    want.push(partial.clone());
    want.sort();
    assert_eq!(names(d.path()), want);
    assert!(list(&wal, d.path()).unwrap().is_empty());
    assert_eq!(parse_archive_name(&wal, &partial), None);
    drop(w);
    assert_eq!(names(d.path()), before, "no archive, no partial left");

    let mut w = ArchiveWriter::create(&wal, d.path(), at(NOW), &meta).unwrap();
    w.write_line(LINES[0]).unwrap();
    w.discard();
    assert_eq!(names(d.path()), before);
}

#[test]
fn a_leftover_partial_of_ours_is_removed_and_nothing_else() {
    let (d, wal, victim) = setup();
    let now = at(NOW);
    let ours = format!("{}{PARTIAL_SUFFIX}", archive_name(&wal, now, 0));
    fs::write(d.path().join(&ours), b"half").unwrap();
    let planted = format!("{}{PARTIAL_SUFFIX}", archive_name(&wal, now, 1));
    symlink(&victim, d.path().join(&planted)).unwrap();
    fs::write(d.path().join("other.partial"), b"x").unwrap();
    let removed = remove_leftovers(&wal, d.path()).unwrap();
    assert_eq!(removed, [d.path().join(&ours)]);
    assert!(fs::symlink_metadata(d.path().join(&planted)).is_ok());
    assert!(d.path().join("other.partial").exists());
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
}

#[test]
fn owner_and_mode_are_the_wals() {
    let (d, wal, _) = setup();
    for mode in [0o600, 0o640] {
        fs::set_permissions(&wal, fs::Permissions::from_mode(mode)).unwrap();
        // As root, also another owner and group: the application's user.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&wal, Some(4242), Some(4343)).unwrap();
        }
        let a = write_archive(&wal, d.path(), at(NOW));
        let (w, m) = (fs::metadata(&wal).unwrap(), fs::metadata(&a.path).unwrap());
        assert_eq!(m.mode() & 0o7777, mode, "the WAL's mode, never wider");
        assert_eq!((m.uid(), m.gid()), (w.uid(), w.gid()));
        if root {
            assert_eq!((m.uid(), m.gid()), (4242, 4343));
        }
        assert_eq!(m.nlink(), 1, "the partial's name is gone");
    }
}

#[test]
fn a_symlink_at_the_next_name_is_not_followed() {
    let (d, wal, victim) = setup();
    let now = at(NOW);
    let first = d.path().join(archive_name(&wal, now, 0));
    symlink(&victim, &first).unwrap();
    // And at the partial of the second name (its final name free).
    let second_partial = d
        .path()
        .join(format!("{}{PARTIAL_SUFFIX}", archive_name(&wal, now, 1)));
    symlink(&victim, &second_partial).unwrap();
    let a = write_archive(&wal, d.path(), now);
    assert_eq!(a.path, d.path().join(archive_name(&wal, now, 2)));
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert_eq!(fs::read_link(&first).unwrap(), victim);
    assert_eq!(fs::read_link(&second_partial).unwrap(), victim);
    assert_eq!(read_back(&a.path).unwrap(), a);
    // The planted link is no archive: not listed.
    let listed: Vec<PathBuf> = list(&wal, d.path())
        .unwrap()
        .into_iter()
        .map(|a| a.path)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&a.path));
    // Reading through a link at an archive's name is refused.
    assert!(read_back(&first).is_err());
}

#[test]
fn a_symlink_planted_while_writing_is_not_replaced() {
    let (d, wal, victim) = setup();
    let now = at(NOW);
    let meta = fs::metadata(&wal).unwrap();
    let mut w = ArchiveWriter::create(&wal, d.path(), now, &meta).unwrap();
    w.write_line(LINES[0]).unwrap();
    let first = d.path().join(archive_name(&wal, now, 0));
    symlink(&victim, &first).unwrap();
    let a = w.finish().unwrap();
    assert_eq!(a.path, d.path().join(archive_name(&wal, now, 1)));
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert_eq!(fs::read_link(&first).unwrap(), victim);
    assert_eq!(read_back(&a.path).unwrap().lines, 1);
}

#[test]
fn selection_keeps_the_newest_and_the_recent() {
    let now = at("2026-11-28T00:00:00Z");
    let a = |day: u32| ArchiveFile {
        path: PathBuf::from(format!("a{day}")),
        taken_at: at(&format!("2026-11-{day:02}T00:00:00Z")),
        bytes: 1,
    };
    let names = |v: Vec<PathBuf>| -> Vec<String> {
        v.into_iter().map(|p| p.display().to_string()).collect()
    };
    let all = vec![a(1), a(2), a(20), a(22), a(27)];
    assert_eq!(names(select_prunable(&all, 7, now)), ["a1", "a2", "a20"]);
    assert_eq!(names(select_prunable(&all, 30, now)), Vec::<String>::new());
    assert!(select_prunable(&all, 0, now).is_empty(), "0 keeps for ever");
    let old = vec![a(1), a(2), a(3)];
    assert_eq!(names(select_prunable(&old, 7, now)), ["a1", "a2"]);
    assert!(select_prunable(&old[..1], 1, now).is_empty());
    assert!(select_prunable(&[], 1, now).is_empty());
}

#[test]
fn prune_keeps_the_newest_and_respects_keep_days() {
    let (d, wal, victim) = setup();
    let now = at("2026-11-30T00:00:00Z");
    let path = |day: u32, n: u32| {
        let t = at(&format!("2026-11-{day:02}T00:00:00Z"));
        d.path().join(archive_name(&wal, t, n))
    };
    for (day, n) in [(1, 0), (1, 2), (1, 10), (2, 0), (25, 0), (29, 0)] {
        fs::write(path(day, n), b"x").unwrap();
    }
    // Links named like archives: a symlink to a victim at an old name, and one at a newer
    // name that would otherwise count as the newest.
    symlink(&victim, path(3, 0)).unwrap();
    symlink(&victim, path(30, 0)).unwrap();
    assert!(
        prune(&wal, d.path(), 0, &[], now).unwrap().is_empty(),
        "0 = keep"
    );
    let removed = prune(&wal, d.path(), 7, &[], now).unwrap();
    assert_eq!(removed, [path(1, 0), path(1, 2), path(1, 10), path(2, 0)]);
    let left: Vec<PathBuf> = list(&wal, d.path())
        .unwrap()
        .into_iter()
        .map(|a| a.path)
        .collect();
    assert_eq!(left, [path(25, 0), path(29, 0)]);
    // Everything old: all but the newest go.
    let removed = prune(&wal, d.path(), 1, &[], at("2027-06-01T00:00:00Z")).unwrap();
    assert_eq!(removed, [path(25, 0)]);
    assert!(path(29, 0).exists(), "the newest archive is never pruned");
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert!(fs::symlink_metadata(path(3, 0)).is_ok());
    assert!(fs::symlink_metadata(path(30, 0)).is_ok());
}

#[test]
fn remove_takes_away_a_run_s_archive() {
    let (d, wal, victim) = setup();
    let a = write_archive(&wal, d.path(), at(NOW));
    remove(&a.path).unwrap();
    assert!(!a.path.exists());
    remove(&a.path).unwrap();
    let planted = d.path().join(archive_name(&wal, at(NOW), 5));
    symlink(&victim, &planted).unwrap();
    remove(&planted).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert!(fs::symlink_metadata(&planted).is_ok(), "only regular files");
}
