//! The Consul ACL token: fixed (`token`, `CONSUL_HTTP_TOKEN`) or read from a file (`token_file`,
//! `CONSUL_HTTP_TOKEN_FILE`) that is read again when it changes, so a rotated token is used on
//! the next request without a restart. A file that cannot be read, or is empty, after a change
//! is reported and the previous token keeps being sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// Tokens longer than this are refused (Consul's are 36-character UUIDs).
const MAX_TOKEN_BYTES: u64 = 4096;

#[derive(Debug, Clone, Default)]
pub enum Token {
    #[default]
    None,
    Fixed(String),
    File(TokenFile),
}

#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    /// The file's version last read (modification time, size, inode) and the token in use.
    state: Arc<Mutex<(Stamp, String)>>,
}

type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

/// The token in `path`, surrounding whitespace removed.
fn read(path: &Path) -> Result<String, String> {
    let at = |e: String| format!("token_file {}: {e}", path.display());
    let len = std::fs::metadata(path).map_err(|e| at(e.to_string()))?.len();
    if len > MAX_TOKEN_BYTES {
        return Err(at(format!("{len} bytes, over {MAX_TOKEN_BYTES}")));
    }
    let t = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(at("empty".into()));
    }
    if !t.chars().all(|c| c.is_ascii_graphic()) {
        return Err(at("not a token (characters beyond printable ASCII)".into()));
    }
    Ok(t.to_string())
}

impl TokenFile {
    /// Reads the file now: an error if it cannot be read (a configuration error at start).
    pub fn open(path: PathBuf) -> Result<TokenFile, String> {
        let s = stamp(&path);
        let token = read(&path)?;
        Ok(TokenFile {
            path,
            state: Arc::new(Mutex::new((s, token))),
        })
    }
}

impl Token {
    /// The token to send now.
    pub fn value(&self) -> Option<String> {
        match self {
            Token::None => None,
            Token::Fixed(t) => Some(t.clone()),
            Token::File(f) => Some(f.state.lock().1.clone()),
        }
    }

    /// Reads the token file again if it changed since it was last read. `Err` when the new
    /// version cannot be used (the previous token stays; that version is not tried again).
    pub fn refresh(&self) -> Result<bool, String> {
        let Token::File(f) = self else {
            return Ok(false);
        };
        let now = stamp(&f.path);
        let mut st = f.state.lock();
        if now == st.0 {
            return Ok(false);
        }
        st.0 = now;
        let t = read(&f.path)?;
        let changed = t != st.1;
        st.1 = t;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_file_is_read_again_and_a_bad_version_keeps_the_token() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("token");
        std::fs::write(&p, "first\n").expect("write");
        let t = Token::File(TokenFile::open(p.clone()).expect("open"));
        assert_eq!(t.value().as_deref(), Some("first"));
        assert_eq!(t.refresh(), Ok(false));
        std::fs::write(&p, "second-token").expect("write");
        assert_eq!(t.refresh(), Ok(true));
        assert_eq!(t.value().as_deref(), Some("second-token"));
        for (bad, why) in [("", "empty"), ("  \n", "empty"), ("a\u{1b}[31m", "printable")] {
            std::fs::write(&p, bad).expect("write");
            let e = t.refresh().err().unwrap_or_default();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert_eq!(t.value().as_deref(), Some("second-token"), "{bad:?}");
        }
        std::fs::remove_file(&p).expect("rm");
        assert!(t.refresh().is_err());
        assert_eq!(t.refresh(), Ok(false), "the same missing file is reported once");
        assert_eq!(t.value().as_deref(), Some("second-token"));
        std::fs::write(&p, "x".repeat(5000)).expect("write");
        assert!(t.refresh().err().unwrap_or_default().contains("over 4096"));
        std::fs::write(&p, "third").expect("write");
        assert_eq!(t.refresh(), Ok(true));
        assert_eq!(t.value().as_deref(), Some("third"));
        assert!(TokenFile::open(dir.path().join("absent")).is_err());
    }
}
