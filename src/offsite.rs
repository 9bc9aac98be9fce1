//! Off-host copies: each new backup and archive uploaded to S3-compatible object storage,
//! verified, with a pending queue that survives restarts (issue 18).
//!
//! Backups and archives live on the WAL's disk, so the failure that makes them needed takes
//! them too. After a successful run the daemon queues what the run made; an uploader task
//! per WAL (`daemon::offsite`) empties the queue in the background, never delaying
//! compaction. Rooms, pure first:
//! - [`target`]: the policy's URL template (`{host}`, `{wal}`) → bucket and key prefix; the
//!   endpoint's checks. No I/O.
//! - [`queue`]: the pending list (and the recently confirmed), its backoff schedule (pure),
//!   and its file beside the daemon's state, changed under a lock.
//! - [`store`]: the object store client from the environment's credentials.
//! - [`upload`]: one file up (multipart when large) with our SHA-256 as object metadata,
//!   then confirmed by re-reading the object's size and metadata.
//! - [`remote`]: listing, pruning by the policy's ages, and downloads checked by digest.
//! - [`push`]: one pass over the queue: upload what is due, confirm, record, prune.
//! - [`cli`]: `offsite list`, `offsite push`, `restore WAL s3://...`.
//!
//! Credentials never pass through here as values we format: the client reads them from the
//! environment, errors are [`redact`]ed before they are logged or stored, and the client's
//! `Debug` (which may print them) is never logged.

pub mod cli;
pub mod error;
pub mod push;
pub mod queue;
pub mod remote;
pub mod store;
pub mod target;
pub mod upload;

pub use error::OffsiteError;

/// Environment variables whose values are secrets (or identify one) and must never appear
/// in a log line, a state file or a report.
pub const SECRET_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// `text` with every secret from [`SECRET_VARS`] replaced by `[redacted]`. Servers echo the
/// access key id in error bodies (S3's `SignatureDoesNotMatch` does), and error chains can
/// quote request headers; everything we log or store from the object store passes here.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for var in SECRET_VARS {
        if let Ok(value) = std::env::var(var)
            && value.len() >= MIN_SECRET_LEN
        {
            out = out.replace(&value, "[redacted]");
        }
    }
    out
}

/// Shorter values are not real credentials, and replacing them would mangle ordinary text.
const MIN_SECRET_LEN: usize = 4;

/// This host's name, for `{host}` in the URL template ("localhost" if it cannot be read).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// An error and its sources on one line, redacted: object_store's top-level message often
/// hides the cause (connection refused, the server's error code) in its sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    redact(&tidy_error_body(&text))
}

/// An S3 error body quoted in a message (`<?xml ...><Error><Code>C</Code><Message>M</Message>
/// ...</Error>`) shortened to `C: M`, on one line: log lines stay readable, and the request
/// ids and host ids a server adds are left out.
fn tidy_error_body(text: &str) -> String {
    let field = |body: &str, tag: &str| -> Option<String> {
        let open = format!("<{tag}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{tag}>"))? + start;
        Some(body[start..end].to_string())
    };
    let mut out = text.to_string();
    if let Some(start) = out.find("<?xml").or_else(|| out.find("<Error>")) {
        let end = out[start..]
            .find("</Error>")
            .map_or(out.len(), |e| start + e + "</Error>".len());
        let body = &out[start..end];
        let short = match (field(body, "Code"), field(body, "Message")) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            _ => body.to_string(),
        };
        out.replace_range(start..end, &short);
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_bodies_shrink_to_code_and_message_on_one_line() {
        let text = "PUT http://h/b/k - 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The signature does not match.</Message><RequestId>R</RequestId></Error> (hint)";
        assert_eq!(
            tidy_error_body(text),
            "PUT http://h/b/k - 403 Forbidden: SignatureDoesNotMatch: The signature does not match. (hint)"
        );
        assert_eq!(tidy_error_body("plain\n  text"), "plain text");
    }
}
