//! Push latency and time to ACK over the last hour, for the status page's chart: the two
//! histograms (`voltha_xds_push_latency_seconds`, `voltha_xds_time_to_ack_seconds`, summed over
//! their `type` label) are sampled once a minute, and each minute's median and 99th percentile
//! are estimated from the difference of its two samples, as Prometheus' `histogram_quantile`
//! does. The latest point covers the time since the last sample. At most an hour of samples
//! is kept.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// How often the histograms are sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Samples kept: an hour's, and the one before.
const KEPT: usize = 61;

const PUSH: &str = "voltha_xds_push_latency_seconds";
const ACK: &str = "voltha_xds_time_to_ack_seconds";

/// A histogram's cumulative state: `(upper bound, cumulative count)` per bucket, `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// The `<name>_bucket` lines of a text exposition, summed over their other labels.
    fn parse(text: &str, name: &str) -> Buckets {
        let prefix = format!("{name}_bucket{{");
        let mut by_le: Vec<(f64, u64)> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Some(le) = labels.split(',').find_map(|l| l.strip_prefix("le=\"")) else {
                continue;
            };
            let le: f64 = match le.trim_end_matches('"') {
                "+Inf" => f64::INFINITY,
                v => match v.parse() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            let Ok(n) = value.trim().parse::<f64>() else {
                continue;
            };
            match by_le.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += n as u64,
                None => by_le.push((le, n as u64)),
            }
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(by_le)
    }

    fn count(&self) -> u64 {
        self.0.last().map_or(0, |b| b.1)
    }

    /// What was observed since `earlier`.
    fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, c)| {
                    let before = earlier.0.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                    (le, c.saturating_sub(before))
                })
                .collect(),
        )
    }

    /// The `q` quantile, interpolated linearly within its bucket (Prometheus'
    /// `histogram_quantile`); in the `+Inf` bucket, the largest finite bound. `None` without
    /// observations.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut lower = (0.0, 0u64);
        for &(le, c) in &self.0 {
            if c as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = (c - lower.1) as f64;
                let frac = if in_bucket == 0.0 {
                    1.0
                } else {
                    (rank - lower.1 as f64) / in_bucket
                };
                return Some(lower.0 + (le - lower.0) * frac);
            }
            lower = (le, c);
        }
        Some(lower.0)
    }
}

#[derive(Debug, Clone)]
struct Sample {
    at: f64,
    push: Buckets,
    ack: Buckets,
}

impl Sample {
    fn take(metrics: &Metrics) -> Sample {
        let text = metrics.render();
        Sample {
            at: super::view::secs(SystemTime::now()),
            push: Buckets::parse(&text, PUSH),
            ack: Buckets::parse(&text, ACK),
        }
    }
}

/// One interval of the chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyPoint {
    /// The interval's end (Unix seconds).
    pub at: f64,
    pub seconds: f64,
    pub push: Quantiles,
    pub ack: Quantiles,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

fn quantiles(b: &Buckets) -> Quantiles {
    Quantiles {
        count: b.count(),
        p50: b.quantile(0.5),
        p99: b.quantile(0.99),
    }
}

/// The samples of the last hour.
#[derive(Debug, Default)]
pub(crate) struct LatencyLog {
    samples: Mutex<VecDeque<Sample>>,
}

impl LatencyLog {
    fn record(&self, s: Sample) {
        let mut q = self.samples.lock();
        q.push_back(s);
        while q.len() > KEPT {
            q.pop_front();
        }
    }

    /// Takes a sample now and then every [`SAMPLE_EVERY`] until the log is dropped.
    pub async fn follow(log: Weak<LatencyLog>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(log) = log.upgrade() else { return };
            log.record(Sample::take(&metrics));
        }
    }

    /// One point per interval between samples, and one from the last sample to `now`.
    pub fn points(&self, metrics: &Metrics) -> Vec<LatencyPoint> {
        let now = Sample::take(metrics);
        let q = self.samples.lock();
        let mut out = Vec::with_capacity(q.len());
        for (a, b) in q.iter().zip(q.iter().skip(1).chain(std::iter::once(&now))) {
            let push = b.push.since(&a.push);
            let ack = b.ack.since(&a.ack);
            out.push(LatencyPoint {
                at: b.at,
                seconds: (b.at - a.at).max(0.0),
                push: quantiles(&push),
                ack: quantiles(&ack),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE voltha_xds_time_to_ack_seconds histogram
voltha_xds_time_to_ack_seconds_sum{type=\"cds\"} 0.5
voltha_xds_time_to_ack_seconds_count{type=\"cds\"} 10
voltha_xds_time_to_ack_seconds_bucket{le=\"0.001\",type=\"cds\"} 0
voltha_xds_time_to_ack_seconds_bucket{le=\"0.002\",type=\"cds\"} 4
voltha_xds_time_to_ack_seconds_bucket{le=\"0.004\",type=\"cds\"} 10
voltha_xds_time_to_ack_seconds_bucket{le=\"+Inf\",type=\"cds\"} 10
voltha_xds_time_to_ack_seconds_bucket{type=\"eds\",le=\"0.001\"} 0
voltha_xds_time_to_ack_seconds_bucket{type=\"eds\",le=\"0.002\"} 0
voltha_xds_time_to_ack_seconds_bucket{type=\"eds\",le=\"0.004\"} 0
voltha_xds_time_to_ack_seconds_bucket{type=\"eds\",le=\"+Inf\"} 10
";

    #[test]
    fn buckets_are_summed_over_types_and_quantiles_interpolated() {
        let b = Buckets::parse(TEXT, ACK);
        assert_eq!(
            b,
            Buckets(vec![(0.001, 0), (0.002, 4), (0.004, 10), (f64::INFINITY, 20)])
        );
        assert_eq!(b.count(), 20);
        // Rank 10 of 20 is the last of the (0.002, 0.004] bucket.
        assert_eq!(b.quantile(0.5), Some(0.004));
        // Rank 2 of 20: half-way through (0.001, 0.002].
        assert_eq!(b.quantile(0.1), Some(0.0015));
        // Beyond the last finite bound: that bound.
        assert_eq!(b.quantile(0.99), Some(0.004));
        assert_eq!(Buckets::parse(TEXT, PUSH).quantile(0.5), None);

        let earlier = Buckets(vec![(0.001, 0), (0.002, 4), (0.004, 4), (f64::INFINITY, 14)]);
        let d = b.since(&earlier);
        assert_eq!(d, Buckets(vec![(0.001, 0), (0.002, 0), (0.004, 6), (f64::INFINITY, 6)]));
        assert_eq!(d.quantile(0.5), Some(0.003));
    }

    #[test]
    fn points_cover_each_interval_and_the_log_is_bounded() {
        let metrics = Metrics::new();
        let log = LatencyLog::default();
        assert!(log.points(&metrics).is_empty());
        for i in 0..KEPT + 5 {
            log.record(Sample {
                at: i as f64 * 60.0,
                push: Buckets(vec![(0.001, i as u64), (f64::INFINITY, i as u64)]),
                ack: Buckets::default(),
            });
        }
        let p = log.points(&metrics);
        // KEPT samples make KEPT - 1 intervals, and one more up to now.
        assert_eq!(p.len(), KEPT);
        assert_eq!(p[0].push.count, 1);
        assert_eq!(p[0].seconds, 60.0);
        assert_eq!(p[0].push.p50, Some(0.0005));
        assert_eq!(p[0].ack.p50, None);
    }
}
