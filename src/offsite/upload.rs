//! One local file up: our SHA-256 stored as object metadata (`x-amz-meta-sha256`), in one
//! request when small, else a multipart upload part by part; then confirmed by re-reading
//! the object's size and metadata from the server. Only a confirmed copy counts.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
};
use sha2::{Digest, Sha256};

use super::OffsiteError;

/// The metadata key our digest is stored under (S3: `x-amz-meta-sha256`).
pub const DIGEST_KEY: &str = "sha256";
/// Part size of a multipart upload: above S3's 5 MiB minimum, small enough that a part
/// retried after a dropped connection costs little. Files up to this go in one request.
pub const PART_BYTES: usize = 8 << 20;
/// Read size while hashing.
const HASH_CHUNK: usize = 1 << 20;

/// What was uploaded and confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub url: String,
    pub bytes: u64,
    pub sha256: String,
    /// Parts sent (1 for a single request).
    pub parts: u64,
}

/// SHA-256 (hex) and length of a file. Blocking.
pub fn digest_file(path: &Path) -> Result<(String, u64), OffsiteError> {
    let mut f = File::open(path).map_err(OffsiteError::local("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut len = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(OffsiteError::local("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex(&hasher.finalize()), len))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Uploads `local` to `key` (shown as `url`) and confirms it. `part_bytes` is
/// [`PART_BYTES`] except in tests.
pub async fn upload(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    url: &str,
    local: &Path,
    part_bytes: usize,
) -> Result<Uploaded, OffsiteError> {
    let path = local.to_path_buf();
    let (sha256, bytes) = blocking(move || digest_file(&path)).await?;
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(DIGEST_KEY.into()),
        sha256.clone().into(),
    );
    let key = Key::from(key);
    let file = Arc::new(File::open(local).map_err(OffsiteError::local("open", local))?);
    let parts = if bytes <= part_bytes as u64 {
        let data = read_at(&file, local, 0, bytes as usize).await?;
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        store
            .put_opts(&key, PutPayload::from(data), opts)
            .await
            .map_err(|e| OffsiteError::remote("upload", url, &e))?;
        1
    } else {
        multipart(
            store,
            &key,
            url,
            (&file, local),
            bytes,
            part_bytes,
            attributes,
        )
        .await?
    };
    confirm(store, &key, url, bytes, &sha256).await?;
    Ok(Uploaded {
        url: url.to_string(),
        bytes,
        sha256,
        parts,
    })
}

/// Sends the file part by part, in order, one part in flight (the daemon's uploads are
/// background work: they should not saturate the link). A failed part aborts the upload on
/// the server, best effort: a server that is down keeps the parts until it drops them
/// (moto on restart; S3 by the bucket's `AbortIncompleteMultipartUpload` lifecycle rule).
async fn multipart(
    store: &Arc<dyn ObjectStore>,
    key: &Key,
    url: &str,
    (file, local): (&Arc<File>, &Path),
    bytes: u64,
    part_bytes: usize,
    attributes: Attributes,
) -> Result<u64, OffsiteError> {
    let opts = PutMultipartOptions {
        attributes,
        ..PutMultipartOptions::default()
    };
    let mut upload = store
        .put_multipart_opts(key, opts)
        .await
        .map_err(|e| OffsiteError::remote("start multipart upload", url, &e))?;
    let mut offset = 0u64;
    let mut parts = 0u64;
    while offset < bytes {
        let len = (bytes - offset).min(part_bytes as u64) as usize;
        let sent = match read_at(file, local, offset, len).await {
            Ok(data) => upload
                .put_part(PutPayload::from(data))
                .await
                .map_err(|e| OffsiteError::remote("upload part", url, &e)),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            let _ = upload.abort().await;
            return Err(e);
        }
        offset += len as u64;
        parts += 1;
        between_parts().await;
    }
    if let Err(e) = upload.complete().await {
        let _ = upload.abort().await;
        return Err(OffsiteError::remote("complete multipart upload", url, &e));
    }
    Ok(parts)
}

/// The fault-injection point between two parts (`offsite::upload::between_parts`, e.g.
/// `sleep(3000)` for the test that stops the server mid-upload); nothing without the
/// `failpoints` feature.
async fn between_parts() {
    #[cfg(feature = "failpoints")]
    tokio::task::spawn_blocking(|| fail::fail_point!("offsite::upload::between_parts"))
        .await
        .ok();
}

/// Re-reads the object's size and metadata (a HEAD; object_store's `head` drops user
/// metadata, `get_opts` with `head` keeps it as attributes) and compares them with ours.
pub async fn confirm(
    store: &Arc<dyn ObjectStore>,
    key: &Key,
    url: &str,
    bytes: u64,
    sha256: &str,
) -> Result<(), OffsiteError> {
    let (size, digest) = remote_meta(store, key, url).await?;
    if size != bytes {
        return Err(OffsiteError::Unconfirmed {
            url: url.to_string(),
            why: format!("the object has {size} bytes, the file {bytes}"),
        });
    }
    match digest {
        Some(d) if d == sha256 => Ok(()),
        Some(d) => Err(OffsiteError::Unconfirmed {
            url: url.to_string(),
            why: format!("its sha256 metadata is {d}, the file's digest {sha256}"),
        }),
        None => Err(OffsiteError::Unconfirmed {
            url: url.to_string(),
            why: "the object has no sha256 metadata".into(),
        }),
    }
}

/// The object's size and our digest from its metadata, if it has one.
pub async fn remote_meta(
    store: &Arc<dyn ObjectStore>,
    key: &Key,
    url: &str,
) -> Result<(u64, Option<String>), OffsiteError> {
    let head = store
        .get_opts(key, GetOptions::new().with_head(true))
        .await
        .map_err(|e| OffsiteError::remote("read back", url, &e))?;
    let digest = head
        .attributes
        .get(&Attribute::Metadata(DIGEST_KEY.into()))
        .map(|v| v.to_string());
    Ok((head.meta.size, digest))
}

/// Reads `len` bytes at `offset` on the blocking pool.
async fn read_at(
    file: &Arc<File>,
    local: &Path,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, OffsiteError> {
    let (file, path): (Arc<File>, PathBuf) = (Arc::clone(file), local.to_path_buf());
    blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)
            .map_err(OffsiteError::local("read", &path))?;
        Ok(buf)
    })
    .await
}

/// Runs blocking file work off the async runtime (the daemon's is single-threaded).
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OffsiteError> + Send + 'static,
) -> Result<T, OffsiteError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(OffsiteError::Local {
            op: "run",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}
