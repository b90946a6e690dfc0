//! `--restart`: the reconnect storm after a control-plane restart.
//!
//! With every simulated Envoy in sync, the server gets SIGTERM (timed to its exit, with every
//! stream open), then the same command starts it again on the same ports. Each stream
//! reconnects as Envoy does: on a jittered exponential backoff (Envoy's xDS default, a wait
//! drawn from [0, 500 ms × 2^attempt), capped at 30 s), on a new stream whose first requests
//! carry what it holds (SotW: `version_info` of CDS and EDS with the EDS names; Delta:
//! `initial_resource_versions`). A server that derives its versions from content alone has
//! nothing to send: SotW streams are in sync once open, Delta streams once each type's first
//! (empty) response has come. Anything sent again is counted, and so is every version that
//! differs from the one held.
//!
//! Reported: the SIGTERM exit time and status, the time from the new process's start until
//! every stream is in sync again, the new server's peak RSS and CPU until then, streams
//! refused (RESOURCE_EXHAUSTED), and responses, resources and version changes sent again.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

use super::{cpu_seconds, mib, status_kib, wait_for, Event, Launch, ServerProc, Shared, Tally};

/// Reconnect attempts a stream makes before it gives up (and fails the run).
pub(crate) const MAX_ATTEMPTS: u32 = 40;

/// Envoy's xDS retry wait before attempt `attempt` (1-based): uniform in
/// [0, min(500 ms × 2^(attempt-1), 30 s)), drawn from a per-stream sequence.
pub(crate) fn envoy_backoff(idx: usize, attempt: u32) -> Duration {
    let ceiling_ms = 500u64
        .saturating_mul(1 << (attempt.saturating_sub(1)).min(6))
        .min(30_000);
    // splitmix64 of (stream, attempt): deterministic, different for every stream.
    let mut z = (idx as u64) << 8 ^ u64::from(attempt) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_millis(z % ceiling_ms)
}

/// What the streams report during the storm.
#[derive(Default)]
pub(crate) struct StormTally {
    pub(crate) disconnected: usize,
    pub(crate) refused: usize,
    pub(crate) reconnected: usize,
    pub(crate) last_reconnected: Option<Instant>,
    /// Responses to reconnected streams before the first change, the resources in them, and
    /// how many carried a version other than the one held.
    pub(crate) responses: usize,
    pub(crate) resources: usize,
    pub(crate) version_changes: usize,
}

pub(crate) struct StormReport {
    exit_ms: f64,
    exit_status: String,
    resync_s: f64,
    resync_after_ready_s: f64,
    peak_rss_kib: u64,
    cpu_s: f64,
    refused: usize,
    responses: usize,
    resources: usize,
    version_changes: usize,
}

impl StormReport {
    pub(crate) fn summary(&self, mode: &str, n: usize, conns: usize) -> String {
        format!(
            "STORM mode={mode} streams={n} conns={conns} sigterm_exit_ms={:.0} exit={} resync_s={:.2} resync_after_ready_s={:.2} peak_rss_mib={:.1} cpu_s={:.2} refused={} resent_responses={} resent_resources={} version_changes={}",
            self.exit_ms,
            self.exit_status,
            self.resync_s,
            self.resync_after_ready_s,
            mib(self.peak_rss_kib),
            self.cpu_s,
            self.refused,
            self.responses,
            self.resources,
            self.version_changes
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn storm(
    launch: &mut Launch,
    server: &mut ServerProc,
    shared: &Shared,
    ev_rx: &mut mpsc::UnboundedReceiver<Event>,
    tally: &mut Tally,
    n: usize,
    ticks: f64,
) -> Result<StormReport> {
    shared.reconnect.store(true, Ordering::SeqCst);

    // SIGTERM with every stream open; the server must end them and exit by itself.
    let pid = server.pid();
    let t_kill = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !ok.success() {
        bail!("kill -TERM {pid} failed");
    }
    let status = loop {
        if let Some(s) = server.child.try_wait().context("waiting for the server")? {
            break s;
        }
        if t_kill.elapsed() > Duration::from_secs(60) {
            bail!("the server did not exit within 60 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let exit_ms = t_kill.elapsed().as_secs_f64() * 1000.0;
    println!("restart: SIGTERM with {n} streams open: exited in {exit_ms:.0} ms ({status})");
    if !status.success() {
        bail!("the server exited with {status} on SIGTERM");
    }

    // The same server again, on the same ports.
    let t_start = Instant::now();
    *server = launch.start()?;
    let new_pid = server.pid();
    launch.wait_ready(server).await?;
    let ready_s = t_start.elapsed().as_secs_f64();
    println!("restart: new server pid {new_pid} ready in {ready_s:.2}s");

    wait_for(
        ev_rx,
        tally,
        server,
        Duration::from_secs(600),
        "every stream in sync with the new server",
        |t| t.storm.reconnected >= n,
        |t| {
            format!(
                "{}/{n} in sync again ({} disconnected, {} refused)",
                t.storm.reconnected, t.storm.disconnected, t.storm.refused
            )
        },
    )
    .await?;
    let cpu_s = cpu_seconds(new_pid, ticks)?;
    let peak_rss_kib = status_kib(Some(new_pid), "VmHWM")?;
    let last = tally.storm.last_reconnected.unwrap_or(t_start);
    // Late responses to the reconnects, then the streams fail loudly again.
    super::drain_for(ev_rx, tally, Duration::from_millis(500)).await;
    shared.reconnect.store(false, Ordering::SeqCst);
    let s = &tally.storm;
    let report = StormReport {
        exit_ms,
        exit_status: status.to_string().replace(' ', "_"),
        resync_s: last.saturating_duration_since(t_start).as_secs_f64(),
        resync_after_ready_s: (last.saturating_duration_since(t_start).as_secs_f64() - ready_s).max(0.0),
        peak_rss_kib,
        cpu_s,
        refused: s.refused,
        responses: s.responses,
        resources: s.resources,
        version_changes: s.version_changes,
    };
    println!(
        "restart: {n} streams in sync {:.2}s after the new server started ({:.2}s after /readyz); peak RSS {:.1} MiB; CPU {cpu_s:.2}s; refused {}; sent again: {} responses, {} resources, {} version changes",
        report.resync_s,
        report.resync_after_ready_s,
        mib(peak_rss_kib),
        s.refused,
        s.responses,
        s.resources,
        s.version_changes
    );
    Ok(report)
}
