//! Sizes (`4GB`, `512M`, `4096MiB`) and durations (`2h`, `90m`, `1h30m`, `0`) as users write them.
//!
//! Size units are binary whatever their spelling: `K`/`KB`/`KiB` = 1024 bytes, `M`/`MB`/`MiB` =
//! 1024², `G`/`GB`/`GiB` = 1024³, `T`/`TB`/`TiB` = 1024⁴ (case does not matter). A unit is
//! required, except for `0`. Durations are one or more `<number><unit>` with `d`, `h`, `m`, `s`;
//! `0` alone means no limit.

use std::time::Duration;

/// A size or duration that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("invalid size {0:?}: write a number and a unit, e.g. 512M, 4GB, 4GiB or 4096MiB")]
    Size(String),
    #[error("invalid duration {0:?}: write e.g. 2h, 90m, 1h30m, 45s, or 0 for no limit")]
    Duration(String),
}

/// Parses a size into bytes.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(text.to_string());
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(err());
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" if num.chars().all(|c| c == '0') => 0,
        "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err()),
    };
    let value: f64 = num.parse().map_err(|_| err())?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 || bytes.fract() != 0.0 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// Parses a duration; `Ok(None)` means no limit.
pub fn parse_duration(text: &str) -> Result<Option<Duration>, UnitError> {
    let err = || UnitError::Duration(text.to_string());
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c == '0') {
        return Ok(None);
    }
    let mut total: u64 = 0;
    let mut rest = t;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        let unit = rest[digits..].chars().next().ok_or_else(err)?;
        let secs = match unit {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(err()),
        };
        total = n.checked_mul(secs).and_then(|v| total.checked_add(v)).ok_or_else(err)?;
        rest = &rest[digits + 1..];
    }
    Ok(Some(Duration::from_secs(total)))
}

/// Formats a byte count for people: the largest binary unit, whole when exact (`4GiB`,
/// `512MiB`), else with one decimal (`449.3MiB`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift {
            return if bytes.is_multiple_of(1 << shift) {
                format!("{}{unit}", bytes >> shift)
            } else {
                format!("{:.1}{unit}", bytes as f64 / (1u64 << shift) as f64)
            };
        }
    }
    format!("{bytes}B")
}

/// Formats a duration compactly (`1h30m`, `45s`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if sec > 0 || out.is_empty() {
        out += &format!("{sec}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_the_issue_and_the_original_config() {
        assert_eq!(parse_size("4GB"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096MiB"), Ok(4 << 30));
        assert_eq!(parse_size("4096mb"), Ok(4 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes_are_refused_with_an_example() {
        for bad in ["lots", "", "4", "4XB", "GB", "-1G", "1.G", ".5G", "1e3M", "99999999999T", "0.3B"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.to_string().contains("4GiB"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2h"), Ok(Some(Duration::from_secs(7200))));
        assert_eq!(parse_duration("90m"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(parse_duration("1h30m"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(parse_duration("45s"), Ok(Some(Duration::from_secs(45))));
        assert_eq!(parse_duration("1d2h"), Ok(Some(Duration::from_secs(93600))));
        assert_eq!(parse_duration("0"), Ok(None));
        for bad in ["", "2", "h", "2x", "1h30", "-5m", "1.5h", "m30", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for b in [4u64 << 30, 512 << 20, 3 << 10] {
            assert_eq!(parse_size(&format_size(b)), Ok(b));
        }
        assert_eq!(format_size(471_150_592), "449.3MiB");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }
}
