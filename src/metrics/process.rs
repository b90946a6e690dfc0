//! The standard process metrics, under the names Prometheus client libraries give them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read from `/proc/self`
//! at each scrape. Where `/proc` cannot be read (not Linux), a metric is left out.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): 100 on every Linux architecture's
/// user ABI, whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// The process figures; `None` for what could not be read.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) resident_bytes: Option<f64>,
    pub(crate) virtual_bytes: Option<f64>,
    pub(crate) open_fds: Option<f64>,
    pub(crate) max_fds: Option<f64>,
    pub(crate) start_time_seconds: Option<f64>,
}

impl Sample {
    pub(crate) fn read() -> Sample {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let stat = read("/proc/self/stat").and_then(|s| parse_stat(&s));
        let status = read("/proc/self/status");
        let kib = |key: &str| status.as_deref().and_then(|s| status_kib(s, key)).map(|k| k * 1024.0);
        let boot = read("/proc/stat").and_then(|s| boot_time(&s));
        Sample {
            cpu_seconds: stat.map(|s| s.cpu_ticks / USER_HZ),
            resident_bytes: kib("VmRSS:"),
            virtual_bytes: kib("VmSize:"),
            // Counts the descriptor `read_dir` itself holds, as other clients do.
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64),
            max_fds: read("/proc/self/limits").and_then(|s| max_open_files(&s)),
            start_time_seconds: stat.zip(boot).map(|(s, b)| b + s.start_ticks / USER_HZ),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Stat {
    cpu_ticks: f64,
    start_ticks: f64,
}

/// `utime + stime` (fields 14, 15) and `starttime` (field 22) of `/proc/<pid>/stat`. The
/// command name (field 2) is in parentheses and may hold spaces and parentheses itself, so the
/// fields are counted from the last `)`.
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
}

/// A `Key:   N kB` line of `/proc/<pid>/status`, in KiB.
fn status_kib(s: &str, key: &str) -> Option<f64> {
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// `btime` of `/proc/stat`: the boot time, Unix seconds.
fn boot_time(s: &str) -> Option<f64> {
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (`unlimited` is left out).
fn max_open_files(s: &str) -> Option<f64> {
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Encodes a [`Sample`] read at each scrape. Registered in a registry without the
/// `voltha_xds_` prefix.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = Sample::read();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                s.resident_bytes,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
            ),
            (
                s.virtual_bytes,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
            ),
            (s.open_fds, "process_open_fds", "Number of open file descriptors"),
            (s.max_fds, "process_max_fds", "Maximum number of open file descriptors"),
            (
                s.start_time_seconds,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
            ),
        ];
        for (v, name, help) in gauges {
            if let Some(v) = v {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and parentheses; utime 250, stime 50, starttime 12345.
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 12345 \
                    123456789 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.cpu_ticks, 300.0);
        assert_eq!(s.start_ticks, 12345.0);
        assert!(parse_stat("4242 (truncated").is_none());
        assert!(parse_stat("4242 (x) S 1 2").is_none());
    }

    #[test]
    fn status_limits_and_boot_time() {
        let status = "Name:\tvoltha-xds\nVmSize:\t  123456 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(20480.0));
        assert_eq!(status_kib(status, "VmSize:"), Some(123456.0));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        assert_eq!(max_open_files("Max open files  unlimited unlimited files\n"), None);
        assert_eq!(boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"), Some(1.7e9));
    }

    /// This process's own figures: plausible, and the descriptor count follows files opened.
    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let before = Sample::read();
        let files: Vec<std::fs::File> = (0..32)
            .filter_map(|_| std::fs::File::open("/proc/self/stat").ok())
            .collect();
        assert_eq!(files.len(), 32);
        let after = Sample::read();
        let (b, a) = (before.open_fds.expect("fds"), after.open_fds.expect("fds"));
        // Other tests of this binary open and close files meanwhile; 32 more is the floor
        // give or take what they hold.
        assert!(a >= b + 16.0, "{b} -> {a}");
        assert!(a <= after.max_fds.expect("max fds"), "{after:?}");
        assert!(after.resident_bytes.expect("rss") > 1_000_000.0, "{after:?}");
        assert!(after.virtual_bytes.expect("vsz") >= after.resident_bytes.expect("rss"));
        assert!(after.cpu_seconds.expect("cpu") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let start = after.start_time_seconds.expect("start");
        assert!(start <= now + 1.0 && start > now - 3600.0, "start {start}, now {now}");
        drop(files);
    }
}
