//! `[wal.offsite]`: validation (the URL template and the endpoint, with the key path of
//! each error) and its rendering back to TOML. Every value but `url` has a default.

use super::schema::RawOffsite;
use super::types::OffsitePolicy;
use super::validate::{Section, non_empty};
use crate::offsite::target::{Target, check_endpoint};

/// What `upload` may list.
const UPLOAD_KINDS: &[&str] = &["backups", "archives"];
/// Stand-ins for `{host}` and `{wal}` while checking a template: the real values are plain
/// names too, so a template valid with these is valid on any host.
const CHECK_HOST: &str = "host";
const CHECK_WAL: &str = "wal";

/// Validates `[wal.offsite]`; errors go to the section with their key paths.
pub(crate) fn offsite(raw: RawOffsite, s: &mut Section) -> OffsitePolicy {
    let url = non_empty(raw.url).unwrap_or_default();
    if url.is_empty() {
        s.push(
            "url",
            "is required (s3://bucket/prefix/; {host} and {wal} may appear in it)",
        );
    } else if let Err(why) = Target::resolve(&url, CHECK_HOST, CHECK_WAL) {
        s.push("url", why);
    }
    let allow_http = raw.allow_http.unwrap_or(false);
    let endpoint = non_empty(raw.endpoint);
    if let Some(e) = &endpoint
        && let Err(why) = check_endpoint(e, allow_http)
    {
        s.push("endpoint", why);
    }
    let upload = raw
        .upload
        .unwrap_or_else(|| UPLOAD_KINDS.iter().map(|k| k.to_string()).collect());
    for (i, kind) in upload.iter().enumerate() {
        if !UPLOAD_KINDS.contains(&kind.as_str()) {
            s.push(
                &format!("upload[{i}]"),
                format!(
                    "unknown {kind:?}; expected one of {}",
                    UPLOAD_KINDS.join(", ")
                ),
            );
        }
    }
    OffsitePolicy {
        url,
        endpoint,
        allow_http,
        upload_backups: upload.iter().any(|k| k == "backups"),
        upload_archives: upload.iter().any(|k| k == "archives"),
        delete_local_after_upload: raw.delete_local_after_upload.unwrap_or(false),
    }
}

/// Every key, defaults filled in, so `check-policy` shows what is in force.
pub(crate) fn render(o: &OffsitePolicy) -> RawOffsite {
    let mut upload = Vec::new();
    if o.upload_backups {
        upload.push("backups".to_string());
    }
    if o.upload_archives {
        upload.push("archives".to_string());
    }
    RawOffsite {
        url: Some(o.url.clone()),
        endpoint: Some(o.endpoint.clone().unwrap_or_default()),
        allow_http: Some(o.allow_http),
        upload: Some(upload),
        delete_local_after_upload: Some(o.delete_local_after_upload),
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::{ParseEnv, parse};

    fn parse_offsite(table: &str) -> Result<crate::policy::Policy, String> {
        let text =
            format!("[[wal]]\nname = \"w\"\npath = \"/srv/wal.log\"\n[wal.offsite]\n{table}");
        let env = ParseEnv::bare("/", chrono::Utc::now());
        parse(&text, "test", &env).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_in_and_the_policy_renders_back_equal() {
        let p = parse_offsite("url = \"s3://bucket/{host}/{wal}/\"\n").unwrap();
        let o = p.wals[0].offsite.clone().unwrap();
        assert_eq!(o.endpoint, None);
        assert!(o.upload_backups && o.upload_archives);
        assert!(!o.allow_http && !o.delete_local_after_upload);
        let env = ParseEnv::bare("/", chrono::Utc::now());
        let again = parse(&p.to_toml(), "rendered", &env).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn every_error_has_its_key_path() {
        let e = parse_offsite(
            "url = \"s3://b/{nope}\"\nendpoint = \"http://127.0.0.1:9000\"\nupload = [\"backups\", \"logs\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("wal[0].offsite.url"), "{e}");
        assert!(
            e.contains("wal[0].offsite.endpoint") && e.contains("allow_http"),
            "{e}"
        );
        assert!(e.contains("wal[0].offsite.upload[1]"), "{e}");
        let e = parse_offsite("endpoint = \"\"\n").unwrap_err();
        assert!(e.contains("wal[0].offsite.url: is required"), "{e}");
        let e = parse_offsite("url = \"s3://b/\"\nsecret = \"x\"\n").unwrap_err();
        assert!(e.contains("wal[0].offsite.secret"), "{e}");
    }
}
