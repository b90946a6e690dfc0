//! The file source's change notifications: the file's directory is watched with the
//! platform's file notification (inotify on Linux, through the `notify` crate), and each event
//! that may concern the file wakes the poll loop, which then polls at once instead of at its
//! next tick. The poll decides, with every rule of [`super::Watcher`]; a notification never
//! carries content.
//!
//! The directory, not the file, is watched: that is where a rename into place (editors,
//! `mv`), a deletion and a Kubernetes ConfigMap update (a new `..data` symlink renamed over
//! the old one) show up. When the path is a symlink to a file in another directory, that
//! directory is watched too. An in-place write (truncate, then write) is polled when the writer
//! closes the file, or [`WRITE_GRACE`] after its first write if it keeps the file open, so that
//! the empty window between the truncation and the write is not read as a new value.
//!
//! Notifications are a fast path, never the only one: the poll loop keeps its
//! `poll_interval` tick (network filesystems send no notifications for remote writes; inotify
//! drops events when its queue overflows; a directory may not exist yet).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long after an in-place write that was not closed the file is polled.
pub(crate) const WRITE_GRACE: Duration = Duration::from_millis(100);

/// Wake-ups queued between polls; one is enough to make the next poll happen, so more are
/// dropped (a poll reads the state of the file, not the events).
const QUEUE: usize = 16;

/// What an event asks of the poll loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Poll now: a rename, a creation, a deletion, a closed write.
    Now,
    /// An in-place write in progress: poll when it is closed, or after [`WRITE_GRACE`].
    AfterWrite,
}

/// What an event of this kind asks for; `None` for reads (the source's own among them).
pub(crate) fn classify(kind: &EventKind) -> Option<Wake> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Wake::Now),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_) | ModifyKind::Any) => Some(Wake::AfterWrite),
        _ => Some(Wake::Now),
    }
}

/// A live watch: the events come out of `rx` until it is dropped.
pub(crate) struct Watch {
    _watcher: notify::RecommendedWatcher,
    pub(crate) rx: mpsc::Receiver<Wake>,
    /// The directories watched.
    pub(crate) dirs: Vec<PathBuf>,
}

/// The directories to watch for `path`, and the file names in them that concern it: the
/// path's own directory (names: the file's, and the `..`-prefixed names of a ConfigMap
/// volume), and, for a symlink to a file elsewhere, the target's directory.
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

/// Whether an event on these paths may concern the file: one of its names, a `..` name (a
/// ConfigMap's `..data` swap), or no path at all (a queue overflow: anything may have changed).
fn concerns(paths: &[PathBuf], names: &[OsString]) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.iter().any(|m| m == n) || n.as_encoded_bytes().starts_with(b".."))
        })
}

/// Starts watching what concerns `path`. An error (no such directory, inotify's limits
/// reached) says why; the caller then polls only.
pub(crate) fn start(path: &Path) -> Result<Watch, String> {
    let targets = targets(path);
    if targets.is_empty() {
        return Err(format!("{} names no file", path.display()));
    }
    let names: Vec<OsString> = targets.iter().map(|(_, n)| n.clone()).collect();
    let (tx, rx) = mpsc::channel(QUEUE);
    let handler = move |res: notify::Result<notify::Event>| {
        let wake = match res {
            Ok(ev) if concerns(&ev.paths, &names) => classify(&ev.kind),
            Ok(_) => None,
            // The watcher's own error (e.g. its queue overflowed): look at the file.
            Err(_) => Some(Wake::Now),
        };
        if let Some(w) = wake {
            // Full: wake-ups are already queued, and the poll they cause covers this one.
            let _ = tx.try_send(w);
        }
    };
    let mut watcher = notify::recommended_watcher(handler).map_err(|e| e.to_string())?;
    let mut dirs = Vec::new();
    for (dir, _) in &targets {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {:?}: {e}", dir.display().to_string()))?;
        dirs.push(dir.clone());
    }
    Ok(Watch {
        _watcher: watcher,
        rx,
        dirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn reads_are_ignored_and_unclosed_writes_wait() {
        assert_eq!(classify(&EventKind::Access(AccessKind::Close(AccessMode::Read))), None);
        assert_eq!(classify(&EventKind::Access(AccessKind::Open(AccessMode::Any))), None);
        assert_eq!(
            classify(&EventKind::Access(AccessKind::Close(AccessMode::Write))),
            Some(Wake::Now)
        );
        for k in [
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ] {
            assert_eq!(classify(&k), Some(Wake::AfterWrite), "{k:?}");
        }
        for k in [
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Any,
        ] {
            assert_eq!(classify(&k), Some(Wake::Now), "{k:?}");
        }
    }

    #[test]
    fn only_the_files_names_and_configmap_names_concern_it() {
        let names = [OsString::from("assignment.json")];
        let p = |s: &str| vec![PathBuf::from(s)];
        assert!(concerns(&p("/etc/v/assignment.json"), &names));
        assert!(concerns(&p("/etc/v/..data"), &names));
        assert!(concerns(&p("/etc/v/..data_tmp"), &names));
        assert!(concerns(&[], &names), "an overflow concerns every file");
        assert!(!concerns(&p("/etc/v/.assignment.json.swp"), &names));
        assert!(!concerns(&p("/etc/v/other.json"), &names));
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
