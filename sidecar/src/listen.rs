//! The sidecar's listeners: TCP, or a Unix domain socket next to the
//! application (Envoy can reach ext_authz over one).

use std::path::Path;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::config::ListenAddr;
use crate::error::{Error, Result};

/// A bound listener.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix domain socket.
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

impl Listener {
    /// Binds `addr`. A leftover socket file (from a previous run) is
    /// replaced; any other existing file is an error.
    pub async fn bind(addr: &ListenAddr) -> Result<Self> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Self::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                UnixListener::bind(path)
                    .map(Self::Unix)
                    .map_err(|e| Error::Config(format!("cannot listen on unix:{}: {e}", path.display())))
            }
        }
    }

    /// Where it listens, for logs.
    pub fn address_text(&self) -> String {
        match self {
            Self::Tcp(listener) => listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            Self::Unix(listener) => listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix socket".into()),
        }
    }

    /// The next connection and its peer (`unix` for a socket peer).
    pub async fn accept(&self) -> std::io::Result<(Connection, String)> {
        match self {
            Self::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((Connection::Left(stream), peer.to_string()))
            }
            Self::Unix(listener) => Ok((Connection::Right(listener.accept().await?.0), "unix".into())),
        }
    }
}

fn remove_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(std::fs::remove_file(path)?),
        Ok(_) => Err(Error::Config(format!("{} exists and is not a socket", path.display()))),
        Err(_) => Ok(()),
    }
}

/// An accepted connection of either kind (`Either` reads and writes
/// through to whichever it holds).
pub type Connection = tokio_util::either::Either<TcpStream, UnixStream>;
