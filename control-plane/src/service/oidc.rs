//! Sign-in with the company's OpenID provider (`--oidc-config FILE`): the
//! authorization-code flow with PKCE, the provider found by discovery from
//! its issuer URL, and the ID token's signature, issuer, audience, expiry
//! and nonce checked by the `openidconnect` crate. The provider's groups
//! claim maps to rights per org through the file's `[[grant]]` tables.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use base64::Engine;
use openidconnect::core::{CoreClient, CoreProviderMetadata, CoreResponseType};
use openidconnect::{
    AsyncHttpClient, AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, TokenResponse,
};
use serde::Deserialize;
use serde_json::Value;

use super::authz::check_org_id;
use super::scopes::{EVERY_ORG, Right, Rights, Scope};
use crate::error::{Error, Result};
use crate::store::users::SignedIn;

/// The provider's metadata and keys are fetched again after this long, so
/// that rotated signing keys are picked up.
const METADATA_TTL: Duration = Duration::from_secs(300);
/// The longest a call to the provider may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// What each `role` of a grant holds.
fn role_scopes(role: &str) -> Option<Vec<String>> {
    let scopes: &[Scope] = match role {
        "admin" => &[Scope::Admin],
        "viewer" => &[
            Scope::KeysRead,
            Scope::WebhooksRead,
            Scope::DeliveriesRead,
            Scope::AuditRead,
            Scope::ConnectionsRead,
            Scope::UsageRead,
        ],
        _ => return None,
    };
    Some(scopes.iter().map(|scope| scope.as_str().to_owned()).collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcFile {
    issuer: String,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    /// The console's `/login/oidc/callback`, as the provider knows it.
    redirect_url: String,
    /// Shown on the sign-in button.
    #[serde(default = "default_label")]
    label: String,
    /// The ID token claim listing the person's groups.
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_scopes")]
    scopes: Vec<String>,
    #[serde(default, rename = "grant")]
    grants: Vec<GrantEntry>,
}

fn default_label() -> String {
    "single sign-on".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_scopes() -> Vec<String> {
    ["email", "profile", "groups"].map(String::from).to_vec()
}

/// One `[[grant]]`: members of `group` hold `role` (or `scopes`) in `org`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantEntry {
    group: String,
    /// An org id, or `*` for every org.
    org: String,
    role: Option<String>,
    scopes: Option<Vec<String>>,
}

/// The provider and the grants. Its `Debug` never shows the client secret.
#[derive(Clone)]
pub struct OidcSettings {
    issuer: IssuerUrl,
    client_id: String,
    client_secret: String,
    redirect_url: RedirectUrl,
    pub label: String,
    groups_claim: String,
    scopes: Vec<String>,
    grants: Vec<(String, Right)>,
}

impl fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id)
            .field("grants", &self.grants.len())
            .finish_non_exhaustive()
    }
}

impl OidcSettings {
    /// Reads the file; a malformed file, an unknown field, a bad grant or a
    /// missing secret stops start-up with a message naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read OpenID Connect file {}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let bad = |why: String| Error::Config(format!("OpenID Connect file {origin}: {why}"));
        let file: OidcFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let issuer = IssuerUrl::new(file.issuer.clone())
            .ok()
            .filter(|url| matches!(url.url().scheme(), "https" | "http"))
            .ok_or_else(|| bad(format!("issuer is not an http(s) URL: {:?}", file.issuer)))?;
        let redirect_url = RedirectUrl::new(file.redirect_url.clone())
            .ok()
            .filter(|url| url.url().path().ends_with("/login/oidc/callback"))
            .ok_or_else(|| {
                bad(format!("redirect_url must be the console's /login/oidc/callback: {:?}", file.redirect_url))
            })?;
        let client_secret =
            crate::oauth::client_secret(file.client_secret_file.as_deref(), file.client_secret_env.as_deref())
                .map_err(bad)?;
        if file.client_id.is_empty() || client_secret.is_empty() {
            return Err(bad("client_id and the client secret must not be empty".into()));
        }
        let mut grants = Vec::new();
        for (n, grant) in file.grants.into_iter().enumerate() {
            let bad_grant = |why: String| bad(format!("grant {} (group {:?}): {why}", n + 1, grant.group));
            if grant.org != EVERY_ORG {
                check_org_id(&grant.org)
                    .map_err(|_| bad_grant(format!("org {:?} is not an org id or *", grant.org)))?;
            }
            let scopes = match (&grant.role, &grant.scopes) {
                (Some(role), None) => {
                    role_scopes(role).ok_or_else(|| bad_grant(format!("role {role:?} is not admin or viewer")))?
                }
                (None, Some(scopes)) => {
                    if let Some(unknown) =
                        scopes.iter().find(|s| Scope::parse(s).is_none_or(|scope| scope == Scope::Sidecar))
                    {
                        return Err(bad_grant(format!("{unknown:?} is not a keyplane: scope a person may hold")));
                    }
                    scopes.clone()
                }
                _ => return Err(bad_grant("set exactly one of role and scopes".into())),
            };
            grants.push((grant.group, Right { org: grant.org, scopes }));
        }
        Ok(Self {
            issuer,
            client_id: file.client_id,
            client_secret,
            redirect_url,
            label: file.label,
            groups_claim: file.groups_claim,
            scopes: file.scopes,
            grants,
        })
    }

    /// The rights of a member of `groups`.
    pub fn rights(&self, groups: &[String]) -> Rights {
        Rights::new(self.grants.iter().filter(|(group, _)| groups.contains(group)).map(|(_, right)| right.clone()))
    }
}

/// A sign-in sent to the provider: where to send the browser, and what
/// the callback needs to finish it.
pub struct Begun {
    pub authorize_url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// Who the provider vouched for, and their groups.
#[derive(Debug)]
pub struct Vouched {
    pub person: SignedIn,
    pub groups: Vec<String>,
}

/// The OpenID provider client.
pub struct Oidc {
    pub settings: OidcSettings,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

/// A client of the provider found by discovery (its endpoints set or not
/// as the discovery document says).
type ProviderClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// The `openidconnect` crate's HTTP client, over reqwest.
struct Http<'a>(&'a reqwest::Client);

impl<'c> AsyncHttpClient<'c> for Http<'_> {
    type Error = reqwest::Error;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<HttpResponse, reqwest::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.0.execute(reqwest::Request::try_from(request)?).await?;
            let mut answer = http::Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                headers.extend(response.headers().iter().map(|(name, value)| (name.clone(), value.clone())));
            }
            let body = response.bytes().await?.to_vec();
            Ok(answer.body(body).unwrap_or_default())
        })
    }
}

/// Why a provider's answer was refused, for the log (the person sees one message).
fn refused(why: impl fmt::Display) -> Error {
    tracing::warn!(reason = %why, "an OpenID Connect sign-in was refused");
    Error::Unauthenticated("the identity provider's answer was refused; sign in again")
}

impl Oidc {
    pub fn new(settings: OidcSettings) -> Result<Self> {
        // Following redirects would let a provider's answer send Keyplane elsewhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .build()
            .map_err(|e| Error::Config(format!("OpenID Connect HTTP client: {e}")))?;
        Ok(Self { settings, http, metadata: tokio::sync::Mutex::new(None) })
    }

    /// The provider's discovery document and keys, fetched at most every
    /// [`METADATA_TTL`].
    async fn client(&self) -> Result<ProviderClient> {
        let mut cached = self.metadata.lock().await;
        let fresh = cached.as_ref().is_some_and(|(at, _)| at.elapsed() < METADATA_TTL);
        if !fresh {
            let metadata = CoreProviderMetadata::discover_async(self.settings.issuer.clone(), &Http(&self.http))
                .await
                .map_err(|e| Error::Unavailable(format!("the OpenID provider's discovery failed: {e}")))?;
            *cached = Some((Instant::now(), metadata));
        }
        let metadata = cached.as_ref().map(|(_, metadata)| metadata.clone()).ok_or(Error::NotFound("metadata"))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        )
        .set_redirect_uri(self.settings.redirect_url.clone()))
    }

    /// Starts a sign-in: a fresh state, nonce and PKCE pair.
    pub async fn begin(&self) -> Result<Begun> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &self.settings.scopes {
            request = request.add_scope(openidconnect::Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(Begun {
            authorize_url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Finishes a sign-in: exchanges `code` with the PKCE verifier and
    /// checks the ID token (signature, issuer, audience, expiry, `nonce`).
    pub async fn finish(&self, code: &str, nonce: &str, pkce_verifier: &str) -> Result<Vouched> {
        let client = self.client().await?;
        let exchange = client.exchange_code(AuthorizationCode::new(code.to_owned())).map_err(refused)?;
        let tokens = exchange
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&Http(&self.http))
            .await
            .map_err(refused)?;
        let id_token = tokens.id_token().ok_or_else(|| refused("the token response has no ID token"))?;
        let claims = id_token.claims(&client.id_token_verifier(), &Nonce::new(nonce.to_owned())).map_err(refused)?;
        let subject = claims.subject().as_str().to_owned();
        let email = claims.email().map_or_else(|| subject.clone(), |email| email.as_str().to_owned());
        let name = claims
            .name()
            .and_then(|name| name.get(None))
            .map_or_else(|| email.clone(), |name| name.as_str().to_owned());
        // The signature was checked above; the groups claim is read from the
        // same verified payload.
        let groups = groups_claim(&id_token.to_string(), &self.settings.groups_claim);
        let person = SignedIn { issuer: self.settings.issuer.as_str().to_owned(), subject, email, name };
        Ok(Vouched { person, groups })
    }
}

/// The strings of claim `claim` in a compact JWT's payload (a list or one string).
fn groups_claim(jwt: &str, claim: &str) -> Vec<String> {
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else { return Vec::new() };
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&bytes) else { return Vec::new() };
    match claims.get(claim) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(String::from).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        issuer = "http://127.0.0.1:9"
        client_id = "keyplane"
        client_secret_env = "PATH"
        redirect_url = "http://127.0.0.1:8080/login/oidc/callback"
        [[grant]]
        group = "acme-admins"
        org = "acme"
        role = "admin"
        [[grant]]
        group = "platform-viewers"
        org = "*"
        role = "viewer"
        [[grant]]
        group = "acme-auditors"
        org = "acme"
        scopes = ["keyplane:audit:read"]
    "#;

    /// The file's secret is read from `PATH`, a variable every test process has.
    fn settings(text: &str) -> Result<OidcSettings> {
        OidcSettings::parse(text, "test")
    }

    #[test]
    fn groups_map_to_rights_per_org() {
        let settings = settings(FILE).unwrap();
        let rights = settings.rights(&["acme-admins".into(), "acme-auditors".into(), "unknown".into()]);
        assert!(!rights.every_org());
        assert_eq!(rights.orgs().collect::<Vec<_>>(), ["acme"]);
        assert!(rights.holds("acme", "keyplane:keys:write"));
        assert!(!rights.holds("globex", "keyplane:keys:read"));
        assert!(!rights.holds(super::super::scopes::PLATFORM_ORG, "keyplane:admin"));
        let platform = settings.rights(&["platform-viewers".into()]);
        assert!(platform.every_org() && platform.holds("globex", "keyplane:audit:read"));
        assert!(!platform.holds("globex", "keyplane:keys:write"));
        assert!(settings.rights(&["interns".into()]).is_empty());
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let text = FILE;
        for (change, expected) in [
            (("role = \"viewer\"", "role = \"owner\""), "role \"owner\" is not admin or viewer"),
            (("org = \"*\"", "org = \"a b\""), "org \"a b\" is not an org id"),
            (("[\"keyplane:audit:read\"]", "[\"keyplane:sidecar\"]"), "\"keyplane:sidecar\" is not a keyplane: scope"),
            (("/login/oidc/callback", "/elsewhere"), "redirect_url must be"),
            (("issuer = \"http://127.0.0.1:9\"", "issuer = \"ftp://x\""), "issuer is not an http(s) URL"),
            (("client_id", "client"), "unknown field `client`"),
            (("client_secret_env = \"PATH\"", "client_secret_env = \"KEYPLANE_UNSET_FOR_TEST\""), "which is not set"),
        ] {
            let error = settings(&text.replace(change.0, change.1)).unwrap_err().to_string();
            assert!(error.contains(expected), "{change:?}: {error}");
        }
    }

    #[test]
    fn the_groups_claim_is_a_list_or_one_string() {
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let jwt = |payload: &str| format!("h.{}.s", encode(payload));
        assert_eq!(groups_claim(&jwt(r#"{"groups":["a","b",3]}"#), "groups"), ["a", "b"]);
        assert_eq!(groups_claim(&jwt(r#"{"roles":"a"}"#), "roles"), ["a"]);
        assert!(groups_claim(&jwt(r#"{"groups":{}}"#), "groups").is_empty());
        assert!(groups_claim("garbage", "groups").is_empty());
    }
}
