//! Headless Chromium for the status page tests: Debian's `chromium`, or `$CHROMIUM_BIN`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

pub fn chromium_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no Chromium found: the status page test needs headless Chromium. Install Debian's \
         package (`apt-get install chromium`; scripts/test.sh does it) or set CHROMIUM_BIN"
    );
}

/// Runs headless Chromium on `url` with `extra` flags beside the common ones, in a fresh
/// profile under `profile`; its output, once it has ended successfully (within 120 s).
async fn run(url: &str, profile: &std::path::Path, extra: &[String]) -> std::process::Output {
    let child = tokio::process::Command::new(chromium_bin())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromium_bin().display()));
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("chromium ends within 120 s")
        .expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The page's DOM after its script ran, as headless Chromium dumps it.
pub async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("tmp");
    let out = run(url, profile.path(), &["--dump-dom".to_string()]).await;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PNG screenshot of the page (after its script ran) in a 1100×2400 window.
pub async fn screenshot(url: &str) -> Vec<u8> {
    let profile = tempfile::tempdir().expect("tmp");
    let png = profile.path().join("page.png");
    let extra = [
        "--hide-scrollbars".to_string(),
        "--force-device-scale-factor=1".to_string(),
        "--window-size=1100,2400".to_string(),
        format!("--screenshot={}", png.display()),
    ];
    run(url, profile.path(), &extra).await;
    std::fs::read(&png).expect("the screenshot")
}
