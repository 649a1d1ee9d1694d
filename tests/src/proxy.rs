//! A TCP proxy on `127.0.0.1:0` that a test can cut: the network partition
//! between one process and its database (or its control plane).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

/// Where the proxy forwards to.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// A TCP address.
    Tcp(std::net::SocketAddr),
    /// A Unix socket (the test Postgres listens on one).
    Unix(PathBuf),
}

/// A running proxy.
pub struct TcpProxy {
    /// Address clients connect to.
    pub addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl TcpProxy {
    /// Starts forwarding every connection to `upstream`.
    pub async fn start(upstream: Upstream) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let open = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (accepting, cuts) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accepting.load(Ordering::Acquire) {
                    // Cut: the connection is closed at once.
                    drop(client);
                    continue;
                }
                let (upstream, mut cut) = (upstream.clone(), cuts.subscribe());
                tokio::spawn(async move {
                    let _ = tokio::select! {
                        result = forward(client, &upstream) => result,
                        _ = cut.changed() => Ok(()),
                    };
                });
            }
        });
        Self { addr, open, cut }
    }

    /// Closes every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

async fn forward(mut client: TcpStream, upstream: &Upstream) -> std::io::Result<()> {
    match upstream {
        Upstream::Tcp(addr) => {
            let mut server = TcpStream::connect(addr).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        }
        Upstream::Unix(path) => {
            let mut server = UnixStream::connect(path).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        }
    }
    Ok(())
}
