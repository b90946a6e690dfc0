//! A loopback TCP proxy in front of a test double or a real server, to cut connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A loopback TCP proxy a test can cut (existing connections dropped, new ones refused) and
/// restore.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    target: Arc<Mutex<SocketAddr>>,
    cut: watch::Sender<u64>,
    freeze: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    /// Bytes carried from the target to the clients, over every connection.
    to_clients: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let (cut, cut_rx) = watch::channel(0u64);
        let (freeze, freeze_rx) = watch::channel(0u64);
        let (stop, mut stop_rx) = watch::channel(false);
        let is_open = open.clone();
        let target = Arc::new(Mutex::new(target));
        let current = target.clone();
        let to_clients = Arc::new(AtomicU64::new(0));
        let carried = to_clients.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop_rx.changed() => return,
                    a = listener.accept() => a,
                };
                let Ok((down, _)) = accepted else { continue };
                if !is_open.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                cut_rx.borrow_and_update();
                let mut freeze_rx = freeze_rx.clone();
                freeze_rx.borrow_and_update();
                let to = *current.lock().expect("target");
                let carried = carried.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut dr, mut dw) = down.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let frozen = tokio::select! {
                        _ = cut_rx.changed() => false,
                        _ = freeze_rx.changed() => true,
                        _ = tokio::io::copy(&mut dr, &mut uw) => false,
                        _ = copy_counted(&mut ur, &mut dw, &carried) => false,
                    };
                    if frozen {
                        // Both sockets stay open, but nothing crosses any more: a peer that
                        // vanished without closing (a dead host, a cable pulled).
                        let _ = cut_rx.changed().await;
                    }
                    drop((dr, dw, ur, uw));
                });
            }
        });
        Proxy {
            addr,
            open,
            target,
            cut,
            freeze,
            stop,
            to_clients,
        }
    }

    /// Bytes carried from the target to the clients so far, over every connection.
    pub fn bytes_to_clients(&self) -> u64 {
        self.to_clients.load(Ordering::SeqCst)
    }

    /// Stops forwarding on every open connection without closing either side.
    pub fn freeze(&self) {
        self.freeze.send_modify(|n| *n += 1);
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// New connections go to `to`; open ones stay where they are.
    pub fn retarget(&self, to: SocketAddr) {
        *self.target.lock().expect("target") = to;
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends, adding each chunk to `n` before writing it (so a
/// byte the client has read is always counted).
async fn copy_counted(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    n: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let k = from.read(&mut buf).await?;
        if k == 0 {
            return Ok(());
        }
        n.fetch_add(k as u64, Ordering::SeqCst);
        to.write_all(&buf[..k]).await?;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
