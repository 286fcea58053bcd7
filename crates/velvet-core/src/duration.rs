//! Durations as operators write them in `velvet.yaml`: `0s`, `100ms`, `15m`, `90d`, `1h30m`.

use std::time::Duration;

const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// Why a duration did not parse; the message tells the operator what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a duration: write a number and a unit, like 30s, 15m, 12h or 90d (units: ms, s, m, h, d, w)"
)]
pub struct DurationError {
    input: String,
}

/// Parses `15m`, `1h30m`, `100ms`. A bare `0` is accepted; any other bare number is not, because
/// `grace_period: 15` is ambiguous and a wrong guess could revoke a credential too early.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let (_, millis) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(err)?;
        total = number
            .checked_mul(*millis)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration in the largest units that represent it exactly: `90d`, `1h30m`, `250ms`.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in UNITS.iter().rev() {
        if *unit == "w" {
            continue; // weeks read worse than days in status output
        }
        if ms >= *size {
            out.push_str(&format!("{}{}", ms / size, unit));
            ms %= size;
        }
    }
    out
}

/// Serde helpers so specs stored as JSON keep the operator's notation.
pub mod serde_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_str(&super::super::format(*d)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| super::super::parse(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_compounds() {
        let cases = [
            ("0s", 0),
            ("0", 0),
            ("100ms", 100),
            ("30s", 30_000),
            ("15m", 900_000),
            ("2h", 7_200_000),
            ("90d", 7_776_000_000),
            ("1w", 604_800_000),
            ("1h30m", 5_400_000),
            (" 5s ", 5_000),
        ];
        for (input, ms) in cases {
            assert_eq!(parse(input).unwrap(), Duration::from_millis(ms), "{input}");
        }
    }

    #[test]
    fn rejects_ambiguous_or_malformed_input() {
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "1.5h",
            "-5s",
            "15 m",
            "h1",
            "99999999999999999999d",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("units: ms, s, m, h, d, w"), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["0s", "100ms", "15m", "90d", "1h30m", "1d2h3m4s5ms"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
