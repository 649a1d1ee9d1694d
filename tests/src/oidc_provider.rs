//! The certified OpenID provider `oidc-provider` (npm), run by Node from
//! `tests/oidc/provider.mjs` on loopback, and a person's way through its
//! development login and consent forms over HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub const CLIENT_ID: &str = "keyplane-console";
pub const CLIENT_SECRET: &str = "oidc-test-client-secret-0123456789";

/// A running provider; stops with the test.
pub struct OidcProvider {
    pub issuer: String,
    http: reqwest::Client,
    _child: tokio::process::Child,
}

impl OidcProvider {
    /// Starts the provider for a console whose callback is `redirect_uri`;
    /// `None` (skipped, or a failure under CI) when its packages are missing.
    pub async fn start(redirect_uri: &str) -> Option<Self> {
        let packages = concat!(env!("CARGO_MANIFEST_DIR"), "/oidc/node_modules/oidc-provider");
        if !crate::tool_available("test", &["-d", packages], "cd tests/oidc && npm ci") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/oidc/provider.mjs");
        let mut child = tokio::process::Command::new("node")
            .args([script, &port.to_string(), CLIENT_ID, CLIENT_SECRET, redirect_uri])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().expect("stdout");
        let issuer = crate::process::first_line_with(stdout, "the OpenID provider", |line| {
            line.strip_prefix("ready ").map(str::to_owned)
        })
        .await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Some(Self { issuer, http, _child: child })
    }

    /// Writes an `--oidc-config` file for this provider (and its client
    /// secret file) into `dir`: `grants` are `(group, org, role)`.
    pub fn write_config(&self, dir: &Path, redirect_uri: &str, grants: &[(&str, &str, &str)]) -> PathBuf {
        let secret = dir.join("oidc-client-secret");
        std::fs::write(&secret, CLIENT_SECRET).expect("secret file");
        let mut text = format!(
            "issuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\n\
             redirect_url = \"{redirect_uri}\"\nlabel = \"Example SSO\"\n",
            self.issuer,
            secret.display()
        );
        for (group, org, role) in grants {
            text.push_str(&format!("[[grant]]\ngroup = \"{group}\"\norg = \"{org}\"\nrole = \"{role}\"\n"));
        }
        let path = dir.join("oidc.toml");
        std::fs::write(&path, text).expect("oidc config");
        path
    }

    /// Makes the token endpoint forge the next ID tokens (`none` stops).
    pub async fn tamper(&self, mode: &str) {
        let url = format!("{}/_test/tamper?mode={mode}", self.issuer);
        assert!(self.http.get(url).send().await.expect("tamper").status().is_success());
    }

    /// Puts account `sub` in `groups` at the provider.
    pub async fn set_groups(&self, sub: &str, groups: &[&str]) {
        let url = format!("{}/_test/groups?sub={sub}&groups={}", self.issuer, groups.join(","));
        assert!(self.http.get(url).send().await.expect("groups").status().is_success());
    }

    /// Goes through the provider as `login` would in a browser of its own,
    /// from the console's redirect to `authorize_url`: the login form, the
    /// consent form, until the provider sends the browser back. Returns
    /// the callback URL's path and query.
    pub async fn sign_in(&self, authorize_url: &str, login: &str) -> String {
        let mut cookies: HashMap<String, String> = HashMap::new();
        let mut url = authorize_url.to_owned();
        let mut form: Option<Vec<(String, String)>> = None;
        for _ in 0..12 {
            let cookie = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            let request = match form.take() {
                Some(fields) => self
                    .http
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(serde_urlencoded::to_string(&fields).expect("form")),
                None => self.http.get(&url),
            };
            let response = request.header("cookie", cookie).send().await.expect("provider");
            for set in response.headers().get_all("set-cookie") {
                let text = set.to_str().unwrap_or_default();
                if let Some((name, value)) = text.split(';').next().and_then(|pair| pair.split_once('=')) {
                    cookies.insert(name.to_owned(), value.to_owned());
                }
            }
            if let Some(location) = response.headers().get("location") {
                let location = location.to_str().expect("location").to_owned();
                if !location.starts_with(&self.issuer) && location.contains("/login/oidc/callback") {
                    let at = location.find("/login/oidc/callback").expect("callback path");
                    return location[at..].to_owned();
                }
                url = if location.starts_with('/') { format!("{}{location}", self.issuer) } else { location };
                continue;
            }
            let page = response.text().await.expect("provider page");
            let prompt = if page.contains("name=\"prompt\" value=\"login\"") { "login" } else { "consent" };
            let mut fields = vec![("prompt".to_owned(), prompt.to_owned())];
            if prompt == "login" {
                fields.push(("login".into(), login.into()));
                fields.push(("password".into(), "any password".into()));
            }
            form = Some(fields);
        }
        panic!("the provider never sent the browser back");
    }
}
