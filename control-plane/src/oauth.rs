//! OAuth 2.0 providers declared by the operator (`--oauth-providers FILE`)
//! and the token-endpoint calls Keyplane makes to them: authorization-code
//! exchange with PKCE (RFC 6749 §4.1.3, RFC 7636), refresh (§6) and
//! revocation (RFC 7009). Calls go through the SSRF-checked egress client.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::egress::{EgressClient, EgressPolicy};
use crate::error::{Error, Result};

/// Longest provider error description repeated to callers.
const MAX_DESCRIPTION: usize = 300;

/// How Keyplane authenticates to a provider's token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with client id and secret (the default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// One `[providers.<name>]` table of the providers file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    token_url: String,
    revocation_url: Option<String>,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    #[serde(default)]
    auth_method: AuthMethod,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    #[serde(default)]
    providers: BTreeMap<String, ProviderEntry>,
}

/// A provider, ready to call. Its `Debug` never shows the client secret.
#[derive(Clone)]
pub struct Provider {
    /// Name used in requests.
    pub name: String,
    token_url: Url,
    revocation_url: Option<Url>,
    client_id: String,
    client_secret: String,
    auth_method: AuthMethod,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("token_url", &self.token_url.as_str())
            .field("auth_method", &self.auth_method)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Whether the provider can revoke tokens.
    pub fn can_revoke(&self) -> bool {
        self.revocation_url.is_some()
    }
}

/// A client secret named by a configuration file: read from
/// `client_secret_file` or the variable `client_secret_env` (exactly one).
pub fn client_secret(file: Option<&Path>, variable: Option<&str>) -> std::result::Result<String, String> {
    match (file, variable) {
        (Some(file), None) => std::fs::read_to_string(file)
            .map(|secret| secret.trim().to_owned())
            .map_err(|e| format!("cannot read client_secret_file {}: {e}", file.display())),
        (None, Some(variable)) => {
            std::env::var(variable).map_err(|_| format!("client_secret_env names {variable}, which is not set"))
        }
        _ => Err("set exactly one of client_secret_file and client_secret_env".into()),
    }
}

/// The configured providers, by name.
#[derive(Clone, Debug, Default)]
pub struct Providers(BTreeMap<String, Provider>);

impl Providers {
    /// Reads the providers file; a malformed file, an unknown field or a
    /// missing secret stops start-up with a message naming the line or provider.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read OAuth providers file {}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses providers-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let file: ProvidersFile =
            toml::from_str(text).map_err(|e| Error::Config(format!("OAuth providers file {origin}: {e}")))?;
        let mut providers = BTreeMap::new();
        for (name, entry) in file.providers {
            let bad = |why: String| Error::Config(format!("OAuth providers file {origin}: [providers.{name}] {why}"));
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(bad("the name must be letters, digits, '-', '_' or '.'".into()));
            }
            let url = |field: &str, value: &str| {
                Url::parse(value)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "https" | "http"))
                    .ok_or_else(|| bad(format!("{field} is not an http(s) URL: {value:?}")))
            };
            let token_url = url("token_url", &entry.token_url)?;
            let revocation_url = entry.revocation_url.as_deref().map(|u| url("revocation_url", u)).transpose()?;
            let client_secret =
                client_secret(entry.client_secret_file.as_deref(), entry.client_secret_env.as_deref()).map_err(bad)?;
            if entry.client_id.is_empty() || client_secret.is_empty() {
                return Err(bad("client_id and the client secret must not be empty".into()));
            }
            let provider = Provider {
                name: name.clone(),
                token_url,
                revocation_url,
                client_id: entry.client_id,
                client_secret,
                auth_method: entry.auth_method,
            };
            providers.insert(name, provider);
        }
        Ok(Self(providers))
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.0.get(name)
    }

    /// Every provider name.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// What a token endpoint issued.
#[derive(Clone, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    /// A refresh token, if issued (or rotated).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Lifetime of the access token in seconds.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Granted scopes, space-separated.
    #[serde(default)]
    pub scope: Option<String>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet").field("expires_in", &self.expires_in).field("scope", &self.scope).finish()
    }
}

/// An OAuth error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Calls providers' token and revocation endpoints.
pub struct OAuthClient {
    http: EgressClient,
}

impl OAuthClient {
    /// A client whose requests obey `egress` and time out after `timeout`.
    pub fn new(egress: &Arc<EgressPolicy>, timeout: Duration) -> Result<Self> {
        let http = egress.client(timeout).map_err(|e| Error::Config(format!("OAuth HTTP client: {e}")))?;
        Ok(Self { http })
    }

    /// Exchanges an authorization code (with its PKCE verifier, if any).
    pub async fn exchange_code(
        &self,
        provider: &Provider,
        code: &str,
        redirect_uri: &str,
        code_verifier: Option<&str>,
    ) -> Result<TokenSet> {
        let mut form = vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirect_uri)];
        if let Some(verifier) = code_verifier {
            form.push(("code_verifier", verifier));
        }
        self.token_request(provider, form).await
    }

    /// Exchanges a refresh token for new tokens.
    pub async fn refresh(&self, provider: &Provider, refresh_token: &str) -> Result<TokenSet> {
        self.token_request(provider, vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)]).await
    }

    /// Revokes `token` (RFC 7009); `hint` is `refresh_token` or `access_token`.
    pub async fn revoke(&self, provider: &Provider, token: &str, hint: &str) -> Result<()> {
        let Some(url) = &provider.revocation_url else {
            return Err(Error::FailedPrecondition(format!("provider {} has no revocation_url", provider.name)));
        };
        let response = self.send(provider, url, vec![("token", token), ("token_type_hint", hint)]).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(self.failure(provider, status, &body))
    }

    async fn token_request(&self, provider: &Provider, form: Vec<(&str, &str)>) -> Result<TokenSet> {
        let response = self.send(provider, &provider.token_url, form).await?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unavailable(provider, e))?;
        if !status.is_success() {
            return Err(self.failure(provider, status, &body));
        }
        let tokens: TokenSet = serde_json::from_slice(&body).map_err(|_| {
            Error::ProviderUnavailable(format!(
                "provider {} answered {status} without a JSON token response with an access_token",
                provider.name
            ))
        })?;
        if tokens.access_token.is_empty() {
            return Err(Error::ProviderUnavailable(format!(
                "provider {} returned an empty access_token",
                provider.name
            )));
        }
        Ok(tokens)
    }

    /// POSTs `form` to `url` with the provider's client authentication.
    async fn send(&self, provider: &Provider, url: &Url, mut form: Vec<(&str, &str)>) -> Result<reqwest::Response> {
        let mut request = self
            .http
            .post(url.clone())
            .map_err(|why| {
                Error::ProviderUnavailable(format!("provider {} is not reachable by policy: {why}", provider.name))
            })?
            .header(http::header::ACCEPT, "application/json");
        match provider.auth_method {
            AuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: form-urlencode id and secret before Basic encoding.
                let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                request = request.basic_auth(encode(&provider.client_id), Some(encode(&provider.client_secret)));
            }
            AuthMethod::ClientSecretPost => {
                form.push(("client_id", &provider.client_id));
                form.push(("client_secret", &provider.client_secret));
            }
        }
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        request
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| self.unavailable(provider, e))
    }

    fn unavailable(&self, provider: &Provider, error: reqwest::Error) -> Error {
        Error::ProviderUnavailable(format!("provider {} is unreachable: {}", provider.name, self.http.failure(error)))
    }

    /// A non-2xx answer: an OAuth error is the provider refusing (e.g.
    /// `invalid_grant`); a 5xx or anything else means it is not working.
    fn failure(&self, provider: &Provider, status: reqwest::StatusCode, body: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorAnswer>(body) {
            Ok(answer) if status.is_client_error() => {
                let description = answer
                    .error_description
                    .map(|d| format!(" ({})", d.chars().take(MAX_DESCRIPTION).collect::<String>()))
                    .unwrap_or_default();
                Error::ProviderRejected(format!("provider {} refused: {}{description}", provider.name, answer.error))
            }
            _ => Error::ProviderUnavailable(format!("provider {} answered {status}", provider.name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_file_is_strict_and_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let good = format!(
            "[providers.acme-dns]\ntoken_url = \"https://auth.example/token\"\nrevocation_url = \"https://auth.example/revoke\"\n\
             client_id = \"keyplane\"\nclient_secret_file = \"{}\"\nauth_method = \"client_secret_post\"\n",
            secret.display()
        );
        let providers = Providers::parse(&good, "test").unwrap();
        let provider = providers.get("acme-dns").unwrap();
        assert_eq!(provider.client_secret, "s3cret");
        assert_eq!(provider.auth_method, AuthMethod::ClientSecretPost);
        assert!(provider.can_revoke());
        assert!(!format!("{provider:?}").contains("s3cret"));

        let unknown = good.replace("auth_method", "color = \"red\"\nauth_method");
        let error = Providers::parse(&unknown, "test").unwrap_err().to_string();
        assert!(error.contains("line 6") && error.contains("color"), "{error}");
        let malformed = "[providers.x\ntoken_url = 1";
        assert!(Providers::parse(malformed, "test").unwrap_err().to_string().contains("line 1"));
        let no_secret = good.replace(&format!("client_secret_file = \"{}\"\n", secret.display()), "");
        assert!(Providers::parse(&no_secret, "test").unwrap_err().to_string().contains("exactly one"));
        let bad_method = good.replace("client_secret_post", "magic");
        assert!(Providers::parse(&bad_method, "test").unwrap_err().to_string().contains("line 6"));
    }
}
