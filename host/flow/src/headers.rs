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
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<(String, Bytes)>")]
pub struct Headers {
    fields: Vec<(String, Vec<u8>)>,
}

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

    /// Builds a list from `(name, value)` pairs, validating each.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Self, FieldError> {
        let mut headers = Headers::new();
        for (name, value) in pairs {
            headers.append(name.as_ref(), value.as_ref())?;
        }
        Ok(headers)
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
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Every value of the fields named `name` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The first value of the fields named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
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
        match self.fields.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(first) => {
                self.fields[first] = (name.to_owned(), value.to_vec());
                let mut index = 0;
                self.fields.retain(|(n, _)| {
                    let keep = index <= first || !n.eq_ignore_ascii_case(name);
                    index += 1;
                    keep
                });
            }
            None => self.fields.push((name.to_owned(), value.to_vec())),
        }
        Ok(())
    }

    /// Adds a field at the end.
    pub fn append(&mut self, name: &str, value: &[u8]) -> Result<(), FieldError> {
        check_name(name)?;
        check_value(name, value)?;
        self.fields.push((name.to_owned(), value.to_vec()));
        Ok(())
    }

    /// Removes every field named `name`; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.fields.len();
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        before - self.fields.len()
    }

    /// Total size of names and values in bytes, for limits.
    pub fn byte_size(&self) -> usize {
        self.fields.iter().map(|(n, v)| n.len() + v.len()).sum()
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
        for (name, value) in &self.fields {
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
