//! A tiny real HTTP server that answers every request with its headers as a
//! JSON object: the "application" behind a proxy in proxy tests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use tokio::net::TcpListener;

/// Starts the echo server on 127.0.0.1:0; it runs until the test process ends.
pub async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    crate::serve_http(listener, |request: Request<hyper::body::Incoming>| async move {
        let headers: BTreeMap<String, String> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = serde_json::to_vec(&headers).unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    addr
}
