//! Decoding one complete WAL line into the fields compaction and replay look at: `op`,
//! `tx_id` and, for retention, a numeric `timestamp` (as a whole-second [`Stamp`]). Every
//! other member (`changes`, `data`, ...) is validated and skipped; replay hashes a PREPARE's
//! whole line, so none of them needs decoding, and the line's bytes are never re-serialized.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer as _;

pub use crate::rules::retention::{NO_STAMP, Stamp, stamp_of};
use serde::de::{self, Deserialize, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The three operations of the two-phase-commit protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Intent with the transaction's payload (`changes`, `data`, ...).
    Prepare,
    /// Final status: the prepared data is applied.
    Commit,
    /// Final status: the prepared data is discarded.
    Abort,
}

impl Op {
    /// All ops, in the order status reports them.
    pub const ALL: [Op; 3] = [Op::Prepare, Op::Commit, Op::Abort];

    fn from_wire(s: &str) -> Option<Op> {
        Op::from_wire_bytes(s.as_bytes())
    }

    fn from_wire_bytes(s: &[u8]) -> Option<Op> {
        match s {
            b"PREPARE" => Some(Op::Prepare),
            b"COMMIT" => Some(Op::Commit),
            b"ABORT" => Some(Op::Abort),
            _ => None,
        }
    }

    /// The spelling used in the WAL (`"PREPARE"` ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Prepare => "PREPARE",
            Op::Commit => "COMMIT",
            Op::Abort => "ABORT",
        }
    }

    /// COMMIT and ABORT are final statuses; PREPARE is not.
    pub fn is_final(self) -> bool {
        !matches!(self, Op::Prepare)
    }
}

/// What a complete line is, as far as the compaction rules care.
#[derive(Debug)]
pub enum Entry<'a> {
    /// Only whitespace: dropped by compaction.
    Blank,
    /// A JSON object without a known string `op` and string `tx_id`: kept verbatim
    /// (forward compatibility with ops this version does not know).
    Unrecognized,
    /// A PREPARE/COMMIT/ABORT of one transaction.
    Tx(TxEntry<'a>),
}

/// A recognized protocol line. `tx_id` is the decoded JSON string (`"tx\u0041"` is `txA`).
#[derive(Debug)]
pub struct TxEntry<'a> {
    pub op: Op,
    pub tx_id: Cow<'a, str>,
    /// The numeric `timestamp` member, floored to whole seconds; [`NO_STAMP`] when absent,
    /// not a number, or in the far future.
    pub stamp: Stamp,
}

/// Why a complete line makes the WAL corrupt.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid UTF-8 at byte {valid_up_to} of the line")]
    Utf8 { valid_up_to: usize },
    #[error("a JSON {kind}, not an object")]
    NotObject { kind: &'static str },
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Bytes counted as blank. ASCII whitespace, as Python's `line.strip()` sees it for ASCII.
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace() || *b == 0x0b)
}

/// Decodes one complete line (without its `\n`; a trailing `\r` is fine).
pub fn decode(line: &[u8]) -> Result<Entry<'_>, DecodeError> {
    if is_blank(line) {
        return Ok(Entry::Blank);
    }
    let text = std::str::from_utf8(line).map_err(|e| DecodeError::Utf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    decode_text(text)
}

/// A decoded line with `tx_id` as bytes: what [`decode_raw`] returns.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEntry<'a> {
    Blank,
    Unrecognized,
    Tx {
        op: Op,
        /// The decoded JSON string's bytes (valid UTF-8: the decoder checked it).
        tx_id: Cow<'a, [u8]>,
        /// As [`TxEntry::stamp`].
        stamp: Stamp,
    },
}

impl<'a> From<Entry<'a>> for RawEntry<'a> {
    fn from(e: Entry<'a>) -> Self {
        match e {
            Entry::Blank => RawEntry::Blank,
            Entry::Unrecognized => RawEntry::Unrecognized,
            Entry::Tx(t) => RawEntry::Tx {
                op: t.op,
                tx_id: match t.tx_id {
                    Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                    Cow::Owned(s) => Cow::Owned(s.into_bytes()),
                },
                stamp: t.stamp,
            },
        }
    }
}

/// [`decode`] with `tx_id` as bytes, and a fast path for the common shape of lines: an
/// object whose strings have no escapes. The fast path only accepts lines it has fully
/// validated as JSON; anything else (escapes, errors, unusual values) goes through
/// [`decode`], so results and error messages are the same.
pub fn decode_raw(line: &[u8]) -> Result<RawEntry<'_>, DecodeError> {
    if is_blank(line) {
        return Ok(RawEntry::Blank);
    }
    if let Some(entry) = fast::object(line) {
        return Ok(entry);
    }
    let text = std::str::from_utf8(line).map_err(|e| DecodeError::Utf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    decode_text(text).map(RawEntry::from)
}

fn decode_text(text: &str) -> Result<Entry<'_>, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = (&mut de)
        .deserialize_map(FieldsVisitor)
        .map_err(|e| classify(e, text))?;
    de.end()?;
    Ok(fields.into_entry())
}

mod fast;

/// A type mismatch at the top level means valid JSON that is not an object: name its type.
fn classify(e: serde_json::Error, text: &str) -> DecodeError {
    if e.classify() != serde_json::error::Category::Data {
        return DecodeError::Json(e);
    }
    let kind = match text.trim_start().as_bytes().first() {
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    };
    DecodeError::NotObject { kind }
}

/// The fields we read; duplicate keys keep the last value, as Python's `json.loads` does.
#[derive(Default)]
struct Fields<'a> {
    op: Option<MaybeStr<'a>>,
    tx_id: Option<MaybeStr<'a>>,
    timestamp: Option<f64>,
}

impl<'a> Fields<'a> {
    fn into_entry(self) -> Entry<'a> {
        let op = match self.op {
            Some(MaybeStr::Str(s)) => Op::from_wire(&s),
            _ => None,
        };
        match (op, self.tx_id) {
            (Some(op), Some(MaybeStr::Str(tx_id))) => Entry::Tx(TxEntry {
                op,
                tx_id,
                stamp: self.timestamp.map_or(NO_STAMP, stamp_of),
            }),
            _ => Entry::Unrecognized,
        }
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Op => fields.op = Some(map.next_value()?),
                Key::TxId => fields.tx_id = Some(map.next_value()?),
                // Raw, so that a number serde_json cannot hold (`1e999`, valid JSON, which
                // Python reads as infinity) is not an error here: it is no stamp.
                Key::Timestamp => {
                    let raw = map.next_value::<&serde_json::value::RawValue>()?;
                    fields.timestamp = raw_stamp(raw.get());
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// An object key, matched after JSON unescaping without allocating for the common case.
enum Key {
    Op,
    TxId,
    Timestamp,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "op" => Key::Op,
            "tx_id" => Key::TxId,
            "timestamp" => Key::Timestamp,
            _ => Key::Other,
        })
    }
}

/// The seconds of a raw `timestamp` value when it is a number (`None` for anything else, or
/// a number `f64` cannot hold).
fn raw_stamp(raw: &str) -> Option<f64> {
    match raw.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => raw.parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// A value that is either a string (borrowed when it has no escapes) or anything else.
enum MaybeStr<'a> {
    Str(Cow<'a, str>),
    NotStr,
}

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MaybeStrVisitor)
    }
}

struct MaybeStrVisitor;

impl<'de> Visitor<'de> for MaybeStrVisitor {
    type Value = MaybeStr<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(MaybeStr::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(MaybeStr::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(MaybeStr::Str(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(MaybeStr::NotStr)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(MaybeStr::NotStr)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(MaybeStr::NotStr)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(MaybeStr::NotStr)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(MaybeStr::NotStr)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(MaybeStr::NotStr)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(MaybeStr::NotStr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(line: &str) -> (Op, String) {
        match decode(line.as_bytes()).unwrap() {
            Entry::Tx(t) => (t.op, t.tx_id.into_owned()),
            other => panic!("expected a tx entry, got {other:?}"),
        }
    }

    #[test]
    fn decodes_op_and_tx_id() {
        let (op, id) = tx(
            r#"{"op": "PREPARE", "tx_id": "tx_001", "changes": {"a": [1, 2]}, "timestamp": 1.5}"#,
        );
        assert_eq!((op, id.as_str()), (Op::Prepare, "tx_001"));
        assert_eq!(tx(r#"{"tx_id":"b","op":"COMMIT"}"#).0, Op::Commit);
        assert_eq!(
            tx("{\"op\":\"ABORT\",\"tx_id\":\"c\",\"reason\":\"x\"}\r").0,
            Op::Abort
        );
    }

    #[test]
    fn tx_ids_compare_decoded() {
        assert_eq!(tx(r#"{"op":"COMMIT","tx_id":"tx\u0041"}"#).1, "txA");
        assert_eq!(tx(r#"{"o\u0070":"COMMIT","tx_id":"a"}"#).0, Op::Commit);
    }

    #[test]
    fn duplicate_keys_keep_the_last_like_python() {
        assert_eq!(
            tx(r#"{"op":"PREPARE","tx_id":"a","op":"COMMIT"}"#).0,
            Op::Commit
        );
    }

    #[test]
    fn blank_lines() {
        for line in ["", " ", "\t\r", "  \x0c "] {
            assert!(
                matches!(decode(line.as_bytes()).unwrap(), Entry::Blank),
                "{line:?}"
            );
        }
    }

    #[test]
    fn unrecognized_objects_are_not_errors() {
        for line in [
            r#"{"op":"CHECKPOINT","tx_id":"a"}"#,
            r#"{"op":"COMMIT"}"#,
            r#"{"tx_id":"a"}"#,
            r#"{"op":1,"tx_id":"a"}"#,
            r#"{"op":"COMMIT","tx_id":7}"#,
            r#"{"op":"COMMIT","tx_id":null}"#,
            r#"{"op":["COMMIT"],"tx_id":"a"}"#,
            r#"{"op":"commit","tx_id":"a"}"#,
            r#"{}"#,
        ] {
            assert!(
                matches!(decode(line.as_bytes()).unwrap(), Entry::Unrecognized),
                "{line}"
            );
        }
    }

    #[test]
    fn non_objects_and_garbage_are_corrupt() {
        for (line, want) in [
            ("[1,2]", "array"),
            ("42", "number"),
            ("-1", "number"),
            ("\"s\"", "string"),
            ("true", "boolean"),
            ("null", "null"),
        ] {
            match decode(line.as_bytes()) {
                Err(DecodeError::NotObject { kind }) => assert_eq!(kind, want),
                other => panic!("{line}: {other:?}"),
            }
        }
        for line in [
            r#"{"op":"COMMIT""#,
            r#"{"op":"COMMIT"} x"#,
            "{'op': 1}",
            "xyz",
            "{} {}",
        ] {
            assert!(
                matches!(decode(line.as_bytes()), Err(DecodeError::Json(_))),
                "{line}"
            );
        }
        assert!(matches!(
            decode(b"{\"op\":\"COMMIT\",\"tx_id\":\"\xff\"}"),
            Err(DecodeError::Utf8 { valid_up_to: 24 })
        ));
    }

    /// The word-at-a-time string scan, at every position of every byte class within and
    /// across words: a quote, a backslash, a control byte, and UTF-8 valid or not.
    #[test]
    fn raw_decoding_matches_decode_for_strings_across_words() {
        let specials: [&[u8]; 7] = [
            b"\"",
            b"\\n",
            b"\x01",
            b"\x1f",
            "é".as_bytes(),
            b"\xff",
            b"\xc3",
        ];
        for len in 0..20 {
            for at in 0..=len {
                for special in specials {
                    let mut id = vec![b'x'; len];
                    id.splice(at..at, special.iter().copied());
                    let mut line = br#"{"op":"COMMIT","tx_id":""#.to_vec();
                    line.extend_from_slice(&id);
                    line.extend_from_slice(br#"","k":"v"}"#);
                    let slow = decode(&line).map(RawEntry::from).map_err(|e| e.to_string());
                    let fast = decode_raw(&line).map_err(|e| e.to_string());
                    assert_eq!(slow, fast, "{}", String::from_utf8_lossy(&line));
                }
            }
        }
    }

    #[test]
    fn raw_decoding_matches_decode() {
        for line in [
            r#"{"op": "PREPARE", "tx_id": "tx_001", "data": {"a": [1, 2.5e-3, true, null]}, "timestamp": 1.5}"#,
            r#"{"op":"COMMIT","tx_id":"b","op":"ABORT"}"#,
            r#" { "tx_id" : "c" , "op" : "ABORT" } "#,
            "{\"op\":\"COMMIT\",\"tx_id\":\"d\"}\r",
            r#"{"op":"COMMIT","tx_id":"tx\u0041"}"#,
            r#"{"op":"COMMIT","tx_id":7}"#,
            r#"{"op":"COMMIT","tx_id":"a","x":01}"#,
            r#"{"op":"COMMIT","tx_id":"a","x":[1,]}"#,
            r#"{"op":"COMMIT","tx_id":"a",}"#,
            r#"{"op":"COMMIT","tx_id":"a"} x"#,
            r#"{"op":"COMMIT","tx_id":"a","data":-}"#,
            r#"{"op":"PREPARE","tx_id":"a","data": "x" }"#,
            r#"{}"#,
            r#"[1]"#,
            "{\"op\":\"COMMIT\",\"tx_id\":\"a\tb\"}",
        ] {
            let slow = decode(line.as_bytes())
                .map(RawEntry::from)
                .map_err(|e| e.to_string());
            let fast = decode_raw(line.as_bytes()).map_err(|e| e.to_string());
            assert_eq!(slow, fast, "{line}");
        }
        assert_eq!(
            fast::object(br#"{"op":"PREPARE","tx_id":"a","data": {"v": [1]} }"#),
            Some(RawEntry::Tx {
                op: Op::Prepare,
                tx_id: Cow::Borrowed(b"a"),
                stamp: NO_STAMP,
            })
        );
    }

    #[test]
    fn timestamps_are_whole_seconds_by_either_decoder_and_only_numbers_count() {
        for (line, want) in [
            (
                r#"{"op":"COMMIT","tx_id":"a","timestamp":1732780000.75}"#,
                1_732_780_000,
            ),
            (
                r#"{"op":"COMMIT","tx_id":"a","timestamp":1732780000}"#,
                1_732_780_000,
            ),
            (
                r#"{"op":"COMMIT","tx_id":"a","timestamp":1.7e9}"#,
                1_700_000_000,
            ),
            (
                r#"{"op":"COMMIT","tx_id":"a","timestamp":"1732780000"}"#,
                NO_STAMP,
            ),
            (r#"{"op":"COMMIT","tx_id":"a","timestamp":null}"#, NO_STAMP),
            (r#"{"op":"COMMIT","tx_id":"a","timestamp":[1]}"#, NO_STAMP),
            (
                r#"{"op":"COMMIT","tx_id":"a","timestamp":5,"timestamp":7}"#,
                7,
            ),
            (r#"{"op":"COMMIT","tx_id":"a\u0041","timestamp":9.5}"#, 9),
            (r#"{"op":"COMMIT","tx_id":"a"}"#, NO_STAMP),
            // Valid JSON (Python reads infinity): no stamp, and not a corrupt line.
            (r#"{"op":"COMMIT","tx_id":"a","timestamp":1e999}"#, NO_STAMP),
            (
                r#"{"op":"COMMIT","tx_id":"a","timestamp":-1e999}"#,
                NO_STAMP,
            ),
        ] {
            let fast = decode_raw(line.as_bytes()).unwrap();
            let slow = RawEntry::from(decode(line.as_bytes()).unwrap());
            for e in [fast, slow] {
                let RawEntry::Tx { stamp, .. } = e else {
                    panic!("{line}")
                };
                assert_eq!(stamp, want, "{line}");
            }
        }
    }
}
