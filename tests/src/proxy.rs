//! A TCP proxy on `127.0.0.1:0` that a test can cut (connections closed) or
//! black-hole (connections kept open, nothing forwarded): the network
//! partitions between one process and its database or its control plane.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

/// What happens to open connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Closed at once.
    Cut,
    /// Kept open, silent.
    Blackhole,
}

/// Connections held open but no longer forwarded.
type Parked = Arc<Mutex<Vec<Box<dyn std::any::Any + Send>>>>;

/// A running proxy.
pub struct TcpProxy {
    /// Address clients connect to.
    pub addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    faults: watch::Sender<Option<Fault>>,
    parked: Parked,
}

impl TcpProxy {
    /// Starts forwarding every connection to `upstream`.
    pub async fn start(upstream: Upstream) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let open = Arc::new(AtomicBool::new(true));
        let (faults, _) = watch::channel(None);
        let parked = Parked::default();
        let (accepting, fault_sender, parking) = (open.clone(), faults.clone(), parked.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accepting.load(Ordering::Acquire) {
                    // Cut: the connection is closed at once.
                    drop(client);
                    continue;
                }
                let (upstream, fault, parked) = (upstream.clone(), fault_sender.subscribe(), parking.clone());
                tokio::spawn(async move {
                    let _ = match upstream {
                        Upstream::Tcp(addr) => match TcpStream::connect(addr).await {
                            Ok(server) => forward(client, server, fault, parked).await,
                            Err(_) => Ok(()),
                        },
                        Upstream::Unix(path) => match UnixStream::connect(path).await {
                            Ok(server) => forward(client, server, fault, parked).await,
                            Err(_) => Ok(()),
                        },
                    };
                });
            }
        });
        Self { addr, open, faults, parked }
    }

    /// Closes every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.faults.send_replace(Some(Fault::Cut));
    }

    /// Stops forwarding on every open connection but keeps it open (a
    /// partition that drops packets): the peers wait for answers that never come.
    pub fn blackhole(&self) {
        self.faults.send_replace(Some(Fault::Blackhole));
    }

    /// Forwards new connections again (black-holed ones are closed).
    pub fn restore(&self) {
        self.parked.lock().expect("parked").clear();
        self.faults.send_replace(None);
        self.open.store(true, Ordering::Release);
    }
}

async fn forward<S>(
    mut client: TcpStream,
    mut server: S,
    mut fault: watch::Receiver<Option<Fault>>,
    parked: Parked,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let fault = tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut server) => return result.map(drop),
        fault = fault.wait_for(Option::is_some) => fault.ok().and_then(|f| *f),
    };
    if fault == Some(Fault::Blackhole) {
        parked.lock().expect("parked").push(Box::new((client, server)));
    }
    Ok(())
}
