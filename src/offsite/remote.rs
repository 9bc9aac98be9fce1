//! The server's side: what is there (listing with our digests), pruning by the policy's
//! ages like the local files, and downloads checked against the digest stored at upload.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::OffsiteError;
use super::queue::Kind;
use super::target::Target;
use super::upload::{DIGEST_KEY, hex, remote_meta};
use crate::pipeline::{archive, backup};
use crate::policy::BackupPolicy;

/// Downloads are created with this mode: they hold transaction data.
const DOWNLOAD_MODE: u32 = 0o600;

/// One of the WAL's objects on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteObject {
    pub name: String,
    pub url: String,
    pub kind: Kind,
    pub bytes: u64,
    /// When the backup or archive was made (from its name).
    pub taken_at: DateTime<Utc>,
    /// Our digest from its metadata (`None`: not listed with digests, or not ours).
    pub sha256: Option<String>,
}

/// The WAL's backups and archives under `target`, oldest first; other objects are ignored.
/// With `digests`, one HEAD per object reads its sha256 metadata (listings do not carry it).
pub async fn list(
    store: &Arc<dyn ObjectStore>,
    target: &Target,
    wal: &Path,
    digests: bool,
) -> Result<Vec<RemoteObject>, OffsiteError> {
    let prefix = (!target.prefix.is_empty()).then(|| Key::from(target.prefix.as_str()));
    let mut stream = store.list(prefix.as_ref());
    let mut found = Vec::new();
    while let Some(meta) = stream.next().await {
        let meta = meta.map_err(|e| OffsiteError::remote("list", &target.to_string(), &e))?;
        let key = meta.location.to_string();
        let Some(name) = key
            .strip_prefix(&target.prefix)
            .filter(|n| !n.contains('/'))
        else {
            continue;
        };
        let Some((kind, taken_at)) = classify(wal, name) else {
            continue;
        };
        found.push(RemoteObject {
            name: name.to_string(),
            url: target.url_of(name),
            kind,
            bytes: meta.size,
            taken_at,
            sha256: None,
        });
    }
    if digests {
        for o in &mut found {
            let key = Key::from(target.key(&o.name));
            o.sha256 = remote_meta(store, &key, &o.url).await?.1;
        }
    }
    found.sort_by(|a, b| (a.taken_at, &a.name).cmp(&(b.taken_at, &b.name)));
    Ok(found)
}

/// A backup or archive of `wal` by its file name, with when it was made.
pub fn classify(wal: &Path, name: &str) -> Option<(Kind, DateTime<Utc>)> {
    if let Some((t, _)) = backup::parse_backup_name(wal, name) {
        return Some((Kind::Backup, t));
    }
    archive::parse_archive_name(wal, name).map(|t| (Kind::Archive, t))
}

/// Which remote objects to delete, by the same pure rules as local files: backups older
/// than `keep_days` beyond the newest `keep_last`; archives older than `archive_keep_days`
/// (0 or `None`: never), never the newest.
pub fn select_prunable(
    objects: &[RemoteObject],
    backups: BackupPolicy,
    archive_keep_days: Option<u32>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let as_path = |o: &RemoteObject| PathBuf::from(&o.name);
    let remote_backups: Vec<backup::BackupFile> = objects
        .iter()
        .filter(|o| o.kind == Kind::Backup)
        .map(|o| backup::BackupFile {
            path: as_path(o),
            taken_at: o.taken_at,
            bytes: o.bytes,
            compressed: o.name.ends_with(&format!(".{}", backup::COMPRESSED_EXT)),
        })
        .collect();
    let remote_archives: Vec<archive::ArchiveFile> = objects
        .iter()
        .filter(|o| o.kind == Kind::Archive)
        .map(|o| archive::ArchiveFile {
            path: as_path(o),
            taken_at: o.taken_at,
            bytes: o.bytes,
        })
        .collect();
    let mut doomed = backup::select_prunable(
        &remote_backups,
        backups.keep_days,
        backups.keep_last,
        &[],
        now,
    );
    if let Some(days) = archive_keep_days {
        doomed.extend(archive::select_prunable(&remote_archives, days, now));
    }
    doomed
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// Deletes the remote objects [`select_prunable`] picks; returns their names.
pub async fn prune(
    store: &Arc<dyn ObjectStore>,
    target: &Target,
    wal: &Path,
    backups: BackupPolicy,
    archive_keep_days: Option<u32>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, OffsiteError> {
    let objects = list(store, target, wal, false).await?;
    let doomed = select_prunable(&objects, backups, archive_keep_days, now);
    for name in &doomed {
        store
            .delete(&Key::from(target.key(name)))
            .await
            .map_err(|e| OffsiteError::remote("delete", &target.url_of(name), &e))?;
    }
    Ok(doomed)
}

/// A download whose bytes hash to the digest stored with the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// Downloads `key` (shown as `url`) into a new file `dest` (created `0600`, never over an
/// existing one), hashing as it writes, and keeps it only if its SHA-256 equals the
/// object's `sha256` metadata: a copy changed on the server, or one we did not upload, is
/// removed and refused.
pub async fn download(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    url: &str,
    dest: &Path,
) -> Result<Downloaded, OffsiteError> {
    let got = store
        .get(&Key::from(key))
        .await
        .map_err(|e| OffsiteError::remote("download", url, &e))?;
    let expected = got
        .attributes
        .get(&Attribute::Metadata(DIGEST_KEY.into()))
        .map(|v| v.to_string());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DOWNLOAD_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dest)
        .map_err(OffsiteError::local("create", dest))?;
    let result = async {
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| OffsiteError::remote("download", url, &e))?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            file.write_all(&chunk)
                .map_err(OffsiteError::local("write", dest))?;
        }
        file.sync_all()
            .map_err(OffsiteError::local("fsync", dest))?;
        let actual = hex(&hasher.finalize());
        match expected {
            None => Err(OffsiteError::NoDigest {
                url: url.to_string(),
            }),
            Some(e) if e != actual => Err(OffsiteError::Corrupt {
                url: url.to_string(),
                expected: e,
                actual,
            }),
            Some(_) => Ok(Downloaded {
                path: dest.to_path_buf(),
                bytes,
                sha256: actual,
            }),
        }
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, kind: Kind, t: &str) -> RemoteObject {
        RemoteObject {
            name: name.into(),
            url: format!("s3://b/{name}"),
            kind,
            bytes: 1,
            taken_at: t.parse().unwrap(),
            sha256: None,
        }
    }

    #[test]
    fn remote_pruning_follows_the_local_rules() {
        let objects = [
            obj("wal_backup_1.log", Kind::Backup, "2026-01-01T00:00:00Z"),
            obj("wal_backup_2.log", Kind::Backup, "2026-01-02T00:00:00Z"),
            obj("wal_backup_3.log", Kind::Backup, "2026-01-20T00:00:00Z"),
            obj(
                "wal_archive_1.log.zst",
                Kind::Archive,
                "2026-01-01T00:00:00Z",
            ),
            obj(
                "wal_archive_2.log.zst",
                Kind::Archive,
                "2026-01-02T00:00:00Z",
            ),
        ];
        let now = "2026-01-21T00:00:00Z".parse().unwrap();
        let b = |keep_days, keep_last| BackupPolicy {
            keep_days,
            keep_last,
            compress: false,
        };
        assert_eq!(
            select_prunable(&objects, b(7, 1), None, now),
            ["wal_backup_1.log", "wal_backup_2.log"]
        );
        assert_eq!(
            select_prunable(&objects, b(7, 2), Some(7), now),
            ["wal_backup_1.log", "wal_archive_1.log.zst"],
            "keep_last holds the second; the newest archive is never pruned"
        );
        assert!(select_prunable(&objects, b(30, 1), Some(0), now).is_empty());
    }

    #[test]
    fn names_are_classified_by_the_local_naming() {
        let wal = Path::new("/srv/wal.log");
        assert_eq!(
            classify(wal, "wal_backup_20260101_000000.log").map(|c| c.0),
            Some(Kind::Backup)
        );
        assert_eq!(
            classify(wal, "wal_archive_20260101_000000.log.zst").map(|c| c.0),
            Some(Kind::Archive)
        );
        assert_eq!(classify(wal, "other.log"), None);
    }
}
