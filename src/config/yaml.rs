//! The YAML reader: the one place that chooses the YAML crate (serde-saphyr) and its options,
//! for the configuration and anything else read as YAML.
//!
//! What it keeps from the YAML 1.2 rules the configuration has always been read with:
//! - anchors and aliases (`&routes` … `*routes`) and merge keys (`<<: *defaults`) work;
//! - only `true`/`false` (any case of the first letter, or all capitals) are booleans, so
//!   `on`, `yes` or `n` given for a boolean are errors rather than guesses;
//! - a key given twice in one mapping is an error;
//! - every error names the line and column it is at, on one line.
//!
//! Bounds, on top of the size and nesting checks made before parsing ([`super::limits`]):
//! aliases may replay at most [`MAX_ALIAS_EVENTS`] parse events in all (an "alias bomb",
//! where each anchor repeats the previous one several times, is refused once it has replayed
//! that many), and the parser's own budgets (one million events, 50,000 anchors and aliases)
//! apply.

use serde::de::DeserializeOwned;

/// The most parse events that aliases may replay in one document, over all aliases (the
/// shipped configurations replay under 100).
pub(crate) const MAX_ALIAS_EVENTS: usize = 100_000;

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_EVENTS,
        },
    }
}

/// Parses one YAML document into `T`. The error is one line that names the line and column.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| message(&e))
}

/// Writes `value` as YAML.
pub(crate) fn to_string<T: serde::Serialize>(value: &T) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(|e| e.to_string())
}

/// The error on one line, ending with its position (`at line L, column C`).
fn message(e: &serde_saphyr::Error) -> String {
    let text = e.render_with_formatter(&serde_saphyr::UserMessageFormatter);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
#[path = "yaml_tests.rs"]
mod tests;
