//! The sidecar's listeners: TCP, or a Unix domain socket next to the
//! application (Envoy can reach ext_authz over one).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tonic::transport::server::Connected;

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

/// A gRPC connection that tells h2 it cannot write vectored, so that h2
/// copies each answer into its write buffer and sends many in one write.
///
/// h2 keeps a DATA frame of 256 bytes or more apart from its buffer when the
/// socket writes vectored, and then must flush (one `writev` per answer)
/// before it will buffer the next frame; without vectored writes the limit
/// is 1 KiB. The allowed ext_authz answer (six identity headers) is ~265
/// bytes, just over the first limit: under load each answer cost its own
/// system call, where answers of a few bytes are batched.
pub struct CopiedWrites<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for CopiedWrites<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// `is_write_vectored` and `poll_write_vectored` keep the trait's defaults
/// (false; one buffer at a time through `poll_write`).
impl<T: AsyncWrite + Unpin> AsyncWrite for CopiedWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for CopiedWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn copied_writes_are_not_vectored_and_pass_bytes_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert!(accepted.is_write_vectored(), "a TCP stream writes vectored: the wrapper must hide it");
        let mut server = CopiedWrites(accepted);
        assert!(!server.is_write_vectored());
        assert_eq!(server.connect_info().remote_addr(), Some(peer));

        client.write_all(b"check").await.unwrap();
        let mut request = [0; 5];
        server.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"check");
        let sent = server.write_vectored(&[io::IoSlice::new(b"al"), io::IoSlice::new(b"lowed")]).await.unwrap();
        assert_eq!(sent, 2, "one buffer at a time");
        server.write_all(b"lowed").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "allowed");
    }
}
