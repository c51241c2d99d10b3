//! Byte sizes written the way people write them: `4G`, `512M`, `1T`, `65536`.

use serde::Deserialize;

/// A size as it appears in the file: a bare integer (bytes) or a string with a binary suffix.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
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

/// Parses `"4G"`, `"4GiB"`, `"512m"`, `"100"`; suffixes are powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "\"{text}\" is not a size (expected e.g. 4G, 512M or 65536)"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" is too large"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        other => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{other}\" (use K, M, G, T or P)"
            ));
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8 K"), Ok(8192));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("4X").is_err());
        assert!(parse_size("-4G").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("17000000P").is_err());
    }
}
