//! A TCP proxy on `127.0.0.1:0` that a test can cut (connections closed),
//! black-hole (connections kept open, nothing forwarded) or make drop the
//! server's answers: the network faults between one process and its
//! database or its control plane.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// What the proxy does with the bytes of its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Requests reach the server; its answers are dropped.
    MuteReplies,
    /// New connections refused (open ones were closed by the cut).
    Cut,
    /// Connections kept open, silent, until restored (then closed).
    Blackhole,
}

/// The mode, and how many cuts there have been: a connection ends when a
/// cut happens after it opened, even if the proxy was restored meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    mode: Mode,
    cuts: u64,
}

/// A running proxy.
pub struct TcpProxy {
    /// Address clients connect to.
    pub addr: std::net::SocketAddr,
    state: watch::Sender<State>,
}

impl TcpProxy {
    /// Starts forwarding every connection to `upstream`.
    pub async fn start(upstream: Upstream) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (state, _) = watch::channel(State { mode: Mode::Forward, cuts: 0 });
        let modes = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if modes.borrow().mode == Mode::Cut {
                    drop(client);
                    continue;
                }
                let (upstream, modes) = (upstream.clone(), modes.clone());
                tokio::spawn(async move {
                    match upstream {
                        Upstream::Tcp(addr) => {
                            if let Ok(server) = TcpStream::connect(addr).await {
                                forward(client, server, &modes).await;
                            }
                        }
                        Upstream::Unix(path) => {
                            if let Ok(server) = UnixStream::connect(path).await {
                                forward(client, server, &modes).await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, state }
    }

    /// Closes every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.state.send_modify(|state| *state = State { mode: Mode::Cut, cuts: state.cuts + 1 });
    }

    /// Stops forwarding on every connection but keeps it open (a partition
    /// that drops packets): the peers wait for answers that never come.
    pub fn blackhole(&self) {
        self.state.send_modify(|state| state.mode = Mode::Blackhole);
    }

    /// Keeps forwarding requests to the server but drops its answers: the
    /// server acts on a request whose client never learns it did.
    pub fn mute_replies(&self) {
        self.state.send_modify(|state| state.mode = Mode::MuteReplies);
    }

    /// Forwards again (black-holed connections are closed).
    pub fn restore(&self) {
        self.state.send_modify(|state| state.mode = Mode::Forward);
    }
}

async fn forward<S>(client: TcpStream, server: S, modes: &watch::Sender<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    tokio::join!(
        pump(client_read, server_write, modes.subscribe(), false),
        pump(server_read, client_write, modes.subscribe(), true),
    );
}

/// Copies `from` to `to` as the mode says; `replies` is the server-to-client direction.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut state: watch::Receiver<State>,
    replies: bool,
) {
    let cuts = state.borrow().cuts;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = state.changed() => match changed {
                Ok(()) if state.borrow().cuts != cuts => return,
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        let Ok(count) = read.map(|n| n.min(buffer.len())) else { return };
        if count == 0 {
            let _ = to.shutdown().await;
            return;
        }
        let current = *state.borrow();
        if current.cuts != cuts {
            return;
        }
        match current.mode {
            Mode::Cut => return,
            Mode::Blackhole => {
                // Held open and silent until restored, then closed.
                let _ = state.wait_for(|s| s.mode != Mode::Blackhole || s.cuts != cuts).await;
                return;
            }
            Mode::MuteReplies if replies => continue,
            Mode::Forward | Mode::MuteReplies => {}
        }
        if to.write_all(&buffer[..count]).await.is_err() {
            return;
        }
    }
}
