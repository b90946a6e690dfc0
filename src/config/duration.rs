//! Durations in configuration: `250ms`, `5s`, `1m`, `1h`, or combinations such as `1m30s`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as text (`250ms`, `5s`, `1m30s`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Dur(pub(crate) Duration);

/// A route timeout: a duration, or `none` for no timeout (long-lived gRPC streams).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    None,
    After(Duration),
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration {s:?}: missing a unit (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("invalid duration {s:?}: expected a number"));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: bad number {:?}", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)"
                ))
            }
        };
        if !secs.is_finite() || secs > 1.0e9 {
            return Err(format!("invalid duration {s:?}: out of range"));
        }
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

struct DurVisitor;

impl Visitor<'_> for DurVisitor {
    type Value = Dur;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration such as 250ms, 5s or 1m")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
        parse_duration(v).map(Dur).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
        Err(E::custom(format!(
            "invalid duration {v}: give a unit, e.g. \"{v}s\" or \"{v}ms\""
        )))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
        self.visit_u64(v.unsigned_abs())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
        Err(E::custom(format!("invalid duration {v}: give a unit, e.g. \"{v}s\"")))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurVisitor)
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 15s, or none")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timeout, E> {
                if v.trim().eq_ignore_ascii_case("none") {
                    Ok(Timeout::None)
                } else {
                    parse_duration(v).map(Timeout::After).map_err(E::custom)
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
                DurVisitor.visit_u64(v).map(|d| Timeout::After(d.0))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Timeout, E> {
                Ok(Timeout::None)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn rejects_bad_durations_with_a_reason() {
        for bad in ["", "5", "abc", "5x", "ms", "1e999s"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn timeout_accepts_none() {
        let t: Timeout = crate::config::yaml::from_str("none").expect("none");
        assert_eq!(t, Timeout::None);
        let t: Timeout = crate::config::yaml::from_str("15s").expect("15s");
        assert_eq!(t, Timeout::After(Duration::from_secs(15)));
        assert!(crate::config::yaml::from_str::<Timeout>("15").is_err());
    }
}
