//! A real proxyless gRPC client for the tests: Python grpcio's built-in xDS resolver
//! (`tests/support/proxyless_client.py`), one channel for the client's whole life, driven line
//! by line over stdin/stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The Python with grpcio: `$PYTHON_BIN`, else `.venv/bin/python` (where `scripts/test.sh`
/// installs grpcio).
pub fn python_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PYTHON_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        p.exists(),
        "no Python at {}: run scripts/test.sh (it installs grpcio with pip into .venv/), or set PYTHON_BIN",
        p.display()
    );
    p
}

/// One grpcio client process holding one channel to `target`; killed when dropped.
pub struct GrpcClient {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
    pub log: PathBuf,
}

impl GrpcClient {
    /// Starts a client bootstrapped with `bootstrap_json` (written to `dir`), dialing `target`.
    pub fn start(dir: &Path, name: &str, bootstrap_json: &str, target: &str) -> GrpcClient {
        let bs = dir.join(format!("{name}-grpc-bootstrap.json"));
        std::fs::write(&bs, bootstrap_json).expect("write bootstrap");
        let log = dir.join(format!("{name}-grpc.log"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/proxyless_client.py");
        let mut child = Command::new(python_bin())
            .arg(script)
            .arg(target)
            .env("GRPC_XDS_BOOTSTRAP", &bs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("python starts");
        let stdin = child.stdin.take().expect("stdin");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        GrpcClient { child, stdin, out, log }
    }

    async fn ask(&mut self, line: &str) -> String {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("client stdin");
        self.stdin.flush().await.expect("flush");
        match tokio::time::timeout(Duration::from_secs(15), self.out.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!(
                "the gRPC client did not answer {line:?} ({other:?}); its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
    }

    /// Calls `method` on the channel with these request headers: the core that answered
    /// (`x-voltha-core`), or the status code and message.
    pub async fn call(&mut self, method: &str, headers: &[(&str, &str)]) -> Result<String, String> {
        let mut line = format!("call {method}");
        for (k, v) in headers {
            line.push_str(&format!(" {k}={v}"));
        }
        let answer = self.ask(&line).await;
        match answer.strip_prefix("ok ") {
            Some(core) => Ok(core.to_string()),
            None => Err(answer),
        }
    }

    pub async fn health(&mut self) -> Result<String, String> {
        self.call("/voltha.HealthService/GetHealthStatus", &[]).await
    }

    /// Calls until one of `want` answers, for at most `limit`; the time it took.
    pub async fn wait_reached(
        &mut self,
        limit: Duration,
        method: &str,
        headers: &[(&str, &str)],
        want: &[&str],
    ) -> Duration {
        let t0 = std::time::Instant::now();
        let mut last = None;
        while t0.elapsed() < limit {
            match self.call(method, headers).await {
                Ok(core) if want.contains(&core.as_str()) => return t0.elapsed(),
                other => last = Some(other),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "no call to {method} reached {want:?} within {limit:?} (last: {last:?}); client log:\n{}",
            self.log_tail()
        );
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text[start..].to_string()
    }
}

impl Drop for GrpcClient {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
