//! The file source: reads a file and re-reads it when its content changes (a short poll, which
//! also sees atomic renames, editors' replace-on-save and files on network mounts).
//!
//! A missing file means "no backends yet" (an empty set), not an error.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::assignment::parse;
use super::Publisher;
use crate::config::FileFormat;
use crate::model::SourceData;

pub async fn run(p: Publisher, path: PathBuf, format: FileFormat, poll: Duration, shutdown: CancellationToken) {
    let mut last: Option<Option<Vec<u8>>> = None;
    // A read error is reported once, not on every poll, until it changes or reading works.
    let mut read_error: Option<String> = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let read = match tokio::fs::read(&path).await {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                let msg = format!("cannot read {}: {e}", path.display());
                if read_error.as_ref() != Some(&msg) {
                    p.fail("read", msg.clone());
                    read_error = Some(msg);
                }
                continue;
            }
        };
        read_error = None;
        if last.as_ref() == Some(&read) {
            continue;
        }
        let parsed = match &read {
            None => {
                tracing::info!(path = %path.display(), "file does not exist: no backends yet");
                Ok(SourceData::default())
            }
            Some(bytes) => parse(format, bytes),
        };
        last = Some(read);
        match parsed {
            Ok(data) => p.deliver(data),
            Err(e) => p.fail(e.kind(), format!("{}: {e}", path.display())),
        }
    }
}
