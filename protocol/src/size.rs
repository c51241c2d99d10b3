//! Byte sizes as people write them, one grammar for keel.toml, `keel` and `keel-client`.
//!
//! A size is a whole number of bytes, optionally followed by a binary unit: `K`, `M`, `G`, `T`
//! or `P`, in any case, with an optional `B` or `iB` (`4G` = `4GiB` = `4gb` = 4 * 2^30 bytes).
//! Spaces around the number and the unit are allowed (`"8 K"`). No fractions, no signs.

/// Parses a size in the grammar above, or says why `text` is not one.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "\"{text}\" is not a size (expected e.g. 4G, 512M, 1TiB or 65536)"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" is too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
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

/// `bytes` in the largest binary unit that keeps a number >= 1, with one decimal
/// (`1.5 GiB`); exact below 1 KiB (`512 B`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut scaled = bytes as f64;
    while scaled >= 1024.0 && unit < UNITS.len() - 1 {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_spelling() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4gb"), Ok(4 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("2P"), Ok(2 << 50));
        assert_eq!(parse_size(" 8 K "), Ok(8192));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for bad in ["", "G", "4X", "-4G", "+4G", "1.5G", "4 G B", "0x10"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse_size("4X"),
            Err("\"4X\" has an unknown unit \"x\" (use K, M, G, T or P)".into())
        );
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("17000000P").is_err());
    }

    #[test]
    fn formats_in_binary_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(u64::MAX), "16384.0 PiB");
    }
}
