//! What the benchmark examples share (`loadgen`, `switchbench`, `rawlimit`): the runtime and
//! exit code around their `run`, percentiles, free loopback ports, log tails. Each example
//! includes it with `mod common;` and uses what it needs.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

/// Runs `run` on a multi-threaded runtime (`workers` threads, or one per core) and turns its
/// outcome into the exit code, printing `name: error: ...` on failure.
pub fn main_with(name: &str, workers: Option<usize>, run: impl Future<Output = Result<()>>) -> ExitCode {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    let rt = match b.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The nearest-rank percentile of sorted values (`q` in 0..=1); NaN when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A loopback port free at the time of asking.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
