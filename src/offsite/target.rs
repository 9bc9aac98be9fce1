//! Where copies go: the policy's URL template resolved to a bucket and a key prefix, and the
//! checks `check-policy` runs on it and on the endpoint. Pure: no I/O, no clock.

use std::fmt;

/// URL schemes accepted: object_store's spelling of S3 (`s3a` is Hadoop's alias for it).
const SCHEMES: &[&str] = &["s3", "s3a"];
/// Placeholders the template may hold, replaced before the URL is parsed.
const HOST_PLACEHOLDER: &str = "{host}";
const WAL_PLACEHOLDER: &str = "{wal}";

/// A resolved destination: a bucket and a key prefix (empty or ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bucket: String,
    pub prefix: String,
}

impl Target {
    /// Resolves `template` for this host and WAL name. The error says what is wrong, for
    /// `check-policy` (key path added by the caller) and the daemon's log.
    pub fn resolve(template: &str, host: &str, wal: &str) -> Result<Target, String> {
        let text = template
            .replace(HOST_PLACEHOLDER, host)
            .replace(WAL_PLACEHOLDER, wal);
        if let Some(at) = text.find(['{', '}']) {
            return Err(format!(
                "unknown placeholder near byte {at} of {template:?}; only {HOST_PLACEHOLDER} and {WAL_PLACEHOLDER} are replaced"
            ));
        }
        let (bucket, key) = parse_object_url(&text)?;
        let prefix = match key.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Ok(Target { bucket, prefix })
    }

    /// The object key of a local file named `file_name`.
    pub fn key(&self, file_name: &str) -> String {
        format!("{}{file_name}", self.prefix)
    }

    /// The `s3://` URL of the object of `file_name`, as `restore` takes it.
    pub fn url_of(&self, file_name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(file_name))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// `s3://bucket/key` → (bucket, key); the key may be empty. Refuses credentials in the URL
/// (they belong in the environment, never in a file others may read), queries and fragments.
pub fn parse_object_url(text: &str) -> Result<(String, String), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e}): {text:?}"))?;
    if !SCHEMES.contains(&url.scheme()) {
        return Err(format!(
            "scheme {:?} is not supported; use s3://bucket/prefix/ (S3 or an S3-compatible server, with `endpoint`)",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the daemon's environment".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("no query or fragment expected in {text:?}"));
    }
    let bucket = url.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        return Err(format!("no bucket in {text:?} (s3://bucket/prefix/)"));
    }
    let key = url.path().trim_start_matches('/');
    let key = percent_decode(key);
    Ok((bucket, key))
}

/// `%XX` sequences decoded (keys with spaces or non-ASCII come percent-encoded in URLs).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok();
        match (bytes[i], hex().and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `endpoint`: empty is the provider's own; else an http(s) URL, plain http only with
/// `allow_http` (credentials and data would cross the network in clear text).
pub fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<(), String> {
    if endpoint.is_empty() {
        return Ok(());
    }
    let url = url::Url::parse(endpoint).map_err(|e| format!("not a URL ({e}): {endpoint:?}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(format!(
            "{endpoint:?} is plain http: set allow_http = true to allow it (data and signed requests cross the network unencrypted)"
        )),
        other => Err(format!(
            "scheme {other:?} is not supported; use http:// or https://"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_resolve_and_the_prefix_ends_in_a_slash() {
        let t = Target::resolve("s3://wal-copies/{host}/{wal}", "db1", "orders").unwrap();
        assert_eq!(t.bucket, "wal-copies");
        assert_eq!(t.prefix, "db1/orders/");
        assert_eq!(t.key("wal_backup_x.log"), "db1/orders/wal_backup_x.log");
        assert_eq!(
            t.url_of("a.log"),
            "s3://wal-copies/db1/orders/a.log".to_string()
        );
        let bare = Target::resolve("s3://bucket", "h", "w").unwrap();
        assert_eq!(bare.prefix, "");
        assert_eq!(bare.to_string(), "s3://bucket/");
    }

    #[test]
    fn bad_urls_say_why() {
        let err = |u: &str| Target::resolve(u, "h", "w").unwrap_err();
        assert!(err("s3://b/{nope}/").contains("unknown placeholder"));
        assert!(err("gs://b/p/").contains("not supported"));
        assert!(err("s3:///p/").contains("no bucket"));
        assert!(err("s3://AKIA:secret@b/p/").contains("credentials do not belong"));
        assert!(err("bucket/prefix").contains("not a URL"));
        assert!(err("s3://b/p?x=1").contains("no query"));
    }

    #[test]
    fn object_urls_decode_their_key() {
        assert_eq!(
            parse_object_url("s3://b/a%20b/c.log").unwrap(),
            ("b".to_string(), "a b/c.log".to_string())
        );
    }

    #[test]
    fn endpoints_need_allow_http_for_plain_http() {
        assert!(check_endpoint("", false).is_ok());
        assert!(check_endpoint("https://s3.example.com", false).is_ok());
        assert!(check_endpoint("http://127.0.0.1:9000", true).is_ok());
        assert!(
            check_endpoint("http://127.0.0.1:9000", false)
                .unwrap_err()
                .contains("allow_http")
        );
        assert!(check_endpoint("ftp://x", true).is_err());
    }
}
