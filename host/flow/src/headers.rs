//! Ordered header fields that keep case and duplicates, with validated edits.
//! Serialized as a list of `[name, value]` pairs (values as bytes); deserializing checks
//! every field as [`Headers::append`] does.

use bytes::Bytes;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

/// Why a header field was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldError {
    /// The name is empty or has a byte that is not an RFC 9110 token character.
    #[error("invalid header name {0:?}")]
    InvalidName(String),
    /// The value has CR, LF, NUL or another control byte other than tab.
    #[error("invalid value for header {0:?}")]
    InvalidValue(String),
}

/// Header fields in wire order, with the case and duplicates they had.
///
/// Stored as two allocations whatever the number of fields (a request passes through
/// several lists of them): every name and value back to back in one buffer, and each
/// field's place in it. An edit appends; what it left behind is dropped once it outgrows
/// what is live.
#[derive(Clone, Default, Deserialize)]
#[serde(try_from = "Vec<(String, Bytes)>")]
pub struct Headers {
    bytes: Vec<u8>,
    fields: Vec<Field>,
}

/// One field: its name is `bytes[start..split]`, its value `bytes[split..end]`.
#[derive(Debug, Clone, Copy)]
struct Field {
    start: usize,
    split: usize,
    end: usize,
}

/// Bytes left behind by edits that are kept before the buffer is rebuilt.
const SLACK: usize = 1024;

/// Whether `b` is an RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks a field name: a non-empty token.
pub(crate) fn check_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_tchar)
}

fn check_name(name: &str) -> Result<(), FieldError> {
    if check_token(name) { Ok(()) } else { Err(FieldError::InvalidName(name.to_owned())) }
}

/// Whether `text` has only visible characters, SP, HTAB and obs-text (never CR, LF, NUL
/// or another control byte): an RFC 9110 field value, or an RFC 9112 reason phrase.
pub(crate) fn is_field_text(text: &[u8]) -> bool {
    text.iter().all(|&b| b == b'\t' || b >= 0x20 && b != 0x7f)
}

fn check_value(name: &str, value: &[u8]) -> Result<(), FieldError> {
    if is_field_text(value) { Ok(()) } else { Err(FieldError::InvalidValue(name.to_owned())) }
}

/// Decodes a header value for display to a plugin: UTF-8 if it is, Latin-1 otherwise.
pub fn value_to_text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) => s.to_owned(),
        Err(_) => value.iter().map(|&b| char::from(b)).collect(),
    }
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list with room for `fields` fields of `bytes` bytes of names and values.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Headers { bytes: Vec::with_capacity(bytes), fields: Vec::with_capacity(fields) }
    }

    /// Builds a list from `(name, value)` pairs, validating each.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Self, FieldError> {
        let pairs = pairs.into_iter();
        let mut headers = Headers::with_capacity(pairs.size_hint().0, 0);
        for (name, value) in pairs {
            headers.append(name.as_ref(), value.as_ref())?;
        }
        Ok(headers)
    }

    fn name_of(&self, field: &Field) -> &str {
        // Names are checked tokens (ASCII) before they are stored.
        std::str::from_utf8(&self.bytes[field.start..field.split]).unwrap_or_default()
    }

    fn value_of(&self, field: &Field) -> &[u8] {
        &self.bytes[field.split..field.end]
    }

    fn is_named(&self, field: &Field, name: &str) -> bool {
        self.bytes[field.start..field.split].eq_ignore_ascii_case(name.as_bytes())
    }

    /// Stores a name and value (already checked) and says where.
    fn store(&mut self, name: &str, value: &[u8]) -> Field {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name.as_bytes());
        let split = self.bytes.len();
        self.bytes.extend_from_slice(value);
        Field { start, split, end: self.bytes.len() }
    }

    /// Rebuilds the buffer once what edits left behind outgrows what is live.
    fn compact(&mut self) {
        let live = self.byte_size();
        if self.bytes.len() <= live * 2 + SLACK {
            return;
        }
        let mut bytes = Vec::with_capacity(live);
        for field in &mut self.fields {
            let start = bytes.len();
            bytes.extend_from_slice(&self.bytes[field.start..field.end]);
            *field = Field { start, split: start + (field.split - field.start), end: bytes.len() };
        }
        self.bytes = bytes;
    }

    /// Number of fields, counting duplicates.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Every field in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|f| (self.name_of(f), self.value_of(f)))
    }

    /// The buffer every name and value is stored in (with what edits left behind), and
    /// each field's name and where its value is in that buffer, in wire order: for handing
    /// all values on with one copy of the buffer instead of one copy each.
    pub fn spans(&self) -> (&[u8], impl Iterator<Item = (&str, std::ops::Range<usize>)>) {
        (&self.bytes, self.fields.iter().map(|f| (self.name_of(f), f.split..f.end)))
    }

    /// Every value of the fields named `name` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.iter().filter(move |f| self.is_named(f, name)).map(|f| self.value_of(f))
    }

    /// The first value of the fields named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|f| self.is_named(f, name)).map(|f| self.value_of(f))
    }

    /// The first value of `name` as text, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Whether a field named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Replaces every field named `name` by one, at the first one's position (or the end).
    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<(), FieldError> {
        check_name(name)?;
        check_value(name, value)?;
        match self.fields.iter().position(|f| self.is_named(f, name)) {
            Some(first) => {
                self.fields[first] = self.store(name, value);
                let mut index = 0;
                let bytes = &self.bytes;
                self.fields.retain(|f| {
                    let keep = index <= first || !bytes[f.start..f.split].eq_ignore_ascii_case(name.as_bytes());
                    index += 1;
                    keep
                });
                self.compact();
            }
            None => {
                let field = self.store(name, value);
                self.fields.push(field);
            }
        }
        Ok(())
    }

    /// Adds a field at the end.
    pub fn append(&mut self, name: &str, value: &[u8]) -> Result<(), FieldError> {
        check_name(name)?;
        check_value(name, value)?;
        let field = self.store(name, value);
        self.fields.push(field);
        Ok(())
    }

    /// Removes every field named `name`; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.fields.len();
        let bytes = &self.bytes;
        self.fields.retain(|f| !bytes[f.start..f.split].eq_ignore_ascii_case(name.as_bytes()));
        let removed = before - self.fields.len();
        if removed > 0 {
            self.compact();
        }
        removed
    }

    /// Total size of names and values in bytes, for limits.
    pub fn byte_size(&self) -> usize {
        self.fields.iter().map(|f| f.end - f.start).sum()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v)))).finish()
    }
}

impl TryFrom<Vec<(String, Bytes)>> for Headers {
    type Error = FieldError;

    /// Builds a list from `(name, value)` pairs, validating each (as [`Headers::from_pairs`]).
    fn try_from(pairs: Vec<(String, Bytes)>) -> Result<Headers, FieldError> {
        Headers::from_pairs(pairs)
    }
}

/// A header value serialized as bytes (a `Vec<u8>` would be a sequence of numbers).
struct ValueBytes<'a>(&'a [u8]);

impl Serialize for ValueBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.fields.len()))?;
        for (name, value) in self.iter() {
            seq.serialize_element(&(name, ValueBytes(value)))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &Headers, expect: &[(&str, &str)]) {
        let got: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_owned(), value_to_text(v))).collect();
        let want: Vec<(String, String)> = expect.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn set_replaces_duplicates_in_place_and_keeps_others() {
        let mut h = Headers::from_pairs([("Host", "a"), ("X-Dup", "1"), ("Accept", "*/*"), ("x-dup", "2")])
            .expect("valid fixture");
        h.set("X-DUP", b"3").expect("valid");
        check(&h, &[("Host", "a"), ("X-DUP", "3"), ("Accept", "*/*")]);
        assert_eq!(h.remove("accept"), 1);
        h.append("Set-Cookie", b"a=1").expect("valid");
        h.append("Set-Cookie", b"b=2").expect("valid");
        assert_eq!(h.get_all("set-cookie").count(), 2);
    }

    #[test]
    fn edits_leave_bounded_garbage_and_equality_ignores_layout() {
        let mut h = Headers::from_pairs([("Host", "a"), ("X-N", "0"), ("Accept", "*/*")]).expect("valid fixture");
        for i in 0..10_000 {
            h.set("x-n", i.to_string().as_bytes()).expect("valid");
            h.append("X-Tmp", b"some value").expect("valid");
            assert_eq!(h.remove("x-tmp"), 1);
            assert!(h.bytes.len() <= h.byte_size() * 2 + SLACK, "garbage kept after {i} edits");
        }
        check(&h, &[("Host", "a"), ("x-n", "9999"), ("Accept", "*/*")]);
        let fresh = Headers::from_pairs([("Host", "a"), ("x-n", "9999"), ("Accept", "*/*")]).expect("valid fixture");
        assert_eq!(h, fresh, "same fields, another layout");
        assert_ne!(h, Headers::from_pairs([("Host", "a"), ("x-n", "9999")]).expect("valid fixture"));
        assert_eq!(format!("{h:?}"), r#"[("Host", "a"), ("x-n", "9999"), ("Accept", "*/*")]"#);
    }

    #[test]
    fn rejects_injection() {
        let mut h = Headers::new();
        assert_eq!(h.set("X-A", b"x\r\nEvil: 1"), Err(FieldError::InvalidValue("X-A".into())));
        assert_eq!(h.set("Bad Name", b"x"), Err(FieldError::InvalidName("Bad Name".into())));
        assert_eq!(h.set("", b"x"), Err(FieldError::InvalidName(String::new())));
        assert!(h.is_empty());
    }

    #[test]
    fn serde_keeps_order_case_and_bytes_and_refuses_injection() {
        let h = Headers::from_pairs([("X-A", &b"caf\xe9"[..]), ("x-a", b"2")]).expect("valid fixture");
        let json = serde_json::to_string(&h).expect("serializes");
        assert_eq!(json, r#"[["X-A",[99,97,102,233]],["x-a",[50]]]"#);
        assert_eq!(serde_json::from_str::<Headers>(&json).expect("reads back"), h);
        for bad in [r#"[["X-A",[120,13,10,69]]]"#, r#"[["X-A","x\r\nEvil: 1"]]"#, r#"[["X-A",[0]]]"#] {
            let err = serde_json::from_str::<Headers>(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid value for header \"X-A\""), "{bad}: {err}");
        }
        let err = serde_json::from_str::<Headers>(r#"[["Bad Name",[120]]]"#).expect_err("bad name");
        assert!(err.to_string().contains("invalid header name"), "{err}");
    }

    #[test]
    fn non_utf8_values_read_as_latin1() {
        assert_eq!(value_to_text(b"caf\xe9"), "café");
        assert_eq!(value_to_text("café".as_bytes()), "café");
    }
}
