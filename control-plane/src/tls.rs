//! TLS on the control plane's listeners (rustls), with optional client
//! certificates (mTLS) and certificate rotation without a restart: the
//! files are checked every `--tls-reload-interval` and, when one changed,
//! loaded into a new configuration that every later handshake uses. A file
//! that does not load keeps the previous configuration (and is logged).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::background::Background;
use crate::config::TlsArgs;
use crate::error::{Error, Result};

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS configuration, reloaded when its files change.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

/// The PEM files a configuration is built from.
struct TlsFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

/// Modification time and length of each file: what "changed" means.
type Stamp = Vec<Option<(SystemTime, u64)>>;

impl ReloadingTls {
    /// Loads the configured files; `None` when TLS is not configured.
    pub fn load(args: &TlsArgs) -> Result<Option<Arc<Self>>> {
        let (Some(cert_file), Some(key_file)) = (&args.cert_file, &args.key_file) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: args.client_ca_file.clone(),
        };
        let current = RwLock::new(Arc::new(files.build()?));
        Ok(Some(Arc::new(Self { files, current })))
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca_file.is_some()
    }

    /// An acceptor with the newest configuration.
    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    /// Reloads the files whenever they change, until `stop` is cancelled.
    pub async fn reload_on_change(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut seen = self.files.stamp();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let stamp = self.files.stamp();
            if stamp == seen {
                continue;
            }
            seen = stamp;
            match self.files.build() {
                Ok(config) => {
                    *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
                    tracing::info!(cert = %self.files.cert_file.display(), "reloaded the TLS certificate");
                }
                Err(error) => tracing::error!(%error, "TLS files changed but do not load; keeping the previous ones"),
            }
        }
    }
}

impl TlsFiles {
    fn build(&self) -> Result<ServerConfig> {
        let certs = read_certificates(&self.cert_file, "--tls-cert-file")?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|e| Error::Config(format!("--tls-key-file {}: {e}", self.key_file.display())))?;
        let builder = ServerConfig::builder();
        let builder = match &self.client_ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certificates(path, "--tls-client-ca-file")? {
                    roots
                        .add(cert)
                        .map_err(|e| Error::Config(format!("--tls-client-ca-file {}: {e}", path.display())))?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| Error::Config(format!("--tls-client-ca-file {}: {e}", path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| Error::Config(format!("--tls-cert-file / --tls-key-file: {e}")))?;
        // gRPC is HTTP/2; clients such as tonic insist on negotiating it.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn stamp(&self) -> Stamp {
        let files = [Some(&self.cert_file), Some(&self.key_file), self.client_ca_file.as_ref()];
        files
            .into_iter()
            .flatten()
            .map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }
}

fn read_certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let invalid = |e: &dyn std::fmt::Display| Error::Config(format!("{flag} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&e))?;
    if certs.is_empty() {
        return Err(invalid(&"no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Accepted connections, with TLS when `tls` is set. Handshakes run in
/// their own tasks, so a slow or silent client cannot hold up others. The
/// accept loop is one of `tasks`: it closes the listener once the stream
/// is dropped, and waiting for `tasks` means the address is free again.
pub fn incoming(listener: TcpListener, tls: Option<Arc<ReloadingTls>>, background: &Background) -> Incoming {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let handshakes = background.clone();
    background.spawn_child(async move {
        loop {
            let accepted = tokio::select! {
                () = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small gRPC frames must not wait for ACKs.
            let _ = stream.set_nodelay(true);
            let Some(tls) = &tls else {
                if sender.send(Ok(Connection::Plain(stream))).await.is_err() {
                    return;
                }
                continue;
            };
            let (acceptor, sender) = (tls.acceptor(), sender.clone());
            handshakes.spawn_child(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(Connection::Tls(Box::new(stream)))).await;
                    }
                    Ok(Err(error)) => tracing::warn!(%peer, %error, "TLS handshake refused"),
                    Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// The connections [`incoming`] accepts.
pub type Incoming = ReceiverStream<io::Result<Connection>>;

/// An accepted connection, plaintext or TLS.
pub enum Connection {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Self::Plain(stream) => stream.connect_info(),
            Self::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
