//! The file source: polls a file and re-reads it when it changed (a poll also sees atomic
//! renames, editors' replace-on-save and files on network mounts). With `watch` on (the
//! default), a change notification from the file's directory makes the poll happen at once
//! ([`watch`]); the `poll_interval` tick goes on beside it as the fallback.
//!
//! Each poll first compares the file's metadata with the last read: its size, modification
//! time and, on unix, its change time (`ctime`, which no `touch` can set back), inode and
//! device. Unchanged metadata means the content is not read again. A timestamp only moves
//! by its filesystem's granularity (2 s on FAT, 1 s on some NFS servers), so a same-size
//! rewrite right after a read could carry the very same metadata: a read is trusted only once
//! the file's newest timestamp is [`SETTLE`] older than the start of the poll that read it.
//! Until then every poll reads the file again. A file whose timestamps are in the future
//! (clock skew) is re-read on every poll until they are [`SETTLE`] in the past.
//!
//! A file larger than `max_value_bytes` is not read (kind `too_large`); the size is checked
//! before reading, and the read itself stops one byte past the limit (the file may grow).
//!
//! The value rules are [`super::KeyState`]'s, as for a KV key: an empty file (the window of
//! an editor's truncate-then-write), a half-written or malformed one is an error and the last
//! good state is kept; the next poll sees the complete file. A file that does not exist is
//! "not ready" until a first good read (kind `absent`), and a file deleted after one keeps the
//! last good state (kind `deleted`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::assignment::{self, check_size, parse};
use super::{KeyState, Publisher};
use crate::config::FileFormat;
use crate::model::SourceData;

mod watch;

/// How long after its last change a file's metadata is trusted to reveal the next change.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    changed: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            changed: u64::try_from(m.ctime()).ok().and_then(|s| {
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(s, m.ctime_nsec().clamp(0, 999_999_999) as u32))
            }),
            #[cfg(unix)]
            inode: (m.dev(), m.ino()),
        }
    }

    /// The newest of the file's timestamps.
    fn last_change(&self) -> Option<SystemTime> {
        #[cfg(unix)]
        return self.modified.max(self.changed);
        #[cfg(not(unix))]
        return self.modified;
    }

    /// Whether a later change is sure to give another stamp, for a read that started at `now`.
    fn settled(&self, now: SystemTime) -> bool {
        self.last_change()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= SETTLE)
    }
}

/// What the last poll saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Nothing,
    Missing,
    ReadError(String),
    TooLarge(Stamp),
    Content {
        stamp: Stamp,
        settled: bool,
        bytes: Vec<u8>,
    },
}

/// The file source's state between polls.
pub(crate) struct Watcher {
    path: PathBuf,
    format: FileFormat,
    what: String,
    key: KeyState,
    seen: Seen,
    /// How many times the content was read (a test checks unchanged files are not).
    reads: u64,
}

impl Watcher {
    pub(crate) fn new(path: PathBuf, format: FileFormat, max_value_bytes: usize) -> Watcher {
        Watcher {
            what: format!("file {:?}", path.display().to_string()),
            path,
            format,
            key: KeyState::new(max_value_bytes),
            seen: Seen::Nothing,
            reads: 0,
        }
    }

    /// Whether the content must be read: unless it was read with the same metadata, once
    /// the metadata had settled.
    fn unchanged(&self, stamp: &Stamp) -> bool {
        matches!(&self.seen, Seen::Content { stamp: s, settled: true, .. } if s == stamp)
            || matches!(&self.seen, Seen::TooLarge(s) if s == stamp)
    }

    fn read_error(&mut self, p: &Publisher, message: String) {
        // Reported once, not on every poll, until it changes or reading works.
        if !matches!(&self.seen, Seen::ReadError(m) if *m == message) {
            p.fail("read", message.clone());
            self.seen = Seen::ReadError(message);
        }
    }

    fn missing(&mut self, p: &Publisher) {
        if self.seen != Seen::Missing {
            self.key.apply(p, self.format, &self.what, None);
            self.seen = Seen::Missing;
        }
    }

    /// One poll; `now` is taken before it starts.
    pub(crate) async fn poll(&mut self, p: &Publisher, now: SystemTime) {
        let cannot = |e: std::io::Error| format!("cannot read {}: {e}", self.what);
        match tokio::fs::metadata(&self.path).await {
            Ok(m) if self.unchanged(&Stamp::of(&m)) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.missing(p),
            Err(e) => return self.read_error(p, cannot(e)),
        }
        // The stamp kept is that of the file opened, which a rename may have replaced since.
        let mut f = match tokio::fs::File::open(&self.path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.missing(p),
            Err(e) => return self.read_error(p, cannot(e)),
        };
        let stamp = match f.metadata().await {
            Ok(m) if !m.is_file() => return self.read_error(p, format!("{} is not a regular file", self.what)),
            Ok(m) => Stamp::of(&m),
            Err(e) => return self.read_error(p, cannot(e)),
        };
        let max = self.key.max_value_bytes();
        if check_size(stamp.len, max).is_err() {
            if self.seen != Seen::TooLarge(stamp) {
                let e = assignment::ParseError::TooLarge { len: stamp.len, max };
                self.key.too_large(p, &self.what, e.to_string());
                self.seen = Seen::TooLarge(stamp);
            }
            return;
        }
        let mut bytes = Vec::with_capacity(stamp.len.min(max as u64) as usize);
        self.reads += 1;
        if let Err(e) = (&mut f).take(max as u64 + 1).read_to_end(&mut bytes).await {
            return self.read_error(p, cannot(e));
        }
        if bytes.len() > max {
            // It grew past the limit while being read.
            let why = format!("grew over the limit of {max} bytes (max_value_bytes) while being read");
            self.key.too_large(p, &self.what, why);
            self.seen = Seen::TooLarge(stamp);
            return;
        }
        let settled = stamp.settled(now);
        if let Seen::Content { bytes: old, .. } = &self.seen {
            if *old == bytes {
                self.seen = Seen::Content { stamp, settled, bytes };
                return;
            }
        }
        self.key.apply(p, self.format, &self.what, Some(&bytes));
        self.seen = Seen::Content { stamp, settled, bytes };
    }
}

/// Logged when the watch ends with the directory (or lost events) and is set up again.
const WATCH_ENDED: &str =
    "the file's directory was removed or moved, or change notifications were lost; polling, and watching it again";

/// Polls at once on a notification from the file's directory (when `watch` is on and the
/// platform allows it), and every `poll` whatever happens (see [`watch`]).
pub(crate) async fn run(p: Publisher, mut w: Watcher, poll: Duration, mut watch: bool, shutdown: CancellationToken) {
    let mut notes = None;
    let mut watch_error = None;
    if watch {
        try_watch(&w, &mut notes, &mut watch_error);
    }
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An in-place write seen and not closed yet: poll at this time at the latest.
    let mut write_due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            wake = next(&mut notes) => match wake {
                Ok(watch::Wake::Now) => {}
                Ok(watch::Wake::AfterWrite) => {
                    write_due.get_or_insert_with(|| tokio::time::Instant::now() + watch::WRITE_GRACE);
                    continue;
                }
                // The directory went away, or events were lost: poll now (it says what became
                // of the file), and watch again after each poll until the directory is back.
                Ok(watch::Wake::Gone) => {
                    tracing::info!(file = %w.what, "{WATCH_ENDED}");
                    notes = None;
                }
                // The events cannot be read (not expected of inotify): the source polls alone
                // from now on, said once.
                Err(e) => {
                    tracing::warn!(file = %w.what, error = %e, "the file's change notifications stopped; polling every poll_interval from now on");
                    notes = None;
                    watch = false;
                    continue;
                }
            },
            _ = sleep_until(write_due), if write_due.is_some() => {}
        }
        write_due = None;
        // Whatever was queued happened before this poll, which covers it; the end of the
        // watch among it is not dropped (an unreadable watch also ends here, and the next
        // one, if it fails too, ends polling-only in the select above).
        if notes.as_mut().is_some_and(watch::Watch::drain) {
            tracing::info!(file = %w.what, "{WATCH_ENDED}");
            notes = None;
        }
        w.poll(&p, SystemTime::now()).await;
        if watch && notes.is_none() {
            // The directory may exist now.
            try_watch(&w, &mut notes, &mut watch_error);
        }
    }
}

/// Starts the watch; a failure is logged once per distinct error, and the source polls.
fn try_watch(w: &Watcher, notes: &mut Option<watch::Watch>, error: &mut Option<String>) {
    match watch::start(&w.path) {
        Ok(n) => {
            tracing::debug!(file = %w.what, dirs = ?n.dirs, "watching the file's directory for changes");
            if error.take().is_some() {
                tracing::info!(file = %w.what, "watching the file's directory for changes again");
            }
            *notes = Some(n);
        }
        Err(e) => {
            if error.as_deref() != Some(e.as_str()) {
                tracing::warn!(file = %w.what, error = %e, "cannot watch the file for changes; polling every poll_interval");
                *error = Some(e);
            }
        }
    }
}

async fn next(notes: &mut Option<watch::Watch>) -> Result<watch::Wake, String> {
    match notes {
        Some(n) => n.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Reads the file once (for `render`): what `serve` would deliver first, or why it would not
/// be ready.
pub(crate) fn read_once(path: &Path, format: FileFormat, max_value_bytes: usize) -> Result<SourceData, String> {
    use std::io::Read;
    let at = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist (serve would not be ready)", path.display()),
        _ => format!("cannot read {}: {e}", path.display()),
    };
    let f = std::fs::File::open(path).map_err(at)?;
    let len = f.metadata().map_err(at)?.len();
    check_size(len, max_value_bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(max_value_bytes as u64 + 1).read_to_end(&mut bytes).map_err(at)?;
    check_size(bytes.len() as u64, max_value_bytes)
        .and_then(|()| parse(format, &bytes))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod watch_tests;
