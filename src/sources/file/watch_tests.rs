//! The file source's run loop with change notifications, on a real directory: each way a file
//! is replaced in practice is delivered at once, with a `poll_interval` of an hour (so no poll
//! tick can be what saw it). Every wait is bounded.

use std::io::Write;
use std::sync::Arc;

use super::*;
use crate::metrics::Metrics;
use crate::model::DEFAULT_SET;
use crate::sources::SourceHandle;

const A: &str = r#"{"0001": {"id": "a", "host": "10.0.0.1"}}"#;
const B: &str = r#"{"0001": {"id": "b", "host": "10.0.0.2"}}"#;
const C: &str = r#"{"0001": {"id": "c", "host": "10.0.0.3"}}"#;
/// No poll tick after the first one within a test.
const HOUR: Duration = Duration::from_secs(3600);
/// The bound on each wait (a notification arrives within milliseconds).
const LIMIT: Duration = Duration::from_secs(5);

struct Run {
    h: SourceHandle,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Run {
    fn start(path: &Path, poll: Duration, watch: bool) -> Run {
        let metrics = Arc::new(Metrics::new());
        let (p, h) = Publisher::new("f", metrics.clone());
        let w = Watcher::new(path.to_path_buf(), FileFormat::VolthaAssignment, 4 << 20);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(p, w, poll, watch, shutdown.clone()));
        Run {
            h,
            metrics,
            shutdown,
            task,
        }
    }

    fn host(&self) -> Option<String> {
        let st = self.h.rx.borrow();
        st.data.as_ref()?.set(DEFAULT_SET).first().map(|b| b.host.clone())
    }

    /// Waits (at most `limit`) until the delivered host is `want`; whether it was.
    async fn sees(&mut self, want: &str, limit: Duration) -> bool {
        let mut rx = self.h.rx.clone();
        let wait = async {
            while self.host().as_deref() != Some(want) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.host().as_deref() == Some(want)
    }

    /// Waits (at most [`LIMIT`]) until the source has counted an error of `kind`; whether it has.
    async fn counts_error(&self, kind: &'static str) -> bool {
        let wait = async {
            while self.metrics.source_error_count("f", kind) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(LIMIT, wait).await.is_ok()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Writes `body` beside `path` and renames it into place (editors, `mv`, the benchmarks).
fn rename_into_place(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn a_rename_into_place_is_delivered_without_waiting_for_a_poll() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("assignment.json");
    std::fs::write(&path, A).expect("write");
    let mut r = Run::start(&path, HOUR, true);
    assert!(r.sees("10.0.0.1", LIMIT).await, "the first poll reads the file");
    rename_into_place(&path, B);
    assert!(r.sees("10.0.0.2", LIMIT).await, "the rename was not seen");
    rename_into_place(&path, C);
    assert!(r.sees("10.0.0.3", LIMIT).await, "the second rename was not seen");
    r.stop().await;
}

/// A Kubernetes ConfigMap volume: `assignment.json -> ..data/assignment.json`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped directory, points a new
/// `..data_tmp` at it, renames it over `..data` and removes the old directory.
#[cfg(unix)]
#[tokio::test]
async fn a_configmap_symlink_swap_of_data_is_delivered() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let version = |name: &str, body: &str| {
        std::fs::create_dir(d.join(name)).expect("mkdir");
        std::fs::write(d.join(name).join("assignment.json"), body).expect("write");
    };
    version("..2026_12_04_01", A);
    symlink("..2026_12_04_01", d.join("..data")).expect("symlink");
    symlink("..data/assignment.json", d.join("assignment.json")).expect("symlink");
    let mut r = Run::start(&d.join("assignment.json"), HOUR, true);
    assert!(r.sees("10.0.0.1", LIMIT).await);
    for (i, (name, body, host)) in [("..2026_12_04_02", B, "10.0.0.2"), ("..2026_12_04_03", C, "10.0.0.3")]
        .into_iter()
        .enumerate()
    {
        version(name, body);
        symlink(name, d.join("..data_tmp")).expect("symlink");
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
        let old = if i == 0 { "..2026_12_04_01" } else { "..2026_12_04_02" };
        std::fs::remove_dir_all(d.join(old)).expect("rm old");
        assert!(r.sees(host, LIMIT).await, "swap to {name} not seen");
    }
    assert_eq!(r.metrics.source_error_count("f", "deleted"), 0);
    r.stop().await;
}

/// Truncate, a pause with the file open, then the new content: the empty window is not read
/// (the poll waits for the close), and the new content arrives without a poll tick.
#[tokio::test]
async fn a_truncate_then_write_is_read_when_the_writer_closes_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("assignment.json");
    std::fs::write(&path, A).expect("write");
    let mut r = Run::start(&path, HOUR, true);
    assert!(r.sees("10.0.0.1", LIMIT).await);
    let mut f = std::fs::File::create(&path).expect("truncate");
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.write_all(B.as_bytes()).expect("write");
    drop(f);
    assert!(r.sees("10.0.0.2", LIMIT).await, "the closed write was not seen");
    assert_eq!(
        r.metrics.source_error_count("f", "empty"),
        0,
        "the empty window was read"
    );
    // Truncated and left open: polled after the grace, as an error; the last good state stays.
    let f = std::fs::File::create(&path).expect("truncate");
    assert!(
        r.counts_error("empty").await,
        "a write left open is polled after the grace"
    );
    assert_eq!(r.host().as_deref(), Some("10.0.0.2"));
    drop(f);
    r.stop().await;
}

#[tokio::test]
async fn a_deleted_file_and_its_return_are_seen() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("assignment.json");
    std::fs::write(&path, A).expect("write");
    let mut r = Run::start(&path, HOUR, true);
    assert!(r.sees("10.0.0.1", LIMIT).await);
    std::fs::remove_file(&path).expect("rm");
    assert!(r.counts_error("deleted").await, "the deletion was not seen");
    assert_eq!(r.host().as_deref(), Some("10.0.0.1"), "the last good state is kept");
    rename_into_place(&path, B);
    assert!(r.sees("10.0.0.2", LIMIT).await);
    r.stop().await;
}

/// With `watch: false`, or where the directory cannot be watched (it does not exist yet), the
/// poll tick still finds the file.
#[tokio::test]
async fn without_a_watch_the_poll_finds_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let sub = dir.path().join("later");
    let path = sub.join("assignment.json");
    let mut unwatchable = Run::start(&path, Duration::from_millis(20), true);
    let off = dir.path().join("off.json");
    std::fs::write(&off, A).expect("write");
    let mut polled = Run::start(&off, Duration::from_millis(20), false);
    assert!(polled.sees("10.0.0.1", LIMIT).await);
    std::fs::create_dir(&sub).expect("mkdir");
    rename_into_place(&path, B);
    rename_into_place(&off, C);
    assert!(
        unwatchable.sees("10.0.0.2", LIMIT).await,
        "the poll did not find the file"
    );
    assert!(polled.sees("10.0.0.3", LIMIT).await);
    // The directory exists now: the watch is set up after a poll, and sees the next rename at
    // once (the tick is still 20 ms, so this only shows the change arrives).
    rename_into_place(&path, C);
    assert!(unwatchable.sees("10.0.0.3", LIMIT).await);
    unwatchable.stop().await;
    polled.stop().await;
}

#[tokio::test]
async fn with_watch_off_a_change_waits_for_the_poll() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("assignment.json");
    std::fs::write(&path, A).expect("write");
    let mut r = Run::start(&path, HOUR, false);
    assert!(r.sees("10.0.0.1", LIMIT).await);
    rename_into_place(&path, B);
    // Not a timing assertion of the server's speed: with no watch and no tick within the hour,
    // nothing can deliver the change.
    assert!(!r.sees("10.0.0.2", Duration::from_millis(300)).await);
    r.stop().await;
}

/// The file's directory removed and made again (`rm -rf`, a redeploy): the watch ends with it,
/// the next poll tick finds the new file and watches the new directory, and a change after
/// that arrives at once, long before the following tick.
#[tokio::test]
async fn a_removed_directory_is_watched_again_once_it_is_back() {
    const TICK: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().expect("tmp");
    let sub = dir.path().join("conf");
    std::fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("assignment.json");
    std::fs::write(&path, A).expect("write");
    let mut r = Run::start(&path, TICK, true);
    assert!(r.sees("10.0.0.1", LIMIT).await);
    std::fs::remove_dir_all(&sub).expect("rm");
    assert!(r.counts_error("deleted").await, "the deletion was not seen");
    std::fs::create_dir(&sub).expect("mkdir again");
    rename_into_place(&path, B);
    // Only a tick can find it (nothing watches a directory that did not exist).
    assert!(r.sees("10.0.0.2", TICK + LIMIT).await);
    // That tick's poll watched the directory again: the next change does not wait for a tick.
    rename_into_place(&path, C);
    assert!(
        r.sees("10.0.0.3", TICK / 2).await,
        "the change waited for a tick: the directory is not watched again"
    );
    r.stop().await;
}
