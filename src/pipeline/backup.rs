//! Backups of the WAL as it was before a swap: a hard link to the original inode when the
//! backup directory is on the same filesystem (no bytes copied), else a copy + fsync.
//! Named like the old tooling: `wal.log` → `wal_backup_YYYYmmdd_HHMMSS.log` (UTC), with
//! `_N` before the extension on collision. Pruning and zstd compression live here too.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use super::{PipelineError, Stage};
use crate::fsutil::{fsync_dir, parent_dir};

/// Timestamp format inside backup names.
const STAMP_FORMAT: &str = "%Y%m%d_%H%M%S";
/// Collision suffixes tried before giving up (more than one backup a second per WAL is odd).
const MAX_COLLISION_SUFFIX: u32 = 1000;
/// Extension added by compression.
pub const COMPRESSED_EXT: &str = "zst";
/// zstd level: fast, still ~5-10x on JSON lines.
const ZSTD_LEVEL: i32 = 3;

/// A backup just made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub path: PathBuf,
    /// True for a hard link (same inode), false for a copy.
    pub linked: bool,
}

/// `(stem, extension)` of the WAL's file name: `wal.log` → (`wal`, `.log`).
pub(super) fn name_parts(wal: &Path) -> (String, String) {
    let stem = wal
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = wal
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, ext)
}

/// The backup file name for `wal` at `now`, with collision number `n` (0 = none).
pub fn backup_name(wal: &Path, now: DateTime<Utc>, n: u32) -> String {
    let (stem, ext) = name_parts(wal);
    let stamp = now.format(STAMP_FORMAT);
    if n == 0 {
        format!("{stem}_backup_{stamp}{ext}")
    } else {
        format!("{stem}_backup_{stamp}_{n}{ext}")
    }
}

/// The directory backups of `wal` go to.
pub fn backup_dir(wal: &Path, configured: Option<&Path>) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| parent_dir(wal))
}

/// Checks that a configured backup directory exists and is a directory.
pub fn check_dir(dir: &Path) -> Result<(), PipelineError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(PipelineError::BadInput {
            path: dir.into(),
            what: "backup directory is not a directory".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PipelineError::BadInput {
            path: dir.into(),
            what: "backup directory does not exist".into(),
        }),
        Err(e) => Err(PipelineError::io(
            Stage::Backup,
            "stat backup directory",
            dir,
        )(e)),
    }
}

/// Backs up `wal` (opened as `src`) into `dir`, durably.
pub fn create(
    wal: &Path,
    src: &File,
    dir: &Path,
    now: DateTime<Utc>,
) -> Result<Backup, PipelineError> {
    for n in 0..MAX_COLLISION_SUFFIX {
        let path = dir.join(backup_name(wal, now, n));
        match fs::hard_link(wal, &path) {
            Ok(()) => return finish(Backup { path, linked: true }, dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if link_unsupported(&e) => match copied(src, path, dir)? {
                Some(b) => return Ok(b),
                None => continue,
            },
            Err(e) => return Err(PipelineError::io(Stage::Backup, "link", path)(e)),
        }
    }
    Err(PipelineError::BadInput {
        path: dir.into(),
        what: "too many backups with the same timestamp".into(),
    })
}

/// Backs up `wal` (opened as `src`) into `dir` as a copy, never a hard link: for a caller
/// about to change the WAL's inode in place (`restore --from-archive` appends to it), which
/// a hard-link backup would follow.
pub fn create_copy(
    wal: &Path,
    src: &File,
    dir: &Path,
    now: DateTime<Utc>,
) -> Result<Backup, PipelineError> {
    for n in 0..MAX_COLLISION_SUFFIX {
        let path = dir.join(backup_name(wal, now, n));
        if let Some(b) = copied(src, path, dir)? {
            return Ok(b);
        }
    }
    Err(PipelineError::BadInput {
        path: dir.into(),
        what: "too many backups with the same timestamp".into(),
    })
}

/// A durable copy of `src` at `path`; `None` when the name is taken (try the next one).
fn copied(src: &File, path: PathBuf, dir: &Path) -> Result<Option<Backup>, PipelineError> {
    match copy_new(src, &path) {
        Ok(()) => finish(
            Backup {
                path,
                linked: false,
            },
            dir,
        )
        .map(Some),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(PipelineError::io(Stage::Backup, "copy to", path)(e)),
    }
}

/// Cross-device links (EXDEV) and filesystems without hard links fall back to a copy.
fn link_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::ENOTSUP) | Some(libc::EMLINK)
    )
}

/// The link or copy only counts once its directory entry is durable; if that fails, the
/// new name is removed again (no journal names it yet, so nothing else would).
fn finish(backup: Backup, dir: &Path) -> Result<Backup, PipelineError> {
    let made = durable(dir);
    if made.is_err() {
        let _ = fs::remove_file(&backup.path);
    }
    made.map(|()| backup)
}

fn durable(dir: &Path) -> Result<(), PipelineError> {
    crate::io_fault!("backup::after_create")
        .and_then(|()| fsync_dir(dir))
        .map_err(PipelineError::io(Stage::Backup, "fsync dir", dir))
}

/// Suffix of a copied backup while it is written. It never parses as a backup, so a crash
/// mid-copy leaves no truncated file under a backup's name (a leftover is only wasted space).
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Copies `src` from its start into a new file at `dest` (`AlreadyExists` if taken), fsynced.
/// Copy under a partial name and fsync BEFORE it takes the backup's name, or a crash can
/// leave a truncated file that restore or prune-backups would take for a backup.
fn copy_new(src: &File, dest: &Path) -> io::Result<()> {
    // Only a crashed copy of this same name leaves it behind: `create_new` replaces such a
    // leftover of ours and refuses anything else there.
    let partial = crate::fsutil::sibling(dest, PARTIAL_SUFFIX);
    let copied = copy_into(src, &partial).and_then(|()| claim(&partial, dest));
    if copied.is_err() {
        let _ = fs::remove_file(&partial);
    }
    copied
}

fn copy_into(src: &File, partial: &Path) -> io::Result<()> {
    let (dir, name) = crate::fsutil::safe::Dir::of(partial)?;
    let mut out = dir.create_new(&name, 0o600)?;
    // The WAL's owner and mode, never wider: the copy holds the same transaction data.
    let meta = src.metadata()?;
    let _ = std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()));
    out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
        meta.mode() & 0o777,
    ))?;
    let mut reader = src.try_clone()?;
    io::Seek::seek(&mut reader, io::SeekFrom::Start(0))?;
    io::copy(&mut reader, &mut out)?;
    crate::crash_point!("backup::copy::crash");
    out.sync_all()
}

/// Gives the complete copy at `partial` the name `dest`, unless `dest` exists: a hard link
/// where the filesystem has them (atomic, fails on an existing name), else a rename after a
/// check (the compaction lock keeps other runs of this tool out of the way meanwhile).
fn claim(partial: &Path, dest: &Path) -> io::Result<()> {
    match fs::hard_link(partial, dest) {
        Ok(()) => {
            let _ = fs::remove_file(partial);
            Ok(())
        }
        Err(e) if link_unsupported(&e) => match fs::symlink_metadata(dest) {
            Ok(_) => Err(io::ErrorKind::AlreadyExists.into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(partial, dest),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// A backup found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupFile {
    pub path: PathBuf,
    pub taken_at: DateTime<Utc>,
    pub bytes: u64,
    pub compressed: bool,
}

/// Parses a backup file name of `wal`; `None` for other files.
pub fn parse_backup_name(wal: &Path, name: &str) -> Option<(DateTime<Utc>, bool)> {
    let (stem, ext) = name_parts(wal);
    let (name, compressed) = match name.strip_suffix(&format!(".{COMPRESSED_EXT}")) {
        Some(n) => (n, true),
        None => (name, false),
    };
    let rest = name
        .strip_prefix(&format!("{stem}_backup_"))?
        .strip_suffix(ext.as_str())?;
    let stamp = rest.get(..15)?;
    let suffix = &rest[15..];
    if !(suffix.is_empty()
        || (suffix.starts_with('_') && suffix[1..].bytes().all(|b| b.is_ascii_digit())))
    {
        return None;
    }
    let t = NaiveDateTime::parse_from_str(stamp, STAMP_FORMAT).ok()?;
    Some((Utc.from_utc_datetime(&t), compressed))
}

/// Backups of `wal` in `dir`, oldest first.
pub fn list(wal: &Path, dir: &Path) -> io::Result<Vec<BackupFile>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((taken_at, compressed)) = parse_backup_name(wal, &name) {
            let bytes = entry.metadata()?.len();
            found.push(BackupFile {
                path: entry.path(),
                taken_at,
                bytes,
                compressed,
            });
        }
    }
    found.sort_by(|a, b| (a.taken_at, &a.path).cmp(&(b.taken_at, &b.path)));
    Ok(found)
}

/// Which backups to delete: older than `keep_days`, never among the newest `keep_last`,
/// never one in `protect` (the new backup; those still waiting for an off-host copy). Pure,
/// so the retention rule is testable without files.
pub fn select_prunable(
    backups: &[BackupFile],
    keep_days: u32,
    keep_last: u32,
    protect: &[&Path],
    now: DateTime<Utc>,
) -> Vec<PathBuf> {
    let cutoff = now - chrono::Duration::days(i64::from(keep_days));
    let keep_from = backups.len().saturating_sub(keep_last as usize);
    backups[..keep_from]
        .iter()
        .filter(|b| b.taken_at < cutoff && !protect.contains(&b.path.as_path()))
        .map(|b| b.path.clone())
        .collect()
}

/// Deletes prunable backups; returns what was removed.
pub fn prune(
    wal: &Path,
    dir: &Path,
    keep_days: u32,
    keep_last: u32,
    protect: &[&Path],
    now: DateTime<Utc>,
) -> Result<Vec<PathBuf>, PipelineError> {
    let backups = list(wal, dir).map_err(PipelineError::io(Stage::Prune, "list", dir))?;
    let doomed = select_prunable(&backups, keep_days, keep_last, protect, now);
    for p in &doomed {
        crate::io_fault!("prune::remove")
            .and_then(|()| fs::remove_file(p))
            .map_err(PipelineError::io(Stage::Prune, "remove", p))?;
    }
    if !doomed.is_empty() {
        fsync_dir(dir).map_err(PipelineError::io(Stage::Prune, "fsync dir", dir))?;
    }
    Ok(doomed)
}

/// Compresses a backup to `<path>.zst` (temp, fsync, rename, fsync dir) and removes the
/// uncompressed one only after the compressed one is durable.
pub fn compress(path: &Path) -> Result<PathBuf, PipelineError> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{COMPRESSED_EXT}"));
    let dest = PathBuf::from(name);
    let tmp = crate::fsutil::sibling(&dest, ".tmp");
    let result = (|| -> io::Result<()> {
        // A backup is ours: never follow a link planted at a backup's name.
        let src = {
            let (dir, name) = crate::fsutil::safe::Dir::of(path)?;
            dir.open_read(&name)?
        };
        let meta = src.metadata()?;
        let src = BufReader::new(src);
        let (dir, name) = crate::fsutil::safe::Dir::of(&tmp)?;
        let out = dir.create_new(&name, 0o600)?;
        // The backup's owner and mode, never wider.
        let _ = std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()));
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            meta.mode() & 0o777,
        ))?;
        let mut enc = zstd::Encoder::new(out, ZSTD_LEVEL)?;
        io::copy(&mut { src }, &mut enc)?;
        enc.finish()?.sync_all()?;
        fs::rename(&tmp, &dest)?;
        fsync_dir(&parent_dir(&dest))?;
        fs::remove_file(path)?;
        fsync_dir(&parent_dir(path))
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        PipelineError::io(Stage::Prune, "compress", path)(e)
    })?;
    Ok(dest)
}

/// A reader of a backup's WAL bytes, decompressing `.zst` backups.
pub fn open_reader(path: &Path) -> io::Result<Box<dyn Read>> {
    let file = File::open(path)?;
    if path.extension().is_some_and(|e| e == COMPRESSED_EXT) {
        Ok(Box::new(zstd::Decoder::new(file)?))
    } else {
        Ok(Box::new(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn names_follow_the_old_tooling() {
        let now = at("2026-11-28T09:05:07Z");
        assert_eq!(
            backup_name(Path::new("d/wal.log"), now, 0),
            "wal_backup_20261128_090507.log"
        );
        assert_eq!(
            backup_name(Path::new("wal.log"), now, 2),
            "wal_backup_20261128_090507_2.log"
        );
        assert_eq!(
            backup_name(Path::new("journal"), now, 0),
            "journal_backup_20261128_090507"
        );
    }

    #[test]
    fn parses_only_its_own_names() {
        let wal = Path::new("wal.log");
        let want = at("2026-11-28T09:05:07Z");
        assert_eq!(
            parse_backup_name(wal, "wal_backup_20261128_090507.log"),
            Some((want, false))
        );
        assert_eq!(
            parse_backup_name(wal, "wal_backup_20261128_090507_3.log.zst"),
            Some((want, true))
        );
        for other in [
            "wal.log",
            "wal_backup_2026.log",
            "x_backup_20261128_090507.log",
            "wal_backup_20261128_090507_x.log",
            // A copy still being written (or cut short by a crash) is not a backup.
            "wal_backup_20261128_090507.log.partial",
        ] {
            assert_eq!(parse_backup_name(wal, other), None, "{other}");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_recent() {
        let now = at("2026-11-28T00:00:00Z");
        let b = |day: u32| BackupFile {
            path: PathBuf::from(format!("b{day}")),
            taken_at: at(&format!("2026-11-{day:02}T00:00:00Z")),
            bytes: 1,
            compressed: false,
        };
        let all = vec![b(1), b(2), b(3), b(20), b(27)];
        let names = |v: Vec<PathBuf>| {
            v.into_iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(select_prunable(&all, 7, 2, &[], now)),
            ["b1", "b2", "b3"]
        );
        assert_eq!(names(select_prunable(&all, 7, 4, &[], now)), ["b1"]);
        assert_eq!(
            names(select_prunable(&all, 7, 2, &[Path::new("b2")], now)),
            ["b1", "b3"]
        );
        assert!(select_prunable(&all, 7, 10, &[], now).is_empty());
        assert!(select_prunable(&all, 30, 0, &[], now).is_empty());
    }
}
