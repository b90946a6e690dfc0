//! The file source's rules, poll by poll (no timers: each test calls [`Watcher::poll`]).

use std::sync::Arc;

use super::*;
use crate::metrics::Metrics;
use crate::model::DEFAULT_SET;
use crate::sources::SourceHandle;

const TWO: &str = r#"{"0001": {"id": "a", "host": "10.0.0.1"}, "0002": {"id": "b", "host": "10.0.0.2"}}"#;
const OTHER: &str = r#"{"0001": {"id": "c", "host": "10.0.0.7"}}"#;

/// The values that must never empty a cluster, with the error kind each is counted as.
const BAD: [(&str, &str); 6] = [
    ("", "empty"),
    ("   \n", "empty"),
    ("{not json", "malformed_json"),
    ("null", "wrong_shape"),
    ("{", "malformed_json"),
    (r#"{"0001": 5}"#, "wrong_shape"),
];

struct T {
    _dir: tempfile::TempDir,
    path: PathBuf,
    w: Watcher,
    p: Publisher,
    h: SourceHandle,
    metrics: Arc<Metrics>,
}

impl T {
    fn new(format: FileFormat, max: usize) -> T {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("assignment.json");
        let metrics = Arc::new(Metrics::new());
        let (p, h) = Publisher::new("f", metrics.clone());
        T {
            w: Watcher::new(path.clone(), format, max),
            _dir: dir,
            path,
            p,
            h,
            metrics,
        }
    }

    fn assignment() -> T {
        T::new(FileFormat::VolthaAssignment, 4 << 20)
    }

    fn write(&self, v: &str) {
        std::fs::write(&self.path, v).expect("write");
    }

    /// A poll just after the last write (its metadata not settled yet).
    async fn poll(&mut self) {
        self.w.poll(&self.p, SystemTime::now()).await;
    }

    /// A poll long after the last write.
    async fn poll_settled(&mut self) {
        self.w
            .poll(&self.p, SystemTime::now() + Duration::from_secs(3600))
            .await;
    }

    /// The delivered hosts; `None`: nothing delivered yet.
    fn hosts(&self) -> Option<Vec<String>> {
        let st = self.h.rx.borrow();
        st.data
            .as_ref()
            .map(|d| d.set(DEFAULT_SET).iter().map(|b| b.host.clone()).collect())
    }

    fn state(&self) -> &'static str {
        self.h.rx.borrow().health.state
    }

    fn errors(&self, kind: &'static str) -> u64 {
        self.metrics.source_error_count("f", kind)
    }
}

fn two() -> Option<Vec<String>> {
    Some(vec!["10.0.0.1".into(), "10.0.0.2".into()])
}

#[tokio::test]
async fn a_missing_file_at_start_is_not_ready_and_reported_once() {
    let mut t = T::assignment();
    for _ in 0..3 {
        t.poll().await;
    }
    assert_eq!(t.hosts(), None, "not delivered: not ready, and no empty cluster");
    assert_eq!((t.state(), t.errors("absent")), ("error", 1));
    t.write(TWO);
    t.poll().await;
    assert_eq!((t.hosts(), t.state()), (two(), "ok"));
}

#[tokio::test]
async fn a_malformed_or_empty_file_at_start_is_not_ready() {
    for (v, kind) in BAD {
        let mut t = T::assignment();
        t.write(v);
        t.poll().await;
        t.poll().await;
        assert_eq!(t.hosts(), None, "{v:?}");
        assert_eq!((t.state(), t.errors(kind)), ("error", 1), "{v:?}");
    }
}

#[tokio::test]
async fn bad_values_are_errors_and_keep_the_last_good_state() {
    let mut t = T::assignment();
    t.write(TWO);
    t.poll().await;
    assert_eq!(t.hosts(), two());
    for (v, kind) in BAD {
        let before = t.errors(kind);
        t.write(v);
        t.poll().await;
        t.poll().await;
        assert_eq!(t.hosts(), two(), "{v:?} must not replace the last good state");
        assert_eq!(t.state(), "error", "{v:?}");
        assert_eq!(t.errors(kind), before + 1, "{v:?} counted once");
        let last_error = t.h.rx.borrow().health.last_error.clone().unwrap_or_default();
        assert!(last_error.contains("keeping the last good state"), "{last_error}");
        t.write(TWO);
        t.poll().await;
        assert_eq!((t.hosts(), t.state()), (two(), "ok"), "after {v:?}");
    }
}

#[tokio::test]
async fn only_a_well_formed_empty_value_empties_the_set() {
    let mut t = T::assignment();
    t.write(TWO);
    t.poll().await;
    t.write(r#"{"0001": null}"#);
    t.poll().await;
    assert_eq!((t.hosts(), t.state()), (Some(vec![]), "ok"));
    t.write(TWO);
    t.poll().await;
    t.write("{}");
    t.poll().await;
    assert_eq!((t.hosts(), t.state()), (Some(vec![]), "ok"));

    // The endpoints format: `{}` empties, an empty file is an error.
    let mut t = T::new(FileFormat::Endpoints, 4 << 20);
    t.write(r#"{"": ["10.0.0.1:80"]}"#);
    t.poll().await;
    assert_eq!(t.hosts(), Some(vec!["10.0.0.1".to_string()]));
    t.write("");
    t.poll().await;
    assert_eq!(
        (t.hosts(), t.state(), t.errors("empty")),
        (Some(vec!["10.0.0.1".to_string()]), "error", 1)
    );
    t.write("{}");
    t.poll().await;
    assert_eq!((t.hosts(), t.state()), (Some(vec![]), "ok"));
}

#[tokio::test]
async fn an_editors_truncate_then_write_never_publishes_empty() {
    let mut t = T::assignment();
    t.write(TWO);
    t.poll().await;
    let mut rx = t.h.rx.clone();
    rx.borrow_and_update();
    // The save: truncate; a poll lands in the window; then the new content.
    let f = std::fs::File::create(&t.path).expect("truncate");
    drop(f);
    t.poll().await;
    assert_eq!((t.hosts(), t.state(), t.errors("empty")), (two(), "error", 1));
    t.write(OTHER);
    t.poll().await;
    assert_eq!((t.hosts(), t.state()), (Some(vec!["10.0.0.7".to_string()]), "ok"));
    // A half-written file (the write not finished when polled) is an error too.
    t.write(&TWO[..TWO.len() / 2]);
    t.poll().await;
    assert_eq!(t.hosts(), Some(vec!["10.0.0.7".to_string()]));
    t.write(TWO);
    t.poll().await;
    assert_eq!(t.hosts(), two());
}

#[tokio::test]
async fn a_deleted_file_keeps_the_last_good_state() {
    let mut t = T::assignment();
    t.write(TWO);
    t.poll().await;
    std::fs::remove_file(&t.path).expect("rm");
    for _ in 0..3 {
        t.poll().await;
    }
    assert_eq!((t.hosts(), t.state(), t.errors("deleted")), (two(), "error", 1));
    assert_eq!(t.errors("absent"), 0);
    // Back with the same content: healthy again.
    t.write(TWO);
    t.poll().await;
    assert_eq!((t.hosts(), t.state()), (two(), "ok"));
}

#[tokio::test]
async fn a_rename_into_place_is_seen() {
    let mut t = T::assignment();
    t.write(TWO);
    t.poll_settled().await;
    let tmp = t.path.with_extension("tmp");
    std::fs::write(&tmp, OTHER).expect("write");
    std::fs::rename(&tmp, &t.path).expect("rename");
    t.poll_settled().await;
    assert_eq!(t.hosts(), Some(vec!["10.0.0.7".to_string()]));
}

#[tokio::test]
async fn a_file_over_the_limit_is_not_read() {
    let mut t = T::new(FileFormat::VolthaAssignment, 100);
    t.write(&format!("{TWO}{}", " ".repeat(100)));
    t.poll().await;
    t.poll().await;
    assert_eq!(t.w.reads, 0, "the size is checked before reading");
    assert_eq!((t.hosts(), t.state(), t.errors("too_large")), (None, "error", 1));
    t.write(TWO);
    t.poll().await;
    assert_eq!(t.hosts(), two());
    // Over the limit after a good value: kept.
    t.write(&" ".repeat(101));
    t.poll().await;
    assert_eq!((t.hosts(), t.errors("too_large")), (two(), 2));
    let e = t.h.rx.borrow().health.last_error.clone().unwrap_or_default();
    assert!(e.contains("101 bytes, over the limit of 100 bytes"), "{e}");
}

#[tokio::test]
async fn an_unchanged_file_is_not_read_again_and_a_change_is_seen() {
    let mut t = T::assignment();
    t.write(TWO);
    t.poll_settled().await;
    assert_eq!(t.w.reads, 1);
    for _ in 0..5 {
        t.poll_settled().await;
    }
    assert_eq!(t.w.reads, 1, "metadata unchanged and settled: not read");
    t.write(OTHER);
    t.poll_settled().await;
    assert_eq!((t.w.reads, t.hosts()), (2, Some(vec!["10.0.0.7".to_string()])));
    // A file changed within the last SETTLE is read on every poll, until a read settles it.
    t.write(TWO);
    t.poll().await;
    t.poll().await;
    assert_eq!((t.w.reads, t.hosts()), (4, two()));
    t.poll_settled().await;
    t.poll_settled().await;
    assert_eq!(t.w.reads, 5);
}

#[tokio::test]
async fn a_same_size_rewrite_with_the_same_mtime_is_seen() {
    let mut t = T::assignment();
    t.write(TWO);
    let mtime = std::fs::metadata(&t.path).and_then(|m| m.modified()).expect("mtime");
    t.poll().await;
    // Same size, mtime put back: as a rewrite within one timestamp tick looks.
    let same_size = TWO.replace("10.0.0.2", "10.0.0.9");
    assert_eq!(same_size.len(), TWO.len());
    t.write(&same_size);
    std::fs::File::options()
        .write(true)
        .open(&t.path)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
    t.poll().await;
    assert_eq!(t.hosts(), Some(vec!["10.0.0.1".to_string(), "10.0.0.9".to_string()]));
}

#[test]
fn metadata_is_trusted_only_once_it_has_settled() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let stamp = Stamp {
        len: 10,
        modified: Some(t0),
        #[cfg(unix)]
        changed: Some(t0),
        #[cfg(unix)]
        inode: (1, 2),
    };
    assert!(!stamp.settled(t0), "read in the tick of the last change");
    assert!(!stamp.settled(t0 + Duration::from_millis(1999)));
    assert!(stamp.settled(t0 + SETTLE));
    assert!(!stamp.settled(t0 - Duration::from_secs(5)), "a timestamp in the future");
    let no_time = Stamp {
        modified: None,
        #[cfg(unix)]
        changed: None,
        ..stamp
    };
    assert!(!no_time.settled(t0 + SETTLE), "no timestamps: read every poll");

    // The same metadata after an unsettled read is read again; after a settled one, not.
    let mut w = Watcher::new(PathBuf::from("x"), FileFormat::VolthaAssignment, 100);
    w.seen = Seen::Content {
        stamp,
        settled: false,
        bytes: Vec::new(),
    };
    assert!(!w.unchanged(&stamp));
    w.seen = Seen::Content {
        stamp,
        settled: true,
        bytes: Vec::new(),
    };
    assert!(w.unchanged(&stamp));
    assert!(!w.unchanged(&Stamp { len: 11, ..stamp }));
    #[cfg(unix)]
    {
        assert!(
            !w.unchanged(&Stamp { inode: (1, 3), ..stamp }),
            "another file renamed in"
        );
        let later = Some(t0 + Duration::from_nanos(1));
        assert!(
            !w.unchanged(&Stamp {
                changed: later,
                ..stamp
            }),
            "ctime moved"
        );
    }
}

#[test]
fn render_reads_once_and_refuses_what_serve_would_not_serve() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("a.json");
    let e = read_once(&path, FileFormat::VolthaAssignment, 100).expect_err("missing");
    assert!(e.contains("does not exist"), "{e}");
    std::fs::write(&path, "").expect("write");
    let e = read_once(&path, FileFormat::VolthaAssignment, 100).expect_err("empty");
    assert!(e.contains("empty"), "{e}");
    std::fs::write(&path, " ".repeat(101)).expect("write");
    let e = read_once(&path, FileFormat::VolthaAssignment, 100).expect_err("too large");
    assert!(e.contains("over the limit"), "{e}");
    std::fs::write(&path, "{}").expect("write");
    let d = read_once(&path, FileFormat::VolthaAssignment, 100).expect("valid");
    assert!(d.set(DEFAULT_SET).is_empty());
}
