//! A real webhook receiver on loopback whose answer is scripted per path:
//! succeed, fail N times, hang past the timeout, 429 with Retry-After, 410,
//! or redirect. It records every request it gets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How the receiver answers requests to one path.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with a short body.
    Succeed,
    /// 500 for the first `times` requests, then 200.
    Fail {
        /// Failures before success.
        times: usize,
    },
    /// Never answers within `for_`.
    Hang(Duration),
    /// 429 with this `Retry-After` for the first `times` requests, then 200.
    TooManyRequests {
        /// The header value.
        retry_after: String,
        /// Refusals before success.
        times: usize,
    },
    /// 410 Gone.
    Gone,
    /// 307 to this location.
    Redirect(String),
    /// 503 with a body of this many bytes.
    LargeError(usize),
    /// 422 with `webhook-delivery: abort-message` (stop retrying).
    Abort,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// Whether it was answered 2xx in time (a hung answer is not: the
    /// sender gave up on it).
    pub answered_ok: bool,
}

impl Received {
    /// A header as text (empty when missing).
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }
}

/// Every request, and how many each path got (so counting is O(1) for a
/// load generator's hundreds of thousands of requests).
#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    per_path: HashMap<String, usize>,
}

#[derive(Default)]
struct State {
    log: Mutex<Log>,
    behaviors: Mutex<HashMap<String, Behavior>>,
    arrived: Notify,
}

/// The running receiver; it stops with the test process.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:0 (every path succeeds until told otherwise).
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts a receiver on `addr` (a loopback address, port 0).
    pub async fn start_on(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let shared = state.clone();
        crate::serve_http(listener, move |request| answer(shared.clone(), request));
        Self { addr, scheme: "http", state }
    }

    /// Starts an HTTPS receiver on 127.0.0.1:0 presenting `server`; with
    /// `client_ca` (PEM), only clients with a certificate it issued get
    /// through the handshake.
    pub async fn start_tls(server: &crate::certs::Pair, client_ca: Option<&str>) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(server.cert.as_bytes()).collect::<Result<_, _>>().expect("server chain");
        let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes()).expect("server key");
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(cert.expect("client CA")).expect("add client CA");
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().expect("verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let shared = state.clone();
        tokio::spawn(async move {
            use hyper_util::rt::{TokioExecutor, TokioIo};
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    // A refused handshake (no or an unknown client certificate) ends here.
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let service = hyper::service::service_fn(move |request| answer(shared.clone(), request));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, scheme: "https", state }
    }

    /// `http://<addr><path>` (`[::1]` for IPv6; `https` for a TLS receiver).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// Scripts the answers to `path`.
    pub fn set(&self, path: &str, behavior: Behavior) {
        self.state.behaviors.lock().expect("lock").insert(path.to_owned(), behavior);
    }

    /// Requests received on `path` so far.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.state.log.lock().expect("lock").requests.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The distinct `webhook-id`s `path` got so far.
    pub fn webhook_ids(&self, path: &str) -> std::collections::HashSet<String> {
        self.received(path).iter().map(|r| r.header("webhook-id")).collect()
    }

    /// How many requests `path` got so far.
    pub fn count(&self, path: &str) -> usize {
        self.state.log.lock().expect("lock").per_path.get(path).copied().unwrap_or(0)
    }

    /// Waits until `path` got at least `count` requests; panics after `timeout`.
    pub async fn wait_for(&self, path: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.state.arrived.notified();
            if self.count(path) >= count {
                return self.received(path);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{path} got {} requests, expected {count} within {timeout:?}", self.count(path));
            }
        }
    }
}

async fn answer(
    state: Arc<State>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let behavior = state.behaviors.lock().expect("lock").get(&path).cloned().unwrap_or(Behavior::Succeed);
    let seen = {
        let mut log = state.log.lock().expect("lock");
        let seen = log.per_path.entry(path.clone()).or_default();
        *seen += 1;
        let seen = *seen;
        let answered_ok = match &behavior {
            Behavior::Succeed => true,
            Behavior::Fail { times } | Behavior::TooManyRequests { times, .. } => seen > *times,
            _ => false,
        };
        log.requests.push(Received { path: path.clone(), headers, body, at, answered_ok });
        seen
    };
    state.arrived.notify_waiters();
    let respond = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    Ok(match behavior {
        Behavior::Succeed => respond(StatusCode::OK, "ok"),
        Behavior::Fail { times } if seen <= times => respond(StatusCode::INTERNAL_SERVER_ERROR, "receiver failure"),
        Behavior::Fail { .. } => respond(StatusCode::OK, "ok"),
        Behavior::Hang(duration) => {
            tokio::time::sleep(duration).await;
            respond(StatusCode::OK, "late")
        }
        Behavior::TooManyRequests { retry_after, times } if seen <= times => {
            let mut response = respond(StatusCode::TOO_MANY_REQUESTS, "slow down");
            response.headers_mut().insert("retry-after", retry_after.parse().expect("header value"));
            response
        }
        Behavior::TooManyRequests { .. } => respond(StatusCode::OK, "ok"),
        Behavior::Gone => respond(StatusCode::GONE, "gone"),
        Behavior::Abort => {
            let mut response = respond(StatusCode::UNPROCESSABLE_ENTITY, "not for us");
            response.headers_mut().insert("webhook-delivery", "abort-message".parse().expect("header value"));
            response
        }
        Behavior::LargeError(size) => {
            let mut response = Response::new(Full::new(Bytes::from(vec![b'x'; size])));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
        Behavior::Redirect(location) => {
            let mut response = respond(StatusCode::TEMPORARY_REDIRECT, "");
            response.headers_mut().insert("location", location.parse().expect("location"));
            response
        }
    })
}
