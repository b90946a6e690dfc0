//! What starts a reload: SIGHUP, and a periodic check of the `--config` file.
//!
//! The check runs every `server.config_reload_interval` (1 s by default; `0s` turns it off,
//! SIGHUP still reloads). Each check resolves the path again (`stat` follows symlinks), so a
//! Kubernetes ConfigMap update, which swaps the `..data` symlink to a new directory, is seen
//! as a new file. The file's metadata (size, modification and change times, device and inode)
//! is compared with the last check's. A file whose metadata changed is left for one interval:
//! it is read only once a check finds the same metadata as the one before, so a save in place
//! (truncate, then write) or a file removed for a moment by an editor is not taken half way.
//! The content is then read, and also while the metadata changed less than [`SETTLE`] ago (a
//! timestamp moves by its filesystem's granularity); only a content different from the last
//! one read for a reload reloads: a `touch` does not. A change is thus applied one to two
//! intervals after it is made.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Reloader, Trigger};

/// How long after its last change a file's metadata is trusted to reveal the next change.
const SETTLE: Duration = Duration::from_secs(2);

/// The most bytes read from the configuration file: one past the 4 MiB `Config::load` accepts,
/// enough to tell that a file is too large.
const MAX_READ: u64 = 4 * 1024 * 1024 + 1;

/// The file's content, at most [`MAX_READ`] bytes; `None` when it cannot be read.
pub(crate) fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut out = Vec::new();
    file.take(MAX_READ).read_to_end(&mut out).ok()?;
    Some(out)
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    changed: (i64, i64),
    #[cfg(unix)]
    inode: (u64, u64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            changed: (m.ctime(), m.ctime_nsec()),
            #[cfg(unix)]
            inode: (m.dev(), m.ino()),
        })
    }

    /// Whether a later change is sure to give another stamp.
    fn settled(&self, now: SystemTime) -> bool {
        #[cfg(unix)]
        let changed = u64::try_from(self.changed.0)
            .ok()
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        #[cfg(not(unix))]
        let changed: Option<SystemTime> = None;
        self.modified
            .max(changed)
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= SETTLE)
    }
}

/// SIGHUP's handler, installed before the server starts so that a SIGHUP during start-up is
/// kept (and reloads once [`spawn`] runs) instead of ending the process.
pub struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Installs the handler (within a Tokio runtime). A failure is logged; the file is still
    /// checked.
    pub fn install() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .map_err(
                    |e| tracing::warn!(error = %e, "cannot handle SIGHUP; the configuration file is still checked"),
                )
                .ok();
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }
}

/// Starts the SIGHUP handler and, with a file, its periodic check. Both end with `shutdown`.
/// `path` is the `--config` file and the content the running configuration was parsed from.
pub async fn spawn(
    reloader: Arc<Reloader>,
    path: Option<(PathBuf, Vec<u8>)>,
    hangup: Hangup,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let path = match path {
        Some((p, applied)) => {
            reloader.set_path(&p, applied).await;
            tasks.push(tokio::spawn(watch(reloader.clone(), p.clone(), shutdown.clone())));
            Some(p)
        }
        None => None,
    };
    #[cfg(unix)]
    if let Some(mut hup) = hangup.signal {
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                match &path {
                    Some(p) => {
                        reloader.reload_file(p, Trigger::Signal).await;
                    }
                    None => tracing::info!(
                        "SIGHUP: the running configuration is the embedded default (no --config); \
                         there is nothing to reload"
                    ),
                }
            }
        }));
    }
    #[cfg(not(unix))]
    let _ = (hangup, path);
    tasks
}

/// Checks the file every `server.config_reload_interval` of the running configuration.
async fn watch(reloader: Arc<Reloader>, path: PathBuf, shutdown: CancellationToken) {
    let mut configs = reloader.live().subscribe();
    let mut last: Option<Stamp> = Stamp::of(&path);
    // The metadata changed and the content was not read since.
    let mut pending = false;
    loop {
        let every = reloader.live().config().server.config_reload_interval.0;
        if every.is_zero() {
            // Off: wait for a configuration (applied by SIGHUP) that turns it on.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = configs.changed() => if r.is_err() { return },
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let p = path.clone();
        let (stamp, now) = match tokio::task::spawn_blocking(move || (Stamp::of(&p), SystemTime::now())).await {
            Ok(r) => r,
            Err(_) => continue,
        };
        if stamp != last {
            // Changed since the last check: read it once it stays as it is for a whole interval.
            last = stamp;
            pending = true;
            continue;
        }
        if !pending && stamp.is_some_and(|s| s.settled(now)) {
            continue;
        }
        pending = false;
        reloader.reload_if_changed(&path).await;
    }
}
