//! One walk through the console in a real headless Chromium (WebDriver,
//! Debian's chromium-driver), as a new user: sign in with the root token,
//! create an org admin key, sign in with it, create a key and take its
//! token, see a running sidecar allow it, revoke it in the console and see
//! the sidecar deny it, find both in the audit log, add a webhook endpoint,
//! send a test event and see it succeed, create a portal link and open it
//! in a fresh browser: only that org's webhooks. Screenshots of each page
//! go to `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use keyplane_tests::process::first_line_with;
use keyplane_tests::receiver::Receiver;
use keyplane_tests::{Backend, TestSidecar, random_org, start_webhooks_or_skip};
use thirtyfour::prelude::*;

/// The chromedriver and browser this walk needs (Debian's packages).
pub(super) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub(super) const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver child on a port it picked; stops with the test.
pub(super) struct Chromedriver {
    url: String,
    _child: tokio::process::Child,
}

impl Chromedriver {
    pub(super) async fn start() -> Self {
        let mut child = tokio::process::Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let port = first_line_with(child.stdout.take().expect("stdout"), "chromedriver", |line| {
            line.split("started successfully on port ").nth(1).map(|port| port.trim_end_matches('.').to_owned())
        })
        .await;
        Self { url: format!("http://127.0.0.1:{port}"), _child: child }
    }

    /// A fresh headless browser (its own profile: no cookies shared).
    pub(super) async fn browser(&self) -> WebDriver {
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(CHROMIUM).expect("binary");
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,1400",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ] {
            caps.add_arg(arg).expect("arg");
        }
        WebDriver::new(&self.url, caps).await.expect("browser session")
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/console-screenshots"));
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

pub(super) async fn shoot(browser: &WebDriver, name: &str) {
    browser.screenshot(&screenshots().join(format!("{name}.png"))).await.expect("screenshot");
}

async fn fill(browser: &WebDriver, id: &str, text: &str) {
    let field = browser.find(By::Id(id)).await.expect(id);
    field.clear().await.expect("clear");
    field.send_keys(text).await.expect("type");
}

/// Clicks something that loads a new page and waits until it has: the
/// old page's root element goes stale (WebDriver's click returns as soon
/// as the click is dispatched, not when the navigation it starts ends).
pub(super) async fn click_through(browser: &WebDriver, target: By) {
    let page = browser.find(By::Tag("html")).await.expect("page");
    browser.find(target).await.expect("element to click").click().await.expect("click");
    page.wait_until().stale().await.expect("the click loads a new page");
}

async fn submit(browser: &WebDriver, form_css: &str) {
    click_through(browser, By::Css(format!("{form_css} button[type=submit]"))).await;
}

pub(super) async fn body(browser: &WebDriver) -> String {
    browser.source().await.expect("page source")
}

async fn sign_in(browser: &WebDriver, console: &str, credential: &str) {
    browser.goto(&format!("{console}/login")).await.expect("login page");
    fill(browser, "credential", credential).await;
    submit(browser, "form[action='/login']").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_walks_through_the_console() {
    let required = keyplane_tests::postgres::required();
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        assert!(!required, "CI needs chromium and chromium-driver (apt install chromium chromium-driver)");
        eprintln!("NOTE: chromium or chromedriver not installed; the browser walk is SKIPPED");
        return;
    }
    let plane = start_webhooks_or_skip!(Backend::Sqlite);
    let console = format!("http://{}", plane.console_addr);
    let org = random_org();
    let driver = Chromedriver::start().await;
    let browser = driver.browser().await;

    // Orgs others made: the picker lists them with what they hold.
    let globex = keyplane_proto::admin::v1::CreateOrgRequest {
        org_id: "globex".into(),
        display_name: "Globex Corporation".into(),
    };
    plane.orgs(&plane.root_token).await.create_org(globex).await.unwrap();
    plane.create_key("globex", &["orders:read"]).await;

    // The root token: create the org, see the overview.
    sign_in(&browser, &console, &plane.root_token).await;
    assert!(body(&browser).await.contains("Globex Corporation"), "the orgs are listed");
    shoot(&browser, "01-choose-org").await;
    fill(&browser, "org_id", &org).await;
    fill(&browser, "display_name", "Acme Rockets").await;
    submit(&browser, "form[action='/orgs']").await;
    assert!(body(&browser).await.contains("break-glass"));
    shoot(&browser, "02-overview-root").await;

    // Create an org admin key; its token is shown once.
    browser.goto(&format!("{console}/keys/new")).await.unwrap();
    fill(&browser, "name", "org admin").await;
    fill(&browser, "scopes", "keyplane:admin").await;
    shoot(&browser, "03-new-key").await;
    submit(&browser, "form[action='/keys']").await;
    let admin_token = browser.find(By::Id("shown-once")).await.unwrap().text().await.unwrap();
    assert!(admin_token.starts_with("kp_live_"));
    assert!(browser.find(By::Css("button[data-copy='shown-once']")).await.is_ok(), "a copy button");
    shoot(&browser, "04-token-shown-once").await;

    // Sign out; sign in with the new key.
    click_through(&browser, By::Css("form[action='/logout'] button")).await;
    assert!(browser.current_url().await.unwrap().as_str().ends_with("/login"));
    sign_in(&browser, &console, &admin_token).await;
    let overview = body(&browser).await;
    assert!(overview.contains(&org) && !overview.contains("break-glass"), "{overview}");

    // Create a key for an application and take its token.
    browser.goto(&format!("{console}/keys/new")).await.unwrap();
    fill(&browser, "name", "checkout service").await;
    fill(&browser, "scopes", "orders:read").await;
    submit(&browser, "form[action='/keys']").await;
    let token = browser.find(By::Id("shown-once")).await.unwrap().text().await.unwrap();
    // Reloading the page that showed the token neither shows it again nor
    // makes a second key.
    browser.refresh().await.unwrap();
    let reloaded = body(&browser).await;
    assert!(!reloaded.contains(&token) && reloaded.contains("shown once"), "{reloaded}");
    browser.goto(&format!("{console}/keys")).await.unwrap();
    assert_eq!(body(&browser).await.matches("checkout service").count(), 1, "one key, not two");
    shoot(&browser, "05-keys").await;
    click_through(&browser, By::LinkText("checkout service")).await;
    let key_url = browser.current_url().await.unwrap().to_string();

    // A running sidecar allows it; its usage reports reach the key's page.
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    for _ in 0..3 {
        assert_eq!(sidecar.check_status(&token).await, 200);
    }
    browser.goto(&key_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !body(&browser).await.contains("(3 uses)") {
        assert!(tokio::time::Instant::now() < deadline, "the key page never showed the sidecar's 3 checks");
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.refresh().await.unwrap();
    }
    browser.find(By::Css("details.numbers summary")).await.unwrap().click().await.unwrap();
    let numbers = browser.find(By::Css("details.numbers table")).await.unwrap();
    assert!(numbers.is_displayed().await.unwrap(), "the chart's numbers open without a reload");
    let cells = numbers.find_all(By::Css("tbody td")).await.unwrap();
    let mut allowed = 0;
    for cell in cells.iter().step_by(5) {
        allowed += cell.text().await.unwrap().parse::<u64>().unwrap_or(0);
    }
    assert_eq!(allowed, 3, "the allowed column adds up to the checks");
    shoot(&browser, "06-key").await;

    // Revoke it in the console (after a confirmation); the sidecar denies it.
    click_through(&browser, By::LinkText("Revoke")).await;
    fill(&browser, "reason", "rotated out").await;
    shoot(&browser, "07-confirm-revoke").await;
    submit(&browser, "main form").await;
    assert!(body(&browser).await.contains("rotated out"));
    sidecar.wait_for_status(&token, 401).await;

    // The audit log shows both.
    browser.goto(&format!("{console}/audit")).await.unwrap();
    let audit = body(&browser).await;
    assert!(audit.contains("api_key.created") && audit.contains("api_key.revoked"));
    shoot(&browser, "08-audit").await;

    // A webhook endpoint, a test event, the delivery with its attempt.
    let receiver = Receiver::start().await;
    browser.goto(&format!("{console}/webhooks/new")).await.unwrap();
    fill(&browser, "url", &receiver.url("/hook")).await;
    fill(&browser, "event_types", "*").await;
    submit(&browser, "form[action='/webhooks']").await;
    assert!(browser.find(By::Id("shown-once")).await.unwrap().text().await.unwrap().starts_with("whsec_"));
    click_through(&browser, By::Css("a.button.secondary")).await;
    click_through(&browser, By::XPath("//button[text()='Send a test event']")).await;
    receiver.wait_for("/hook", 1, Duration::from_secs(20)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        browser.refresh().await.unwrap();
        let page = body(&browser).await;
        if page.contains("HTTP 200") && page.contains("succeeded") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the test delivery never showed as succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shoot(&browser, "09-delivery").await;
    browser.goto(&format!("{console}/webhooks")).await.unwrap();
    shoot(&browser, "10-webhooks").await;

    // The event catalog: a type with a schema and an example, beside Keyplane's own.
    let order_created = keyplane_proto::admin::v1::CreateEventTypeRequest {
        org_id: org.clone(),
        name: "order.created".into(),
        description: "An order was placed.".into(),
        group: "orders".into(),
        schema_json: r#"{"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}}}"#
            .into(),
        examples_json: vec![r#"{"order_id": "ord_1"}"#.into()],
    };
    plane.event_types(&plane.root_token).await.create_event_type(order_created).await.unwrap();
    click_through(&browser, By::LinkText("Event catalog")).await;
    let order_row = "//tr[td[contains(., 'order.created')]]//summary";
    for summary in browser.find_all(By::XPath(order_row)).await.unwrap() {
        summary.click().await.unwrap();
    }
    let catalog = body(&browser).await;
    assert!(catalog.contains("order.created") && catalog.contains("api_key.created"), "{catalog}");
    shoot(&browser, "12-catalog").await;

    // The endpoint's authentication: a header whose value is never shown
    // again, a timeout, a channel.
    browser.goto(&format!("{console}/webhooks")).await.unwrap();
    click_through(&browser, By::LinkText(receiver.url("/hook"))).await;
    browser.find(By::XPath("//summary[text()='Endpoint authentication']")).await.unwrap().click().await.unwrap();
    fill(&browser, "options-headers", "Authorization: Bearer walk-s3cret").await;
    fill(&browser, "options-timeout", "1s").await;
    submit(&browser, "form[action$='/options']").await;
    browser.find(By::XPath("//summary[text()='Edit the endpoint']")).await.unwrap().click().await.unwrap();
    fill(&browser, "edit-channels", "eu customer-42").await;
    submit(&browser, "form[action$='/update']").await;
    let endpoint = body(&browser).await;
    assert!(endpoint.contains("Authorization (values hidden)") && endpoint.contains("eu customer-42"), "{endpoint}");
    assert!(!browser.source().await.unwrap().contains("walk-s3cret"), "a header value in the page");
    shoot(&browser, "15-endpoint-options").await;
    browser.goto(&format!("{console}/webhooks")).await.unwrap();

    // A portal link, opened in a fresh browser: only this org's webhooks.
    click_through(&browser, By::XPath("//button[text()='Create a portal link']")).await;
    let link = browser.find(By::Id("shown-once")).await.unwrap().text().await.unwrap();
    let customer = driver.browser().await;
    customer.goto(&link).await.unwrap();
    click_through(&customer, By::XPath("//button[text()='Open the portal']")).await;
    let portal = body(&customer).await;
    assert!(customer.current_url().await.unwrap().as_str().ends_with("/webhooks"));
    assert!(portal.contains(&receiver.url("/hook")) && portal.contains("Webhook portal for"));
    assert!(!portal.contains("href=\"/keys\""));
    shoot(&customer, "11-portal").await;
    // The portal shows the catalog, and the endpoint without its header values.
    customer.goto(&format!("{console}/webhooks/catalog")).await.unwrap();
    let portal_catalog = body(&customer).await;
    assert!(portal_catalog.contains("order.created") && portal_catalog.contains("An order was placed."));
    shoot(&customer, "13-portal-catalog").await;
    customer.goto(&format!("{console}/webhooks")).await.unwrap();
    click_through(&customer, By::LinkText(receiver.url("/hook"))).await;
    assert!(body(&customer).await.contains("Authorization (values hidden)"));
    assert!(!customer.source().await.unwrap().contains("walk-s3cret"));
    customer.goto(&format!("{console}/keys")).await.unwrap();
    assert!(body(&customer).await.contains("Not allowed"));

    customer.quit().await.unwrap();
    browser.quit().await.unwrap();
    sidecar.stop().await;
    plane.stop().await;
}
