//! The file source's change notifications: the file's directory is watched with Linux's
//! inotify, read through the runtime's own reactor (no thread of its own), and each event that
//! may concern the file wakes the poll loop, which then polls at once instead of at its next
//! tick. The poll decides, with every rule of [`super::Watcher`]; a notification never carries
//! content.
//!
//! The directory, not the file, is watched: that is where a rename into place (editors,
//! `mv`), a deletion and a Kubernetes ConfigMap update (a new `..data` symlink renamed over
//! the old one) show up. When the path is a symlink to a file in another directory, that
//! directory is watched too. An in-place write (truncate, then write) is polled when the writer
//! closes the file, or [`WRITE_GRACE`] after its first write if it keeps the file open, so that
//! the empty window between the truncation and the write is not read as a new value.
//!
//! Only changes are asked of inotify (`imp::MASK`): opens and reads are not, so the source's own
//! polls, which re-read the file while its timestamps settle, wake nothing (a general watcher
//! such as the `notify` crate asks for opens too, and woke its thread on every poll).
//!
//! Notifications are a fast path, never the only one: the poll loop keeps its
//! `poll_interval` tick (network filesystems send no notifications for remote writes; inotify
//! drops events when its queue overflows; a directory may not exist yet). Where there is no
//! inotify (not Linux), [`start`] says so and the source polls.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long after an in-place write that was not closed the file is polled.
pub(crate) const WRITE_GRACE: Duration = Duration::from_millis(100);

/// What an event asks of the poll loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Poll now: a rename, a creation, a deletion, a closed write, a lost event.
    Now,
    /// An in-place write in progress: poll when it is closed, or after [`WRITE_GRACE`].
    AfterWrite,
    /// The watch is over or incomplete: the watched directory itself was deleted or moved, or
    /// the kernel's queue overflowed (events, a `DELETE_SELF` among them, were lost). Poll
    /// now, and watch again (the directory may come back).
    Gone,
}

/// The directories to watch for `path`, and the file names in them that concern it: the
/// path's own directory (names: the file's, and the `..`-prefixed names of a ConfigMap
/// volume), and, for a symlink to a file elsewhere, the target's directory.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn targets(path: &Path) -> Vec<(PathBuf, OsString)> {
    let mut v = Vec::new();
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return v;
    };
    let dir = parent(path);
    v.push((dir.clone(), name.to_os_string()));
    if let Ok(real) = std::fs::canonicalize(path) {
        let real_dir = parent(&real);
        let inside = std::fs::canonicalize(&dir).is_ok_and(|d| real_dir.starts_with(d));
        if let (false, Some(real_name)) = (inside, real.file_name()) {
            v.push((real_dir, real_name.to_os_string()));
        }
    }
    v
}

/// Whether an event on this name may concern the file: one of its names, a `..` name (a
/// ConfigMap's `..data` swap), or no name at all (the directory itself, or a queue overflow:
/// anything may have changed).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn concerns(name: Option<&OsStr>, names: &[OsString]) -> bool {
    name.is_none_or(|n| names.iter().any(|m| m == n) || n.as_encoded_bytes().starts_with(b".."))
}

#[cfg(target_os = "linux")]
mod imp {
    use std::ffi::OsString;
    use std::path::PathBuf;

    use futures::{FutureExt, StreamExt};
    use inotify::{EventMask, EventStream, Inotify, WatchMask};

    use super::{concerns, targets, Wake};

    /// What is asked of inotify: every way the directory's entries or a file's content can
    /// change, and nothing that only reads (`OPEN`, `ACCESS`, `CLOSE_NOWRITE`).
    pub(super) const MASK: WatchMask = WatchMask::CREATE
        .union(WatchMask::DELETE)
        .union(WatchMask::MOVED_FROM)
        .union(WatchMask::MOVED_TO)
        .union(WatchMask::CLOSE_WRITE)
        .union(WatchMask::MODIFY)
        .union(WatchMask::ATTRIB)
        .union(WatchMask::DELETE_SELF)
        .union(WatchMask::MOVE_SELF);

    /// What an event of this mask asks for.
    pub(super) fn classify(mask: EventMask) -> Wake {
        let ended = EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED | EventMask::Q_OVERFLOW;
        if mask.intersects(ended) {
            Wake::Gone
        } else if mask.intersects(EventMask::MODIFY | EventMask::ATTRIB) && !mask.contains(EventMask::CLOSE_WRITE) {
            Wake::AfterWrite
        } else {
            // A closed write, a creation, a deletion, a rename.
            Wake::Now
        }
    }

    /// A live watch: the directories' events, read through the runtime's reactor.
    pub(crate) struct Watch {
        events: EventStream<Vec<u8>>,
        names: Vec<OsString>,
        /// The directories watched.
        pub(crate) dirs: Vec<PathBuf>,
    }

    impl Watch {
        /// The next event that concerns the file (a [`Wake::Gone`] always does); `Err` with
        /// the reason when the events cannot be read any more (the caller then polls at its
        /// tick, and watches again).
        pub(crate) async fn next(&mut self) -> Result<Wake, String> {
            loop {
                match self.events.next().await {
                    Some(Ok(ev)) => {
                        let wake = classify(ev.mask);
                        if wake == Wake::Gone || concerns(ev.name.as_deref(), &self.names) {
                            return Ok(wake);
                        }
                    }
                    Some(Err(e)) => return Err(format!("reading inotify: {e}")),
                    None => return Err("inotify closed".into()),
                }
            }
        }

        /// Drops the events already queued (the poll about to happen covers them); whether
        /// one of them ended the watch ([`Wake::Gone`], or the events cannot be read), which
        /// must not be dropped with the rest.
        pub(crate) fn drain(&mut self) -> bool {
            while let Some(next) = self.events.next().now_or_never() {
                match next {
                    Some(Ok(ev)) if classify(ev.mask) == Wake::Gone => return true,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return true,
                }
            }
            false
        }
    }

    /// Starts watching what concerns `path`. An error (no such directory, inotify's limits
    /// reached) says why; the caller then polls only. Needs the runtime (its reactor).
    pub(crate) fn start(path: &std::path::Path) -> Result<Watch, String> {
        let targets = targets(path);
        if targets.is_empty() {
            return Err(format!("{} names no file", path.display()));
        }
        let inotify = Inotify::init().map_err(|e| format!("inotify: {e}"))?;
        let mut dirs = Vec::new();
        for (dir, _) in &targets {
            inotify
                .watches()
                .add(dir, MASK)
                .map_err(|e| format!("cannot watch {:?}: {e}", dir.display().to_string()))?;
            dirs.push(dir.clone());
        }
        // Room for a few dozen events with names; more wait in the kernel's queue.
        let events = inotify
            .into_event_stream(vec![0u8; 4096])
            .map_err(|e| format!("inotify: {e}"))?;
        Ok(Watch {
            events,
            names: targets.into_iter().map(|(_, n)| n).collect(),
            dirs,
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::path::PathBuf;

    use super::Wake;

    /// No change notifications on this platform: [`start`] always says so.
    pub(crate) struct Watch {
        pub(crate) dirs: Vec<PathBuf>,
    }

    impl Watch {
        pub(crate) async fn next(&mut self) -> Result<Wake, String> {
            std::future::pending().await
        }

        pub(crate) fn drain(&mut self) -> bool {
            false
        }
    }

    pub(crate) fn start(_: &std::path::Path) -> Result<Watch, String> {
        Err("change notifications need Linux's inotify".into())
    }
}

pub(crate) use imp::{start, Watch};

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn only_changes_are_asked_for_and_unclosed_writes_wait() {
        use inotify::{EventMask, WatchMask};
        for read in [WatchMask::OPEN, WatchMask::ACCESS, WatchMask::CLOSE_NOWRITE] {
            assert!(!imp::MASK.intersects(read), "{read:?} is asked for");
        }
        let expected = [
            (EventMask::CLOSE_WRITE, Wake::Now),
            (EventMask::MODIFY, Wake::AfterWrite),
            (EventMask::ATTRIB, Wake::AfterWrite),
            (EventMask::CREATE, Wake::Now),
            (EventMask::DELETE, Wake::Now),
            (EventMask::MOVED_FROM, Wake::Now),
            (EventMask::MOVED_TO, Wake::Now),
            (EventMask::CREATE | EventMask::ISDIR, Wake::Now),
            (EventMask::DELETE_SELF, Wake::Gone),
            (EventMask::MOVE_SELF, Wake::Gone),
            (EventMask::IGNORED, Wake::Gone),
            (EventMask::Q_OVERFLOW, Wake::Gone),
        ];
        for (m, wake) in expected {
            assert_eq!(imp::classify(m), wake, "{m:?}");
        }
    }

    #[test]
    fn only_the_files_names_and_configmap_names_concern_it() {
        let names = [OsString::from("assignment.json")];
        fn n(s: &str) -> Option<&OsStr> {
            Some(OsStr::new(s))
        }
        assert!(concerns(n("assignment.json"), &names));
        assert!(concerns(n("..data"), &names));
        assert!(concerns(n("..data_tmp"), &names));
        assert!(concerns(None, &names), "the directory itself, or an overflow");
        assert!(!concerns(n(".assignment.json.swp"), &names));
        assert!(!concerns(n("assignment.json.tmp"), &names));
        assert!(!concerns(n("other.json"), &names));
    }

    /// The source re-reads the file on every poll while its timestamps settle: those reads
    /// must not come back as events. A rename does, and the directory's removal ends the watch.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn reads_wake_nothing_a_rename_wakes_and_a_drain_keeps_the_directorys_removal() {
        use std::io::Read;
        let dir = tempfile::tempdir().expect("tmp");
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).expect("mkdir");
        let path = sub.join("assignment.json");
        std::fs::write(&path, "{}").expect("write");
        let mut w = start(&path).expect("watch");
        for _ in 0..20 {
            let mut s = String::new();
            std::fs::File::open(&path)
                .expect("open")
                .read_to_string(&mut s)
                .expect("read");
            let _ = std::fs::metadata(&path).expect("stat");
        }
        let quiet = tokio::time::timeout(Duration::from_millis(200), w.next()).await;
        assert!(quiet.is_err(), "a read woke the watch: {quiet:?}");
        std::fs::write(sub.join("x.tmp"), "{}").expect("write");
        std::fs::rename(sub.join("x.tmp"), &path).expect("rename");
        let woke = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
        assert_eq!(woke.ok(), Some(Ok(Wake::Now)), "the rename");
        assert!(!w.drain(), "a rename does not end the watch");
        // The file's events come first, then the directory's own: after the first wake, the
        // drain before the poll must report the end of the watch, not drop it with the rest.
        std::fs::remove_dir_all(&sub).expect("rm");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
        assert!(matches!(first, Ok(Ok(Wake::Now | Wake::AfterWrite))), "{first:?}");
        assert!(w.drain(), "the directory's removal was dropped by the drain");
    }

    #[test]
    fn a_symlink_elsewhere_adds_its_targets_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).expect("mkdir");
        std::fs::create_dir_all(&b).expect("mkdir");
        std::fs::write(b.join("real.json"), "{}").expect("write");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(b.join("real.json"), a.join("link.json")).expect("symlink");
            let t = targets(&a.join("link.json"));
            let names: Vec<_> = t.iter().map(|(_, n)| n.clone()).collect();
            assert_eq!(names, ["link.json", "real.json"]);
            assert_eq!(t[0].0, a);
        }
        // A plain file: its directory only.
        assert_eq!(targets(&b.join("real.json")).len(), 1);
    }
}
