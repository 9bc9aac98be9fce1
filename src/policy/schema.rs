//! The policy file as written: serde structs mirroring the TOML keys one for one.
//!
//! Every field is optional here so that "absent" can be told apart from an
//! explicit value; defaults and range checks live in `validate`. Enumerated
//! keywords stay strings so validation can name the accepted values. The same
//! structs serialize the effective policy for `check-policy`.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, forward_to_deserialize_any};

/// The whole document, used only to serialize the effective policy.
#[derive(Debug, Default, Serialize)]
pub(crate) struct RawPolicy {
    pub daemon: RawDaemon,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wal: Vec<RawWal>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alert: Vec<RawAlert>,
}

/// `[daemon]`.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_textfile: Option<String>,
}

/// One `[[wal]]` entry. The sub-tables are deserialized separately (see `document`) so an
/// error in one does not hide errors in the others.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_lines: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_timeout_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_hard_links: Option<bool>,
    #[serde(default)]
    pub triggers: RawTriggers,
    #[serde(default)]
    pub backups: RawBackups,
    #[serde(default)]
    pub hooks: RawHooks,
    /// Absent (not merely empty) means retention off: the effective policy then prints no
    /// `[wal.retention]` at all, since no value of `expire_after_secs` spells "off".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RawRetention>,
    /// Absent means nothing leaves the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<RawOffsite>,
}

/// `[wal.triggers]`.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTriggers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size_mb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_commits_since_compaction: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_reclaimable_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_disk_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_reclaimable_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval_secs: Option<i64>,
}

/// `[wal.backups]`.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackups {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
}

/// `[wal.hooks]`.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHooks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_compact: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_compact: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Vec<String>>,
}

/// `[wal.retention]`: opt-in expiry of old finished transactions into an archive.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_in_flight_after_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_keep_days: Option<i64>,
}

/// `[wal.offsite]`: copies of backups and archives in object storage.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOffsite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_local_after_upload: Option<bool>,
}

/// One `[[alert]]` entry.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<String>,
}

/// The key names a serde struct accepts, read from its derived `Deserialize`
/// so the unknown-key message can never drift from the structs above.
pub(crate) fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut captured = None;
    // The capture always "fails" once it has seen the field list; that is expected.
    let _ = T::deserialize(FieldCapture(&mut captured));
    captured.unwrap_or(&[])
}

/// A deserializer that records the field list serde passes to `deserialize_struct`.
struct FieldCapture<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldCapture<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only structs expose field names"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("field names captured"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_come_from_the_derive() {
        assert_eq!(
            field_names::<RawBackups>(),
            &["keep_days", "keep_last", "compress"]
        );
        assert!(field_names::<RawWal>().contains(&"triggers"));
        assert_eq!(field_names::<RawAlert>().len(), 9);
    }

    #[test]
    fn field_names_of_a_non_struct_is_empty() {
        assert!(field_names::<String>().is_empty());
    }
}
