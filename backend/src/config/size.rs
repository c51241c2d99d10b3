//! Size values in keel.toml: a byte count or a string in the grammar of
//! [`keel_protocol::size`] (`4G`, `512M`, `65536`).

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;

pub use keel_protocol::parse_size;

/// A size as it appears in the file: a bare integer (bytes) or a string with a binary suffix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    /// The size in bytes, or a message saying why the value is not a size.
    pub fn to_bytes(&self) -> Result<u64, String> {
        match self {
            Self::Bytes(n) => Ok(*n),
            Self::Text(s) => parse_size(s),
        }
    }
}

const EXPECTED: &str = "a size: a byte count or a string such as \"4G\", \"512M\" or \"64K\"";

/// Accepts exactly integers >= 0 and strings, saying what a size is for anything else.
struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = SizeValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeValue, E> {
        Ok(SizeValue::Bytes(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
        u64::try_from(v)
            .map(SizeValue::Bytes)
            .map_err(|_| E::custom(format!("{v} is negative; expected {EXPECTED}")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<SizeValue, E> {
        Err(E::custom(format!(
            "{v} is not a whole number of bytes; expected {EXPECTED}"
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
        Ok(SizeValue::Text(v.to_owned()))
    }
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct One {
        size: SizeValue,
    }

    fn parse(text: &str) -> Result<u64, String> {
        let one: One = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        one.size.to_bytes()
    }

    #[test]
    fn integers_and_strings() {
        assert_eq!(parse("size = 4096"), Ok(4096));
        assert_eq!(parse("size = \"4GiB\""), Ok(4 << 30));
    }

    #[test]
    fn negative_and_fractional_sizes_say_what_a_size_is() {
        assert_eq!(
            parse("size = -5"),
            Err(format!("-5 is negative; expected {EXPECTED}"))
        );
        assert_eq!(
            parse("size = 1.5"),
            Err(format!(
                "1.5 is not a whole number of bytes; expected {EXPECTED}"
            ))
        );
        assert!(parse("size = true").unwrap_err().contains(EXPECTED));
    }
}
