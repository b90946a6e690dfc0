//! A real etcd (Debian's `etcd-server`) on loopback with a temporary data dir, driven with
//! `etcdctl` (Debian's `etcd-client`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pki::Pki;
use super::{free_port, wait_for};

/// The etcd binary: `ETCD_BIN`, else `etcd` on PATH.
pub fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

pub struct Etcd {
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `user:password` for etcdctl once auth is on.
    root: Option<String>,
    /// Client TLS with client certificates required.
    pub tls: Option<Pki>,
    /// `--initial-cluster-token`: with the member's name and peer URL, it makes the cluster id.
    token: String,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Self::start_with(false).await
    }

    /// An etcd that serves clients over TLS only and requires a client certificate.
    pub async fn start_tls() -> Etcd {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Etcd {
        let dir = tempfile::tempdir().expect("tmp");
        let tls = tls.then(|| Pki::create(dir.path()));
        let mut e = Etcd {
            client: SocketAddr::from(([127, 0, 0, 1], free_port())),
            peer: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir,
            child: None,
            root: None,
            tls,
            token: "etcd-cluster".into(),
        };
        e.resume().await;
        e
    }

    /// Stops etcd and starts a new one on the same ports with an empty data dir: its revisions
    /// start again from 1. With `new_cluster`, it also gets another cluster id (another
    /// `--initial-cluster-token`); without, the same id as before (the id derives from the
    /// member's name, peer URL and token).
    pub async fn recreate(&mut self, new_cluster: bool) {
        self.stop();
        std::fs::remove_dir_all(self.dir.path().join("data")).expect("remove the data dir");
        if new_cluster {
            self.token.push_str("-new");
        }
        self.root = None;
        self.resume().await;
    }

    /// Starts (again) on the same ports and data.
    pub async fn resume(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let c = format!("{scheme}://{}", self.client);
        let p = format!("http://{}", self.peer);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log");
        let mut cmd = Command::new(etcd_bin());
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args([
                "--initial-cluster",
                &format!("t={p}"),
                "--initial-cluster-token",
                &self.token,
                "--logger",
                "zap",
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); scripts/test.sh installs etcd-server",
                    etcd_bin()
                )
            });
        self.child = Some(child);
        let me = &*self;
        wait_for(Duration::from_secs(20), "etcd to answer", || async move {
            me.ctl_try(&["endpoint", "health"]).ok().map(|_| ())
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ctl_try(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client))
            .arg("--command-timeout=5s");
        if let Some(root) = &self.root {
            cmd.arg(format!("--user={root}"));
        }
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.client_cert)
                .arg("--key")
                .arg(&t.client_key);
        }
        let out = cmd.args(args).output().map_err(|e| format!("etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        self.ctl_try(args).unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, "--", value]);
    }

    /// Writes a value through etcdctl's standard input (for values too long for an argument).
    pub fn put_stdin(&self, key: &str, value: &[u8]) {
        use std::io::Write;
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client))
            .args(["--command-timeout=5s", "put", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(value).expect("write to etcdctl");
        }
        let out = child.wait_with_output().expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl put: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn del(&self, key: &str) {
        self.ctl(&["del", key]);
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v[0]["Status"]["header"]["revision"].as_i64().expect("revision")
    }

    /// Compacts the history up to the current revision.
    pub fn compact(&self) {
        let rev = self.revision().to_string();
        self.ctl(&["compact", &rev, "--physical"]);
    }

    /// Turns authentication on: `root` and a read-only `user` on `key`.
    pub fn enable_auth(&mut self, user: &str, password: &str, key: &str) {
        self.ctl(&["user", "add", "root:rootpw"]);
        self.ctl(&["user", "add", &format!("{user}:{password}")]);
        self.ctl(&["role", "add", "reader"]);
        self.ctl(&["role", "grant-permission", "reader", "read", key]);
        self.ctl(&["user", "grant-role", user, "reader"]);
        self.ctl(&["auth", "enable"]);
        self.root = Some("root:rootpw".into());
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
