//! A fake OAuth 2.0 provider on loopback (a real hyper server): issues codes
//! and tokens, checks client authentication and PKCE, refreshes and rotates
//! refresh tokens, revokes, and can fail the next token request with
//! `invalid_grant`, a 500, a hang, malformed JSON or no access token.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// How the provider authenticates Keyplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic.
    Basic,
    /// Form fields.
    Post,
}

/// A failure the next token request gets (a revocation request fails
/// with a 500 whatever the kind).
#[derive(Clone, Debug)]
pub enum Failure {
    /// 400 `{"error":"invalid_grant"}`.
    InvalidGrant,
    /// 500.
    ServerError,
    /// No answer for this long.
    Hang(Duration),
    /// 200 with an HTML body.
    NotJson,
    /// 200 with JSON lacking `access_token`.
    NoAccessToken,
}

struct State {
    client_id: String,
    client_secret: String,
    auth: ClientAuth,
    codes: Mutex<HashMap<String, Option<String>>>,
    refresh_tokens: Mutex<HashSet<String>>,
    access_lifetime: AtomicU64,
    refreshes: AtomicUsize,
    issued: AtomicUsize,
    revoked: Mutex<Vec<(String, String)>>,
    next_failure: Mutex<Option<Failure>>,
    issued_tokens: Mutex<Vec<String>>,
}

/// The running provider.
#[derive(Clone)]
pub struct FakeProvider {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl FakeProvider {
    /// Starts a provider on 127.0.0.1:0 for one client.
    pub async fn start(client_id: &str, client_secret: &str, auth: ClientAuth) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind provider");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            auth,
            codes: Mutex::default(),
            refresh_tokens: Mutex::default(),
            access_lifetime: AtomicU64::new(3600),
            refreshes: AtomicUsize::new(0),
            issued: AtomicUsize::new(0),
            revoked: Mutex::default(),
            next_failure: Mutex::default(),
            issued_tokens: Mutex::default(),
        });
        let shared = state.clone();
        crate::serve_http(listener, move |request| answer(shared.clone(), request));
        Self { addr, state }
    }

    /// A new single-use authorization code, bound to a PKCE S256 challenge if given.
    pub fn issue_code(&self, challenge: Option<&str>) -> String {
        let code = format!("code_{}", crate::postgres::random_suffix());
        self.state.codes.lock().expect("lock").insert(code.clone(), challenge.map(str::to_owned));
        code
    }

    /// The S256 challenge of a PKCE verifier.
    pub fn challenge(verifier: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }

    /// Makes the next token request fail.
    pub fn fail_next(&self, failure: Failure) {
        *self.state.next_failure.lock().expect("lock") = Some(failure);
    }

    /// `expires_in` of access tokens issued from now on.
    pub fn set_access_lifetime(&self, seconds: u64) {
        self.state.access_lifetime.store(seconds, Ordering::SeqCst);
    }

    /// Refresh-token grants served.
    pub fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// Revocations received: (token, token_type_hint).
    pub fn revoked(&self) -> Vec<(String, String)> {
        self.state.revoked.lock().expect("lock").clone()
    }

    /// Every access and refresh token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued_tokens.lock().expect("lock").clone()
    }

    /// Refresh tokens currently valid.
    pub fn valid_refresh_tokens(&self) -> HashSet<String> {
        self.state.refresh_tokens.lock().expect("lock").clone()
    }

    /// A `[providers.<name>]` table for Keyplane's providers file.
    pub fn provider_toml(&self, name: &str, secret_file: &std::path::Path, auth_method: &str) -> String {
        format!(
            "[providers.{name}]\ntoken_url = \"http://{0}/token\"\nrevocation_url = \"http://{0}/revoke\"\n\
             client_id = \"{1}\"\nclient_secret_file = \"{2}\"\nauth_method = \"{auth_method}\"\n",
            self.addr,
            self.state.client_id,
            secret_file.display()
        )
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    response
}

fn oauth_error(status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": error, "error_description": format!("fake provider: {error}") }))
}

async fn answer(
    state: Arc<State>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let basic = request.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();

    let expected_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", state.client_id, state.client_secret))
    );
    let authenticated = match state.auth {
        ClientAuth::Basic => basic.as_deref() == Some(expected_basic.as_str()),
        ClientAuth::Post => {
            form.get("client_id") == Some(&state.client_id) && form.get("client_secret") == Some(&state.client_secret)
        }
    };
    if !authenticated {
        return Ok(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"));
    }
    if path == "/revoke" {
        if state.next_failure.lock().expect("lock").take().is_some() {
            return Ok(oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error"));
        }
        let token = form.get("token").cloned().unwrap_or_default();
        state.refresh_tokens.lock().expect("lock").remove(&token);
        let hint = form.get("token_type_hint").cloned().unwrap_or_default();
        state.revoked.lock().expect("lock").push((token, hint));
        return Ok(Response::new(Full::new(Bytes::new())));
    }

    let failure = state.next_failure.lock().expect("lock").take();
    match failure {
        Some(Failure::InvalidGrant) => return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant")),
        Some(Failure::ServerError) => return Ok(oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error")),
        Some(Failure::Hang(duration)) => tokio::time::sleep(duration).await,
        Some(Failure::NotJson) => return Ok(Response::new(Full::new(Bytes::from_static(b"<html>oops</html>")))),
        Some(Failure::NoAccessToken) => return Ok(json(StatusCode::OK, serde_json::json!({ "token_type": "Bearer" }))),
        None => {}
    }
    let rotate = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(challenge) = state.codes.lock().expect("lock").remove(&code) else {
                return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
            };
            let verified = match (challenge, form.get("code_verifier")) {
                (None, None) => true,
                (Some(challenge), Some(verifier)) => FakeProvider::challenge(verifier) == challenge,
                _ => false,
            };
            if !verified || !form.contains_key("redirect_uri") {
                return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
            }
            true
        }
        Some("refresh_token") => {
            let token = form.get("refresh_token").cloned().unwrap_or_default();
            if !state.refresh_tokens.lock().expect("lock").remove(&token) {
                return Ok(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
            }
            state.refreshes.fetch_add(1, Ordering::SeqCst);
            // Slow enough that concurrent callers would pile up here.
            tokio::time::sleep(Duration::from_millis(100)).await;
            true
        }
        _ => return Ok(oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type")),
    };
    let n = state.issued.fetch_add(1, Ordering::SeqCst);
    let access = format!("at{n}_{}", crate::postgres::random_suffix());
    let mut response = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": state.access_lifetime.load(Ordering::SeqCst),
        "scope": "zones:read zones:write",
    });
    let mut issued = vec![access];
    if rotate {
        let refresh = format!("rt{n}_{}", crate::postgres::random_suffix());
        state.refresh_tokens.lock().expect("lock").insert(refresh.clone());
        response["refresh_token"] = serde_json::json!(refresh);
        issued.push(refresh);
    }
    state.issued_tokens.lock().expect("lock").extend(issued);
    Ok(json(StatusCode::OK, response))
}
