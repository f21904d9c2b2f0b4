//! Messages of the non-HTTP flows: DNS messages (RFC 1035 section 4.1, decoded into
//! questions and records; RDATA kept in wire format) and WebSocket messages (RFC 6455
//! section 5.6, reassembled). Validation is here so that nothing a plugin returns is used
//! before it is checked, and so that nothing deserialized is used unchecked either:
//! deserializing runs the same checks as `validate` (with no size limit, which is a
//! runtime setting). Encoding to and from the wire is the network layer's.

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, de};

use crate::time::Timestamp;

/// A DNS question.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Question {
    /// The name asked for, dotted (`example.com`).
    #[serde(deserialize_with = "dns_name")]
    pub name: String,
    /// RR type (1 A, 28 AAAA, ...).
    pub record_type: u16,
    /// Class (1 IN).
    pub class: u16,
}

/// A DNS resource record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceRecord {
    /// Owner name, dotted.
    #[serde(deserialize_with = "dns_name")]
    pub name: String,
    /// RR type.
    pub record_type: u16,
    /// Class.
    pub class: u16,
    /// Time to live, seconds.
    pub ttl: u32,
    /// RDATA in wire format (4 bytes for A, 16 for AAAA, ...), at most 65535 bytes.
    #[serde(deserialize_with = "rdata")]
    pub data: Vec<u8>,
}

/// A DNS message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DnsMessage {
    /// Transaction id.
    pub id: u16,
    /// The header flags word (QR, opcode, AA, TC, RD, RA, rcode).
    pub flags: u16,
    /// Questions.
    #[serde(deserialize_with = "section")]
    pub questions: Vec<Question>,
    /// Answers.
    #[serde(deserialize_with = "section")]
    pub answers: Vec<ResourceRecord>,
    /// Authority records.
    #[serde(deserialize_with = "section")]
    pub authorities: Vec<ResourceRecord>,
    /// Additional records.
    #[serde(deserialize_with = "section")]
    pub additionals: Vec<ResourceRecord>,
}

/// Why a DNS message cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// A name is not a valid domain name.
    #[error("invalid DNS name {name:?}: {reason}")]
    Name {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// RDATA longer than 65535 bytes.
    #[error("RDATA of {0} bytes is longer than 65535")]
    Data(usize),
    /// More records than a message can carry.
    #[error("{0} records in one section (at most {MAX_RECORDS})")]
    Count(usize),
}

/// Most records (or questions) accepted in one section of a message a plugin returns.
pub const MAX_RECORDS: usize = 1024;

fn check_name(name: &str) -> Result<(), DnsError> {
    let bad = |reason| Err(DnsError::Name { name: name.to_owned(), reason });
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Ok(()); // the root
    }
    if trimmed.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 bytes");
        }
        if !label.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("a label has a character outside printable ASCII");
        }
    }
    Ok(())
}

fn check_data(data: &[u8]) -> Result<(), DnsError> {
    if data.len() > usize::from(u16::MAX) { Err(DnsError::Data(data.len())) } else { Ok(()) }
}

fn check_count<T>(section: &[T]) -> Result<(), DnsError> {
    if section.len() > MAX_RECORDS { Err(DnsError::Count(section.len())) } else { Ok(()) }
}

impl DnsMessage {
    /// Checks that the message can be encoded: valid names, RDATA sizes and counts.
    pub fn validate(&self) -> Result<(), DnsError> {
        check_count(&self.questions)?;
        for q in &self.questions {
            check_name(&q.name)?;
        }
        for section in [&self.answers, &self.authorities, &self.additionals] {
            check_count(section)?;
            for rr in section {
                check_name(&rr.name)?;
                check_data(&rr.data)?;
            }
        }
        Ok(())
    }
}

// Deserializing checks each field as `validate` does.

fn dns_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    check_name(&name).map_err(de::Error::custom)?;
    Ok(name)
}

fn rdata<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let data = Vec::<u8>::deserialize(d)?;
    check_data(&data).map_err(de::Error::custom)?;
    Ok(data)
}

fn section<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    let section = Vec::<T>::deserialize(d)?;
    check_count(&section).map_err(de::Error::custom)?;
    Ok(section)
}

/// What a WebSocket message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// UTF-8 text.
    #[default]
    Text,
    /// Binary data.
    Binary,
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// A close frame (payload: code and reason).
    Close,
}

/// One WebSocket message, reassembled from its frames.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct WebSocketMessage {
    /// Sent by the client (else by the server).
    pub from_client: bool,
    /// Its kind.
    pub kind: MessageKind,
    /// Its payload.
    pub data: Bytes,
    /// When it was received, or sent if a plugin injected it (the epoch if not recorded).
    pub timestamp: Timestamp,
}

/// A [`WebSocketMessage`] as read, before [`WebSocketMessage::validate`].
#[derive(Deserialize)]
struct WebSocketFields {
    from_client: bool,
    kind: MessageKind,
    data: Bytes,
    timestamp: Timestamp,
}

impl<'de> Deserialize<'de> for WebSocketMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WebSocketMessage, D::Error> {
        let WebSocketFields { from_client, kind, data, timestamp } = WebSocketFields::deserialize(d)?;
        let message = WebSocketMessage { from_client, kind, data, timestamp };
        message.validate(usize::MAX).map_err(de::Error::custom)?;
        Ok(message)
    }
}

/// Why a WebSocket message cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A text message that is not UTF-8.
    #[error("a text message is not valid UTF-8")]
    Utf8,
    /// A control frame's payload is over 125 bytes (RFC 6455 section 5.5).
    #[error("a {0:?} frame carries {1} bytes (at most 125)")]
    Control(MessageKind, usize),
    /// Larger than the limit.
    #[error("a message of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl WebSocketMessage {
    /// Checks that the message can be sent: text is UTF-8, control frames are short, and
    /// the payload is at most `limit` bytes.
    pub fn validate(&self, limit: usize) -> Result<(), MessageError> {
        if self.data.len() > limit {
            return Err(MessageError::TooLarge { size: self.data.len(), limit });
        }
        match self.kind {
            MessageKind::Text if std::str::from_utf8(&self.data).is_err() => Err(MessageError::Utf8),
            kind @ (MessageKind::Ping | MessageKind::Pong | MessageKind::Close) if self.data.len() > 125 => {
                Err(MessageError::Control(kind, self.data.len()))
            }
            _ => Ok(()),
        }
    }
}

/// A message a plugin injected into a flow, sent after the hook that injected it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injected {
    /// Bytes for a TCP or UDP flow.
    Data {
        /// Toward the client (else toward the server).
        to_client: bool,
        /// The bytes.
        data: Bytes,
    },
    /// A WebSocket message; `from_client` says which way it goes (true: to the server).
    WebSocket(WebSocketMessage),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &str, data: Vec<u8>) -> DnsMessage {
        let rr = ResourceRecord { name: name.into(), record_type: 1, class: 1, ttl: 60, data };
        DnsMessage { answers: vec![rr], ..DnsMessage::default() }
    }

    #[test]
    fn dns_messages_are_validated() {
        assert_eq!(answer("example.com", vec![127, 0, 0, 1]).validate(), Ok(()));
        assert_eq!(answer("example.com.", vec![]).validate(), Ok(()));
        assert_eq!(answer(".", vec![]).validate(), Ok(()));
        assert!(answer("a..b", vec![]).validate().is_err());
        assert!(answer(&"a".repeat(64), vec![]).validate().is_err());
        assert!(answer(&["a"; 130].join("."), vec![]).validate().is_err());
        assert!(answer("bad name", vec![]).validate().is_err());
        assert_eq!(answer("x", vec![0; 70_000]).validate(), Err(DnsError::Data(70_000)));
        let many = DnsMessage { questions: vec![Question::default(); MAX_RECORDS + 1], ..DnsMessage::default() };
        assert_eq!(many.validate(), Err(DnsError::Count(MAX_RECORDS + 1)));
    }

    #[test]
    fn websocket_messages_are_validated() {
        let m = |kind, data: &[u8]| WebSocketMessage {
            from_client: true,
            kind,
            data: Bytes::copy_from_slice(data),
            timestamp: Timestamp::EPOCH,
        };
        assert_eq!(m(MessageKind::Text, "héllo".as_bytes()).validate(100), Ok(()));
        assert_eq!(m(MessageKind::Text, b"\xff\xfe").validate(100), Err(MessageError::Utf8));
        assert_eq!(m(MessageKind::Binary, b"\xff\xfe").validate(100), Ok(()));
        assert_eq!(m(MessageKind::Ping, &[0; 126]).validate(1000), Err(MessageError::Control(MessageKind::Ping, 126)));
        assert_eq!(
            m(MessageKind::Binary, &[0; 101]).validate(100),
            Err(MessageError::TooLarge { size: 101, limit: 100 })
        );
    }
}
