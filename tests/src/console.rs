//! A browser stand-in for the console's HTTP tests: keeps cookies, follows
//! no redirects (tests look at them), and reads the CSRF token of the last
//! page so a form can be posted the way a browser would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use reqwest::header::{HeaderMap, SET_COOKIE};

/// One answer.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// `Location` of a redirect.
    pub fn location(&self) -> String {
        self.header("location")
    }

    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }

    /// The value of the first `<input name="...">` with this name.
    pub fn input(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')? + start;
        Some(html_unescape(&self.body[start..end]))
    }

    /// Where the link whose text is `text` points.
    pub fn link(&self, text: &str) -> Option<String> {
        let end = self.body.find(&format!("\">{text}</a>"))?;
        let start = self.body[..end].rfind("href=\"")? + "href=\"".len();
        Some(html_unescape(&self.body[start..end]))
    }

    /// Every distinct id with `prefix` (e.g. `key_`) the page links to, in order.
    pub fn linked_ids(&self, prefix: &str) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for part in self.body.split(&format!("/{prefix}")).skip(1) {
            let id: String = part.chars().take_while(char::is_ascii_alphanumeric).collect();
            let id = format!("{prefix}{id}");
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The text of the element with this id (e.g. `shown-once`).
    pub fn element_text(&self, id: &str) -> Option<String> {
        let marker = format!("id=\"{id}\">");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('<')? + start;
        Some(html_unescape(&self.body[start..end]))
    }
}

/// Undoes askama's escaping (numeric entities) and the named basics.
fn html_unescape(text: &str) -> String {
    let mut out = text.to_owned();
    for (entity, plain) in [
        ("&#34;", "\""),
        ("&#39;", "'"),
        ("&#60;", "<"),
        ("&#62;", ">"),
        ("&quot;", "\""),
        ("&lt;", "<"),
        ("&gt;", ">"),
    ] {
        out = out.replace(entity, plain);
    }
    out.replace("&#38;", "&").replace("&amp;", "&")
}

/// A cookie-keeping client of one console.
pub struct ConsoleClient {
    base: String,
    http: reqwest::Client,
    cookies: Mutex<HashMap<String, String>>,
    csrf: Mutex<String>,
}

impl ConsoleClient {
    pub fn new(addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { base: format!("http://{addr}"), http, cookies: Mutex::default(), csrf: Mutex::default() }
    }

    /// A client whose requests come from `local` (another loopback address,
    /// as a different person's browser would: per-address limits apart).
    pub fn from(addr: SocketAddr, local: std::net::IpAddr) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(local)
            .build()
            .expect("client");
        Self { base: format!("http://{addr}"), http, cookies: Mutex::default(), csrf: Mutex::default() }
    }

    /// A client of a console served over TLS, trusting only `ca_pem`.
    pub fn over_tls(addr: SocketAddr, ca_pem: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA certificate");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_only([ca])
            .build()
            .expect("client");
        Self { base: format!("https://{addr}"), http, cookies: Mutex::default(), csrf: Mutex::default() }
    }

    fn cookie_header(&self) -> String {
        let cookies = self.cookies.lock().expect("cookies");
        cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn read(&self, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        for set in headers.get_all(SET_COOKIE) {
            let text = set.to_str().unwrap_or_default();
            if let Some((pair, _)) = text.split_once(';').or(Some((text, "")))
                && let Some((name, value)) = pair.split_once('=')
            {
                let mut cookies = self.cookies.lock().expect("cookies");
                if value.is_empty() || text.contains("Max-Age=0") {
                    cookies.remove(name);
                } else {
                    cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        let body = response.text().await.unwrap_or_default();
        let page = Page { status, headers, body };
        if let Some(csrf) = page.input("csrf") {
            *self.csrf.lock().expect("csrf") = csrf;
        }
        page
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.base)).header("cookie", self.cookie_header());
        self.read(request.send().await.expect("GET")).await
    }

    /// POST `fields` to `path`, with the CSRF token of the last page.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.csrf.lock().expect("csrf").clone();
        let mut form: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
        form.extend_from_slice(fields);
        self.post_raw(path, &form).await
    }

    /// POST `fields` to a form that makes a secret: it answers with a
    /// redirect to `/shown` (post/redirect/get), whose page this returns
    /// (a reload of it shows the secret no more).
    pub async fn post_shown_once(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let answer = self.post(path, fields).await;
        assert_eq!((answer.status, answer.location()), (303, "/shown".into()), "{path}: {}", answer.body);
        self.get("/shown").await
    }

    /// POST exactly `fields` (no CSRF token unless given).
    pub async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(fields).expect("form"));
        self.read(request.send().await.expect("POST")).await
    }

    /// Signs in with `credential`; returns the answer to the form post.
    pub async fn sign_in(&self, credential: &str) -> Page {
        let form = self.get("/login").await;
        let nonce = form.input("nonce").expect("sign-in nonce");
        self.post_raw("/login", &[("credential", credential), ("nonce", &nonce)]).await
    }

    /// Signs in and, for a platform credential, opens `org`.
    pub async fn sign_in_to(&self, credential: &str, org: &str) {
        let answer = self.sign_in(credential).await;
        assert_eq!(answer.status, 303, "sign-in: {}", answer.body);
        if answer.location() == "/org" {
            self.get("/org").await;
            let mut chosen = self.post("/org", &[("org", org)]).await;
            if chosen.status == 404 {
                // An org that holds nothing yet is not one: create it.
                chosen = self.post("/orgs", &[("org_id", org)]).await;
            }
            assert_eq!(chosen.status, 303, "choose org: {}", chosen.body);
        }
    }

    /// Opens a portal link's `path` as a person does: the GET shows a
    /// confirmation (and changes nothing), its form's POST opens the portal.
    pub async fn open_portal(&self, path: &str) -> Page {
        let confirm = self.get(path).await;
        assert_eq!(confirm.status, 200, "the portal link's confirmation: {}", confirm.body);
        assert!(self.session_cookie().is_none(), "a GET of a portal link opens no session");
        let nonce = confirm.input("nonce").expect("confirmation nonce");
        self.post_raw(path, &[("nonce", &nonce)]).await
    }

    /// The session cookie, if signed in.
    pub fn session_cookie(&self) -> Option<String> {
        self.cookie("kp_session")
    }

    /// Cookie `name`, if the console set it.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().expect("cookies").get(name).cloned()
    }
}
