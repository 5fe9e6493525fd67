//! The records that carry Remodel's changes through PostgreSQL's WAL.
//!
//! Every write made through Remodel emits, in the same transaction as its rows, one
//! transactional logical message per change (`pg_logical_emit_message(true, prefix, body)`):
//! it is decoded by every process's [pump](super::pump) only if and when the transaction
//! commits, between the transaction's Begin and Commit, in commit order. Two kinds:
//!
//! - prefix [`CHANGE_PREFIX`] (`remodel.v1`): a [`ChangeRecord`], one document change: table,
//!   encoded primary key, document before and after (JSON, or absent for an insert/delete);
//! - prefix [`DDL_PREFIX`] (`remodel.ddl.v1`): a [`DdlRecord`], a table or index created or
//!   dropped, so that every process learns of DDL in commit order with the writes around it.
//!
//! # Format (version 1)
//!
//! Binary, compact, self-delimiting; lengths are unsigned LEB128 varints (minimal form):
//!
//! ```text
//! change: 0x01 | len table | table (UTF-8) | len key | key | flags | [len old | old] [len new | new]
//!         flags: bit 0 = old present, bit 1 = new present, other bits 0; old/new are JSON text
//! ddl:    0x01 | kind | len table | table (UTF-8) | kind's fields
//!         1 table created: len primary key | primary key field (UTF-8)
//!         2 table dropped: -
//!         3 index created: len index | index (UTF-8) | len spec | spec (IndexSpec as JSON)
//!         4 index dropped: len index | index (UTF-8)
//! ```
//!
//! The first byte is the record's format; a decoder rejects formats it does not know, so a
//! later format can be introduced under the same prefix (a new prefix is for a change that
//! old pumps must not even try to read).
//!
//! # Contract of the decoder
//!
//! [`Record::decode`] (and the per-kind `decode`s) never panic and never read past the
//! input, whatever the bytes: a damaged record is a typed [`RecordError`] that says what was
//! wrong and where. A record decodes only if it is consumed exactly (no trailing bytes), its
//! names are non-empty UTF-8 and its documents are valid JSON. Encoding a decoded record
//! gives a record that decodes to the same value.

use crate::IndexSpec;
use serde_json::Value;
use std::sync::Arc;

/// The message prefix of a [`ChangeRecord`].
pub const CHANGE_PREFIX: &str = "remodel.v1";
/// The message prefix of a [`DdlRecord`].
pub const DDL_PREFIX: &str = "remodel.ddl.v1";

/// The message prefix of a sync token: a process's barrier (see
/// `postgres::backend`), carried in a transaction of its own; the body is the token.
pub const SYNC_PREFIX: &str = "remodel.sync.v1";

/// The format byte of version 1 records (the first byte of each record).
const FORMAT_V1: u8 = 1;
const OLD_PRESENT: u8 = 1;
const NEW_PRESENT: u8 = 2;

const KIND_TABLE_CREATED: u8 = 1;
const KIND_TABLE_DROPPED: u8 = 2;
const KIND_INDEX_CREATED: u8 = 3;
const KIND_INDEX_DROPPED: u8 = 4;

/// One record decoded from a Remodel message, in the order of the transaction's messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A document change (prefix [`CHANGE_PREFIX`]).
    Change(ChangeRecord),
    /// A table or index created or dropped (prefix [`DDL_PREFIX`]).
    Ddl(DdlRecord),
    /// A sync token (prefix [`SYNC_PREFIX`]): every commit before it has been delivered.
    Sync(Vec<u8>),
}

impl Record {
    /// The message prefix this record travels under.
    pub fn prefix(&self) -> &'static str {
        match self {
            Record::Change(_) => CHANGE_PREFIX,
            Record::Ddl(_) => DDL_PREFIX,
            Record::Sync(_) => SYNC_PREFIX,
        }
    }

    /// The record's message body.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Change(c) => c.encode(),
            Record::Ddl(d) => d.encode(),
            Record::Sync(token) => token.clone(),
        }
    }

    /// Decodes the body of a message with `prefix`. `Ok(None)`: the prefix is not one of
    /// Remodel's (another application's message), so the body is not looked at.
    pub fn decode(prefix: &str, body: &[u8]) -> Result<Option<Record>, RecordError> {
        match prefix {
            CHANGE_PREFIX => ChangeRecord::decode(body).map(|c| Some(Record::Change(c))),
            DDL_PREFIX => DdlRecord::decode(body).map(|d| Some(Record::Ddl(d))),
            SYNC_PREFIX => Ok(Some(Record::Sync(body.to_vec()))),
            _ => Ok(None),
        }
    }

    /// Whether `prefix` is one of Remodel's message prefixes.
    pub fn is_remodel_prefix(prefix: &str) -> bool {
        prefix == CHANGE_PREFIX || prefix == DDL_PREFIX || prefix == SYNC_PREFIX
    }
}

/// A document change: what a feed needs to route and show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    /// The table's name.
    pub table: String,
    /// The document's primary key in Remodel's order-preserving encoding
    /// ([`value::encode_key`](crate::value::encode_key)).
    pub key: Vec<u8>,
    /// The document before the change (`None`: it was inserted).
    pub old: Option<Arc<Value>>,
    /// The document after the change (`None`: it was deleted).
    pub new: Option<Arc<Value>>,
}

/// A document handed to the encoder: a value, or JSON text the writer already holds (the
/// stored bytes of a document), copied as it is.
#[derive(Debug, Clone, Copy)]
pub enum Doc<'a> {
    /// A value, serialised as JSON by the encoder.
    Value(&'a Value),
    /// JSON text, which must be one valid JSON value (the decoder checks it, the encoder
    /// does not).
    Json(&'a [u8]),
}

/// Appends the body of a change record to `out` (see the module doc for the format).
pub fn encode_change(
    out: &mut Vec<u8>,
    table: &str,
    key: &[u8],
    old: Option<Doc<'_>>,
    new: Option<Doc<'_>>,
) {
    out.push(FORMAT_V1);
    put_bytes(out, table.as_bytes());
    put_bytes(out, key);
    let flags =
        if old.is_some() { OLD_PRESENT } else { 0 } | if new.is_some() { NEW_PRESENT } else { 0 };
    out.push(flags);
    for doc in [old, new].into_iter().flatten() {
        match doc {
            Doc::Json(json) => put_bytes(out, json),
            Doc::Value(value) => {
                // serde_json writes into a Vec without failing (its keys are strings).
                let json = serde_json::to_vec(value).unwrap_or_default();
                put_bytes(out, &json);
            }
        }
    }
}

impl ChangeRecord {
    /// The record's message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.table.len() + self.key.len());
        encode_change(
            &mut out,
            &self.table,
            &self.key,
            self.old.as_deref().map(Doc::Value),
            self.new.as_deref().map(Doc::Value),
        );
        out
    }

    /// Decodes a message body of prefix [`CHANGE_PREFIX`].
    pub fn decode(body: &[u8]) -> Result<ChangeRecord, RecordError> {
        let mut r = Reader::new(body);
        r.format()?;
        let table = r.name("table name")?;
        let key = r.bytes("primary key")?.to_vec();
        let flags = r.byte("flags")?;
        if flags & !(OLD_PRESENT | NEW_PRESENT) != 0 {
            return Err(RecordError::BadFlags { flags });
        }
        let old = if flags & OLD_PRESENT != 0 {
            Some(Arc::new(r.json("old document")?))
        } else {
            None
        };
        let new = if flags & NEW_PRESENT != 0 {
            Some(Arc::new(r.json("new document")?))
        } else {
            None
        };
        r.end()?;
        Ok(ChangeRecord {
            table,
            key,
            old,
            new,
        })
    }
}

/// A table or index created or dropped, as every process must learn of it.
#[derive(Debug, Clone, PartialEq)]
pub enum DdlRecord {
    /// A table was created.
    TableCreated {
        /// The table.
        table: String,
        /// Its primary key field.
        primary_key: String,
    },
    /// A table was dropped (its feeds end).
    TableDropped {
        /// The table.
        table: String,
    },
    /// An index was created.
    IndexCreated {
        /// The table.
        table: String,
        /// The index.
        index: String,
        /// What it indexes.
        spec: IndexSpec,
    },
    /// An index was dropped (the feeds that read it end).
    IndexDropped {
        /// The table.
        table: String,
        /// The index.
        index: String,
    },
}

impl DdlRecord {
    /// The table the record is about.
    pub fn table(&self) -> &str {
        match self {
            DdlRecord::TableCreated { table, .. }
            | DdlRecord::TableDropped { table }
            | DdlRecord::IndexCreated { table, .. }
            | DdlRecord::IndexDropped { table, .. } => table,
        }
    }

    /// The record's message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_V1];
        match self {
            DdlRecord::TableCreated { table, primary_key } => {
                out.push(KIND_TABLE_CREATED);
                put_bytes(&mut out, table.as_bytes());
                put_bytes(&mut out, primary_key.as_bytes());
            }
            DdlRecord::TableDropped { table } => {
                out.push(KIND_TABLE_DROPPED);
                put_bytes(&mut out, table.as_bytes());
            }
            DdlRecord::IndexCreated { table, index, spec } => {
                out.push(KIND_INDEX_CREATED);
                put_bytes(&mut out, table.as_bytes());
                put_bytes(&mut out, index.as_bytes());
                // An IndexSpec is plain data: serialising it cannot fail.
                let json = serde_json::to_vec(spec).unwrap_or_default();
                put_bytes(&mut out, &json);
            }
            DdlRecord::IndexDropped { table, index } => {
                out.push(KIND_INDEX_DROPPED);
                put_bytes(&mut out, table.as_bytes());
                put_bytes(&mut out, index.as_bytes());
            }
        }
        out
    }

    /// Decodes a message body of prefix [`DDL_PREFIX`].
    pub fn decode(body: &[u8]) -> Result<DdlRecord, RecordError> {
        let mut r = Reader::new(body);
        r.format()?;
        let kind = r.byte("kind")?;
        let record = match kind {
            KIND_TABLE_CREATED => DdlRecord::TableCreated {
                table: r.name("table name")?,
                primary_key: r.name("primary key field")?,
            },
            KIND_TABLE_DROPPED => DdlRecord::TableDropped {
                table: r.name("table name")?,
            },
            KIND_INDEX_CREATED => {
                let table = r.name("table name")?;
                let index = r.name("index name")?;
                let at = r.at;
                let spec = r.bytes("index spec")?;
                let spec = serde_json::from_slice(spec).map_err(|e| RecordError::InvalidJson {
                    what: "index spec",
                    at,
                    message: e.to_string(),
                })?;
                DdlRecord::IndexCreated { table, index, spec }
            }
            KIND_INDEX_DROPPED => DdlRecord::IndexDropped {
                table: r.name("table name")?,
                index: r.name("index name")?,
            },
            kind => return Err(RecordError::UnknownKind { kind }),
        };
        r.end()?;
        Ok(record)
    }
}

/// Why a message body is not a valid record. Every variant says where in the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The body ends before a field does.
    #[error("record truncated: {what} at byte {at} needs {need} bytes, {left} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Its offset.
        at: usize,
        /// How many bytes it needs.
        need: u64,
        /// How many bytes were left.
        left: usize,
    },
    /// The format byte is not one this decoder knows.
    #[error("unknown record format {format} (this decoder reads format 1)")]
    UnknownFormat {
        /// The format byte found.
        format: u8,
    },
    /// A DDL record of an unknown kind.
    #[error("unknown DDL record kind {kind}")]
    UnknownKind {
        /// The kind byte found.
        kind: u8,
    },
    /// A change record's flags byte has bits that mean nothing.
    #[error("invalid change record flags {flags:#04x}")]
    BadFlags {
        /// The flags byte found.
        flags: u8,
    },
    /// A length is not a minimal LEB128 varint of at most 64 bits.
    #[error("invalid length of {what} at byte {at}")]
    BadLength {
        /// The field whose length it is.
        what: &'static str,
        /// Its offset.
        at: usize,
    },
    /// A name is not UTF-8.
    #[error("{what} at byte {at} is not UTF-8")]
    InvalidUtf8 {
        /// The field.
        what: &'static str,
        /// Its offset.
        at: usize,
    },
    /// A name is empty.
    #[error("{what} at byte {at} is empty")]
    EmptyName {
        /// The field.
        what: &'static str,
        /// Its offset.
        at: usize,
    },
    /// A document or index spec is not valid JSON (of the expected shape).
    #[error("{what} at byte {at} is not valid: {message}")]
    InvalidJson {
        /// The field.
        what: &'static str,
        /// Its offset.
        at: usize,
        /// The JSON parser's message.
        message: String,
    },
    /// Bytes follow the record's last field.
    #[error("{extra} bytes after the record's end at byte {at}")]
    TrailingBytes {
        /// Where the record ended.
        at: usize,
        /// How many bytes follow.
        extra: usize,
    },
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A bounds-checked cursor over a record's body.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8]) -> Self {
        Reader { body, at: 0 }
    }

    fn left(&self) -> usize {
        self.body.len() - self.at
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, RecordError> {
        let b = *self.body.get(self.at).ok_or(RecordError::Truncated {
            what,
            at: self.at,
            need: 1,
            left: 0,
        })?;
        self.at += 1;
        Ok(b)
    }

    fn format(&mut self) -> Result<(), RecordError> {
        match self.byte("format")? {
            FORMAT_V1 => Ok(()),
            format => Err(RecordError::UnknownFormat { format }),
        }
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, RecordError> {
        let start = self.at;
        let bad = RecordError::BadLength { what, at: start };
        let mut n: u64 = 0;
        for i in 0..10 {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte may only hold the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(bad);
            }
            n |= bits << (7 * i);
            if b & 0x80 == 0 {
                // Minimal form: no trailing zero group (except a lone zero).
                if i > 0 && b == 0 {
                    return Err(bad);
                }
                return Ok(n);
            }
        }
        Err(bad)
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], RecordError> {
        let n = self.varint(what)?;
        let at = self.at;
        let left = self.left();
        if n > left as u64 {
            return Err(RecordError::Truncated {
                what,
                at,
                need: n,
                left,
            });
        }
        let n = n as usize;
        self.at += n;
        Ok(&self.body[at..at + n])
    }

    fn name(&mut self, what: &'static str) -> Result<String, RecordError> {
        let at = self.at;
        let bytes = self.bytes(what)?;
        if bytes.is_empty() {
            return Err(RecordError::EmptyName { what, at });
        }
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| RecordError::InvalidUtf8 { what, at })
    }

    fn json(&mut self, what: &'static str) -> Result<Value, RecordError> {
        let at = self.at;
        let bytes = self.bytes(what)?;
        serde_json::from_slice(bytes).map_err(|e| RecordError::InvalidJson {
            what,
            at,
            message: e.to_string(),
        })
    }

    fn end(&self) -> Result<(), RecordError> {
        match self.left() {
            0 => Ok(()),
            extra => Err(RecordError::TrailingBytes { at: self.at, extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn change(table: &str, key: &[u8], old: Option<Value>, new: Option<Value>) -> ChangeRecord {
        ChangeRecord {
            table: table.into(),
            key: key.to_vec(),
            old: old.map(Arc::new),
            new: new.map(Arc::new),
        }
    }

    #[test]
    fn change_records_round_trip() {
        let cases = [
            change("t", b"", None, None),
            change(
                "crew",
                b"\x05ana\x00",
                None,
                Some(json!({"id": "ana", "rank": 3})),
            ),
            change("crew", b"k", Some(json!({"id": 1})), None),
            change(
                "écrit",
                &[0xff; 300],
                Some(json!([1, 2.5, null])),
                Some(json!("x")),
            ),
        ];
        for c in cases {
            let body = c.encode();
            assert_eq!(ChangeRecord::decode(&body), Ok(c.clone()));
            assert_eq!(
                Record::decode(CHANGE_PREFIX, &body),
                Ok(Some(Record::Change(c)))
            );
        }
    }

    #[test]
    fn stored_json_is_copied_as_is() {
        let mut body = Vec::new();
        encode_change(
            &mut body,
            "t",
            b"k",
            Some(Doc::Value(&json!({"a": 1}))),
            Some(Doc::Json(br#"{"b":[true]}"#)),
        );
        let c = ChangeRecord::decode(&body).unwrap();
        assert_eq!(c.old.as_deref(), Some(&json!({"a": 1})));
        assert_eq!(c.new.as_deref(), Some(&json!({"b": [true]})));
        // Compact: 1 format + 2 table + 2 key + 1 flags + 8 old + 13 new.
        assert_eq!(body.len(), 1 + 2 + 2 + 1 + 8 + 13);
    }

    #[test]
    fn ddl_records_round_trip() {
        let cases = [
            DdlRecord::TableCreated {
                table: "crew".into(),
                primary_key: "id".into(),
            },
            DdlRecord::TableDropped {
                table: "crew".into(),
            },
            DdlRecord::IndexCreated {
                table: "crew".into(),
                index: "by_name".into(),
                spec: IndexSpec::compound(["last", "first"]),
            },
            DdlRecord::IndexCreated {
                table: "crew".into(),
                index: "tags".into(),
                spec: IndexSpec::multi("tags"),
            },
            DdlRecord::IndexDropped {
                table: "crew".into(),
                index: "rank".into(),
            },
        ];
        for d in cases {
            let body = d.encode();
            assert_eq!(DdlRecord::decode(&body), Ok(d.clone()));
            assert_eq!(d.table(), "crew");
            assert_eq!(Record::decode(DDL_PREFIX, &body), Ok(Some(Record::Ddl(d))));
        }
    }

    #[test]
    fn foreign_prefixes_are_not_read() {
        assert_eq!(Record::decode("someone.else", b"\xff\xff"), Ok(None));
        assert!(Record::is_remodel_prefix(CHANGE_PREFIX));
        assert!(!Record::is_remodel_prefix("remodel.v2"));
    }

    #[test]
    fn damage_is_named() {
        let good = change("t", b"k", None, Some(json!(1))).encode();
        assert_eq!(
            ChangeRecord::decode(&[]),
            Err(RecordError::Truncated {
                what: "format",
                at: 0,
                need: 1,
                left: 0
            })
        );
        assert_eq!(
            ChangeRecord::decode(&[9]),
            Err(RecordError::UnknownFormat { format: 9 })
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            ChangeRecord::decode(&trailing),
            Err(RecordError::TrailingBytes {
                at: good.len(),
                extra: 1
            })
        );
        let mut flags = good.clone();
        flags[5] = 0x06;
        assert_eq!(
            ChangeRecord::decode(&flags),
            Err(RecordError::BadFlags { flags: 6 })
        );
        // A length that says more than is there.
        assert!(matches!(
            ChangeRecord::decode(&[1, 0x7f, b't']),
            Err(RecordError::Truncated {
                what: "table name",
                need: 127,
                left: 1,
                ..
            })
        ));
        // A length that is not minimal, and one that overflows.
        assert!(matches!(
            ChangeRecord::decode(&[1, 0x81, 0x00, b't']),
            Err(RecordError::BadLength { .. })
        ));
        let mut huge = vec![1];
        huge.extend([0xff; 9]);
        huge.push(0x7f);
        assert!(matches!(
            ChangeRecord::decode(&huge),
            Err(RecordError::BadLength { .. })
        ));
        // The largest length there is: truncated, not an allocation.
        let mut max = vec![1];
        max.extend([0xff; 9]);
        max.push(0x01);
        assert!(matches!(
            ChangeRecord::decode(&max),
            Err(RecordError::Truncated { need: u64::MAX, .. })
        ));
        assert!(matches!(
            ChangeRecord::decode(&[1, 0]),
            Err(RecordError::EmptyName { .. })
        ));
        assert!(matches!(
            ChangeRecord::decode(&[1, 1, 0xc3]),
            Err(RecordError::InvalidUtf8 { .. })
        ));
        assert!(matches!(
            ChangeRecord::decode(&[1, 1, b't', 0, 2, 2, b'{', b'x']),
            Err(RecordError::InvalidJson {
                what: "new document",
                at: 5,
                ..
            })
        ));
        assert_eq!(
            DdlRecord::decode(&[1, 7]),
            Err(RecordError::UnknownKind { kind: 7 })
        );
        let mut spec = vec![1, KIND_INDEX_CREATED, 1, b't', 1, b'i'];
        put_bytes(&mut spec, br#"{"nope": 1}"#);
        assert!(matches!(
            DdlRecord::decode(&spec),
            Err(RecordError::InvalidJson {
                what: "index spec",
                ..
            })
        ));
        // Deep nesting is refused by the JSON parser's limit, not by the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let mut body = Vec::new();
        encode_change(&mut body, "t", b"k", None, Some(Doc::Json(deep.as_bytes())));
        assert!(matches!(
            ChangeRecord::decode(&body),
            Err(RecordError::InvalidJson { .. })
        ));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::vec((".{0,6}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn change_record() -> impl Strategy<Value = ChangeRecord> {
        (
            ".{1,20}",
            prop::collection::vec(any::<u8>(), 0..300),
            prop::option::of(json_value()),
            prop::option::of(json_value()),
        )
            .prop_map(|(table, key, old, new)| change(&table, &key, old, new))
    }

    fn check_any_bytes(bytes: &[u8]) {
        // Whatever the bytes: a record or a typed error, never a panic; and a record that
        // decodes encodes to one that decodes to the same value.
        if let Ok(c) = ChangeRecord::decode(bytes) {
            assert_eq!(ChangeRecord::decode(&c.encode()), Ok(c));
        }
        if let Ok(d) = DdlRecord::decode(bytes) {
            assert_eq!(DdlRecord::decode(&d.encode()), Ok(d));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            check_any_bytes(&bytes);
        }

        #[test]
        fn random_bytes_after_a_valid_header_never_panic(
            kind in 0u8..6,
            tail in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut bytes = vec![FORMAT_V1, kind];
            bytes.extend(tail);
            check_any_bytes(&bytes);
            bytes[1] = 1;
            check_any_bytes(&bytes);
        }

        #[test]
        fn change_records_round_trip_prop(c in change_record()) {
            let body = c.encode();
            prop_assert_eq!(ChangeRecord::decode(&body), Ok(c));
        }

        #[test]
        fn every_cut_of_a_record_is_an_error(c in change_record(), cut in any::<prop::sample::Index>()) {
            let body = c.encode();
            let cut = cut.index(body.len());
            prop_assert!(ChangeRecord::decode(&body[..cut]).is_err());
        }

        #[test]
        fn damaged_records_never_panic(
            c in change_record(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut body = c.encode();
            for (at, byte) in flips {
                let at = at.index(body.len());
                body[at] = byte;
            }
            check_any_bytes(&body);
        }
    }
}
