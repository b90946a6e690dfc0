//! Strings from clients and peers, made safe to log, and the per-stream budget of log lines a
//! client can cause.
//!
//! A type URL, node id, cluster name, resource name or NACK text is whatever the client sent.
//! Written raw, a newline in it forges log lines and 64 KiB of it makes one line of 64 KiB.
//! [`Safe`] displays any value `{:?}`-style, quoted with control characters, quotes and
//! backslashes escaped, and cut after [`MAX_LOGGED_CHARS`] characters with an ellipsis and
//! the original length. It formats straight into the log line: nothing is copied first.
//!
//! [`LogBudget`] lets one stream log the first [`LOGGED_PER_STREAM`] events of each reason;
//! the rest are counted in `voltha_xds_stream_logs_suppressed_total{reason}` only (the events
//! themselves are counted in their own metrics in full).

use std::fmt::{self, Display, Write};

use crate::metrics::Metrics;

/// The most characters of one client-supplied value written to a log line.
pub(crate) const MAX_LOGGED_CHARS: usize = 256;

/// Per stream and reason, how many client-caused events are logged before the rest are only
/// counted.
pub(crate) const LOGGED_PER_STREAM: u32 = 10;

/// Displays a client- or peer-supplied value quoted, escaped and length-capped, e.g.
/// `"type.googleapis.com/x\n2099…"… (65536 bytes in all)`.
pub(crate) struct Safe<T>(pub(crate) T);

impl<T: Display> Display for Safe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        let mut w = Capped {
            out: f,
            chars: 0,
            bytes: 0,
        };
        // The value's own `Display` writes through the cap, which past it only counts.
        write!(w, "{}", self.0)?;
        let (chars, bytes) = (w.chars, w.bytes);
        if chars > MAX_LOGGED_CHARS {
            f.write_str("\"… (")?;
            write!(f, "{bytes}")?;
            return f.write_str(" bytes in all)");
        }
        f.write_char('"')
    }
}

impl<T: Display> fmt::Debug for Safe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

/// Writes escaped characters up to the cap, then only counts.
struct Capped<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    chars: usize,
    bytes: usize,
}

impl Write for Capped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes += s.len();
        for c in s.chars() {
            self.chars += 1;
            if self.chars > MAX_LOGGED_CHARS {
                continue;
            }
            match c {
                // As `{:?}` of a string: a single quote stays as it is.
                '\'' => self.out.write_char(c)?,
                _ => {
                    for e in c.escape_debug() {
                        self.out.write_char(e)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The reasons a client can make a stream log, each with its own budget.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Noise {
    /// A request for a type this server does not serve.
    UnknownType,
    /// A NACK.
    Nack,
}

impl Noise {
    const ALL: [Noise; 2] = [Noise::UnknownType, Noise::Nack];

    /// The `reason` label of `voltha_xds_stream_logs_suppressed_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Noise::UnknownType => "unknown_type",
            Noise::Nack => "nack",
        }
    }

    fn index(self) -> usize {
        match self {
            Noise::UnknownType => 0,
            Noise::Nack => 1,
        }
    }
}

/// What one stream may still log, per reason.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    logged: [u32; Noise::ALL.len()],
}

/// Whether to log an event.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Log,
    /// Log it, and say that the next ones of this reason on this stream are only counted.
    LogLast,
    /// Counted in `voltha_xds_stream_logs_suppressed_total`, not logged.
    Suppressed,
}

impl LogBudget {
    pub(crate) fn take(&mut self, noise: Noise, metrics: &Metrics) -> Verdict {
        let n = &mut self.logged[noise.index()];
        if *n >= LOGGED_PER_STREAM {
            metrics.log_suppressed(noise.label());
            return Verdict::Suppressed;
        }
        *n += 1;
        if *n == LOGGED_PER_STREAM {
            Verdict::LogLast
        } else {
            Verdict::Log
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORGED: &str = "type.googleapis.com/x\n2099-01-01T00:00:00Z ERROR voltha_xds::reconcile: FORGED";

    #[test]
    fn control_characters_are_escaped_and_the_value_quoted() {
        let out = Safe(FORGED).to_string();
        assert!(!out.contains('\n'));
        assert_eq!(out, format!("{FORGED:?}"), "as {{:?}} of a string");
        assert_eq!(Safe("a\r\tb\u{1b}[31m\"'\\").to_string(), r#""a\r\tb\u{1b}[31m\"'\\""#);
        assert_eq!(Safe("naïve ✓").to_string(), "\"naïve ✓\"");
        assert_eq!(Safe("").to_string(), "\"\"");
    }

    #[test]
    fn a_long_value_is_cut_with_its_length() {
        let long = "x".repeat(64 * 1024);
        let out = Safe(&long).to_string();
        assert_eq!(
            out,
            format!("\"{}\"… (65536 bytes in all)", "x".repeat(MAX_LOGGED_CHARS))
        );
        // Exactly at the cap: whole.
        let at = "é".repeat(MAX_LOGGED_CHARS);
        assert_eq!(Safe(&at).to_string(), format!("\"{at}\""));
        // Multi-byte characters are counted as characters and never split.
        let over = "é".repeat(MAX_LOGGED_CHARS + 1);
        assert_eq!(
            Safe(&over).to_string(),
            format!("\"{at}\"… ({} bytes in all)", over.len())
        );
        // Escapes do not count against the cap (they lengthen the output, at most ten-fold).
        let newlines = "\n".repeat(1000);
        assert!(Safe(&newlines).to_string().len() <= 2 * MAX_LOGGED_CHARS + 40);
    }

    #[test]
    fn any_display_value_goes_through_the_cap() {
        let e = crate::stream::StreamError::WrongType {
            expected: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            got: FORGED.to_string(),
        };
        let out = Safe(&e).to_string();
        assert!(!out.contains('\n'), "{out}");
        assert!(out.contains(r"x\n2099"), "{out}");
    }

    #[test]
    fn a_budget_logs_the_first_of_each_reason_and_counts_the_rest() {
        let m = Metrics::new();
        let mut b = LogBudget::default();
        let verdicts: Vec<Verdict> = (0..15).map(|_| b.take(Noise::UnknownType, &m)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Log).count(), 9);
        assert_eq!(verdicts[9], Verdict::LogLast);
        assert!(verdicts[10..].iter().all(|v| *v == Verdict::Suppressed));
        assert_eq!(b.take(Noise::Nack, &m), Verdict::Log, "each reason has its own budget");
        assert!(m
            .render("voltha_xds")
            .contains("voltha_xds_stream_logs_suppressed_total{reason=\"unknown_type\"} 5"));
    }
}
