//! Flow and connection ids: random (version 4) UUIDs, RFC 9562 section 5.4, written as
//! mitmproxy writes them (`8-4-4-4-12` lowercase hex), so ids stay the same when flows are
//! saved, loaded, exported and replayed. The randomness comes from the caller: this crate
//! does no IO. Serialized as that string, and parsed back with the same checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A flow's or a connection's id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid([u8; 16]);

/// Why a string is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a UUID (expected 8-4-4-4-12 hex digits)")]
pub struct UuidError(String);

impl Uuid {
    /// A version 4 UUID made of `random` (16 random bytes; the version and variant bits
    /// are set here).
    pub fn from_random_bytes(mut random: [u8; 16]) -> Uuid {
        random[6] = (random[6] & 0x0f) | 0x40;
        random[8] = (random[8] & 0x3f) | 0x80;
        Uuid(random)
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Uuid {
    type Err = UuidError;

    fn from_str(text: &str) -> Result<Uuid, UuidError> {
        let err = || UuidError(text.to_owned());
        let groups: Vec<&str> = text.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] {
            return Err(err());
        }
        let hex: String = groups.concat();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(err)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Uuid(bytes))
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Uuid, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_uses_the_string_form_and_refuses_bad_ids() {
        let id = Uuid::from_random_bytes([0xab; 16]);
        let json = serde_json::to_string(&id).expect("serializes");
        assert_eq!(json, r#""abababab-abab-4bab-abab-abababababab""#);
        assert_eq!(serde_json::from_str::<Uuid>(&json).expect("reads back"), id);
        for bad in [r#""abababab""#, r#""abababab-abab-4bab-abab-ababababab\r\n""#, "42", "null"] {
            assert!(serde_json::from_str::<Uuid>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_parses_and_sets_the_version() {
        let id = Uuid::from_random_bytes([0xff; 16]);
        let text = id.to_string();
        assert_eq!(text, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(text.parse::<Uuid>(), Ok(id));
        // mitmproxy's ids parse too (uppercase hex is accepted, written lowercase).
        let theirs: Uuid = "5C8D2B0E-2B0A-4E39-9E47-0B1C2D3E4F50".parse().expect("uuid");
        assert_eq!(theirs.to_string(), "5c8d2b0e-2b0a-4e39-9e47-0b1c2d3e4f50");
        for bad in [
            "",
            "5c8d2b0e2b0a4e399e470b1c2d3e4f50",
            "5c8d2b0e-2b0a-4e39-9e47-0b1c2d3e4f5g",
            "+c8d2b0e-2b0a-4e39-9e47-0b1c2d3e4f50",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad}");
        }
    }
}
