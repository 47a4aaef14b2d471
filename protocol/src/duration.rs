//! Durations as written in resources and files: `500ms`, `30s`, `5m`, `1h`, `1h30m`.
//!
//! Written by hand rather than with `humantime`: the accepted grammar must be
//! exactly the one the CRD schema's pattern enforces ([`PATTERN`]), and it must
//! serialize back to the same compact form; humantime accepts and prints more.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression a duration string must match (used in CRD schemas).
pub const PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// A non-negative duration that (de)serializes as a compact string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: expected a number followed by ms, s, m or h, as in 500ms, 30s, 5m, 1h30m"
)]
pub struct ParseDurationError {
    input: String,
}

impl Duration {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// A duration of `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    /// The standard-library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError {
            input: input.to_string(),
        };
        let mut rest = input;
        let mut total_ms: u64 = 0;
        if rest.is_empty() {
            return Err(err());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let (unit_ms, len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('s') {
                (1_000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else {
                return Err(err());
            };
            rest = &rest[len..];
            total_ms = value
                .checked_mul(unit_ms)
                .and_then(|v| total_ms.checked_add(v))
                .ok_or_else(err)?;
        }
        Ok(Self::from_millis(total_ms))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let mut rest = ms;
        for (unit, suffix) in [(3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")] {
            if rest >= unit {
                write!(f, "{}{}", rest / unit, suffix)?;
                rest %= unit;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("500ms".parse(), Ok(Duration::from_millis(500)));
        assert_eq!("30s".parse(), Ok(Duration::from_secs(30)));
        assert_eq!("5m".parse(), Ok(Duration::from_secs(300)));
        assert_eq!("1h".parse(), Ok(Duration::from_secs(3600)));
        assert_eq!("1h30m".parse(), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for bad in ["", "5", "s", "5 s", "-1s", "1.5s", "1d", "1hm"] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
        }
    }
}
