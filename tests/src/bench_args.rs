//! Command-line value parsers the benchmark binaries share (with clap's `value_parser`).

use std::time::Duration;

/// Seconds, fractions allowed: `"3"`, `"0.5"`.
pub fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\" is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s} seconds: {e}"))
}

/// A whole number of MiB, as bytes.
pub fn mib(s: &str) -> Result<u64, String> {
    scaled(s, 20, "MiB")
}

/// A whole number of GiB, as bytes.
pub fn gib(s: &str) -> Result<u64, String> {
    scaled(s, 30, "GiB")
}

fn scaled(s: &str, shift: u32, unit: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\" is not a whole number of {unit}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{n} {unit} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_bad_ones_say_why() {
        assert_eq!(secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(mib("3"), Ok(3 << 20));
        assert_eq!(gib("2"), Ok(2 << 30));
        assert!(secs("-1").is_err());
        assert!(mib("1.5").unwrap_err().contains("whole number"));
        assert!(gib("99999999999").unwrap_err().contains("too large"));
    }
}
