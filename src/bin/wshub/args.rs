//! The CLI's value parsers: durations (`500ms`, `2s`) and byte sizes (`64KiB`), as the
//! flags write them. They belong to the binary, not to the library's API.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Parses a listen address: `127.0.0.1:8080`, `[::1]:8080`, `0.0.0.0:8080`, or a host
/// name with a port (`localhost:8080`), resolved now; the first address it resolves to
/// is used. An error only when nothing resolves.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(format!(
            "{text:?} has no port (examples: 127.0.0.1:8080, localhost:8080)"
        ));
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// Parses a duration as the CLI writes it: `500ms`, `2s`, `1m`, `1h`, or a bare number
/// of seconds (`30`). Fractions are allowed (`1.5s`).
///
/// ```text
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (num, unit) = number_and_unit(text, |c| c.is_ascii_digit() || c == '.');
    if num.is_empty() {
        return Err(format!("invalid duration {text:?} (examples: 500ms, 2s, 1m, 30)"));
    }
    let Some(scale) = scale_of(DURATION_UNITS, unit) else {
        return Err(format!(
            "unknown duration unit {unit:?} in {text:?} (use ms, s, m or h)"
        ));
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (examples: 500ms, 2s, 1m, 30)"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("duration {text:?} is out of range"))
}

/// The units of a duration, as written (case matters: `m` is a minute), in seconds.
const DURATION_UNITS: &[(&str, f64)] = &[
    ("", 1.0),
    ("s", 1.0),
    ("sec", 1.0),
    ("secs", 1.0),
    ("ms", 0.001),
    ("m", 60.0),
    ("min", 60.0),
    ("h", 3600.0),
];

/// Parses a switch as the CLI writes it: `on`/`off` (also `true`/`false`, `yes`/`no`).
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, not {text:?}")),
    }
}

/// Parses a byte size as the CLI writes it: `64KiB`, `16MiB`, `1GiB`, `512B`, `64KB`
/// (decimal) or a bare byte count.
///
/// ```text
/// assert_eq!(parse_size("64KiB"), Ok(65536));
/// assert_eq!(parse_size("1000"), Ok(1000));
/// assert!(parse_size("lots").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<usize, String> {
    let (num, unit) = number_and_unit(text, |c| c.is_ascii_digit());
    let Some(scale) = scale_of(SIZE_UNITS, &unit.to_ascii_lowercase()) else {
        return Err(format!(
            "unknown size unit in {text:?} (examples: 512, 64KiB, 16MiB)"
        ));
    };
    let value: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?} (examples: 512, 64KiB, 16MiB)"))?;
    value
        .checked_mul(scale)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// The units of a size, in lower case (any case is accepted), in bytes.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("kb", 1000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
];

/// A number and its unit, as the flags write durations and sizes: the text (trimmed) up
/// to the first character `in_number` refuses, and the rest (trimmed), which may be
/// empty.
fn number_and_unit(text: &str, in_number: fn(char) -> bool) -> (&str, &str) {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !in_number(c)).unwrap_or(t.len()));
    (num, unit.trim())
}

/// The scale of `unit` in a table of units, or `None` when it is not one of them.
fn scale_of<S: Copy>(units: &[(&str, S)], unit: &str) -> Option<S> {
    units
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|&(_, scale)| scale)
}

/// A secret from the flag, else from the file (trimmed), else none.
pub fn read_secret(
    flag: Option<String>,
    file: Option<PathBuf>,
    what: &str,
) -> Result<Option<String>, String> {
    match (flag, file) {
        (Some(s), _) => Ok(Some(s)),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display())),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_ips_or_resolve_as_host_names() {
        assert_eq!(
            parse_addr("127.0.0.1:8080"),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(parse_addr("[::1]:8080"), Ok("[::1]:8080".parse().unwrap()));
        assert_eq!(parse_addr("0.0.0.0:0"), Ok("0.0.0.0:0".parse().unwrap()));
        let local = parse_addr("localhost:8080").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 8080, "{local}");
        assert!(parse_addr("localhost").unwrap_err().contains("no port"));
        assert!(
            parse_addr("no-such-host.invalid:80")
                .unwrap_err()
                .contains("cannot resolve")
        );
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5x", "-1s", "1e999"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("2kb"), Ok(2000));
        assert_eq!(parse_size("123"), Ok(123));
        for bad in ["", "1.5MiB", "99999999999999999999", "18446744073709551615GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn duration_units_are_case_sensitive_and_may_stand_apart() {
        assert_eq!(parse_duration(" 3 sec "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("10secs"), Ok(Duration::from_secs(10)));
        assert!(
            parse_duration("5MS")
                .unwrap_err()
                .contains("unknown duration unit \"MS\"")
        );
    }

    #[test]
    fn size_units_are_case_insensitive_and_may_stand_apart() {
        assert_eq!(parse_size(" 2 K "), Ok(2048));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("1Gb"), Ok(1_000_000_000));
    }

    #[test]
    fn duration_errors_say_what_is_wrong_with_the_text() {
        for (text, err) in [
            ("soon", r#"invalid duration "soon" (examples: 500ms, 2s, 1m, 30)"#),
            ("", r#"invalid duration "" (examples: 500ms, 2s, 1m, 30)"#),
            ("5x", r#"unknown duration unit "x" in "5x" (use ms, s, m or h)"#),
            (
                "1.2.3s",
                r#"invalid duration "1.2.3s" (examples: 500ms, 2s, 1m, 30)"#,
            ),
            (
                "1e999",
                r#"unknown duration unit "e999" in "1e999" (use ms, s, m or h)"#,
            ),
            (
                "99999999999999999999999h",
                r#"duration "99999999999999999999999h" is out of range"#,
            ),
        ] {
            assert_eq!(parse_duration(text), Err(err.to_owned()), "{text:?}");
        }
    }

    #[test]
    fn size_errors_say_what_is_wrong_with_the_text() {
        for (text, err) in [
            (
                "lots",
                r#"unknown size unit in "lots" (examples: 512, 64KiB, 16MiB)"#,
            ),
            ("KiB", r#"invalid size "KiB" (examples: 512, 64KiB, 16MiB)"#),
            (
                "1.5MiB",
                r#"unknown size unit in "1.5MiB" (examples: 512, 64KiB, 16MiB)"#,
            ),
            (
                "99999999999999999999",
                r#"invalid size "99999999999999999999" (examples: 512, 64KiB, 16MiB)"#,
            ),
            ("20000000000GiB", r#"size "20000000000GiB" is too large"#),
        ] {
            assert_eq!(parse_size(text), Err(err.to_owned()), "{text:?}");
        }
    }
}
