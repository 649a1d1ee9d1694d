//! What checking payloads against the event catalog costs PublishEvent
//! (BENCHMARKS.md, "Event catalog"): a `keyplane serve` release binary runs
//! as a child process; two orgs publish the same 2 KB, 20-property payload
//! to one endpoint each, one with a 20-property JSON Schema for the type
//! in its catalog and one without (the baseline), in alternated rounds of
//! `--messages` publications by `--publishers` concurrent publishers.
//!
//! `cargo build --release -p keyplane-control-plane --bin keyplane -p keyplane-tests --bin loadgen-schema &&
//!  target/release/loadgen-schema --backend sqlite`
//!
//! Every loop is bounded by a count; everything is on loopback.

use std::time::Instant;

use clap::Parser;
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::process::{ControlPlaneProcess, WebhookServer};
use keyplane_tests::receiver::Receiver;
use keyplane_tests::stats::Summary;
use keyplane_tests::webhooks::publish_concurrently;
use keyplane_tests::{Backend, authed_channel, random_org};

#[derive(Parser)]
struct Args {
    /// sqlite or postgres.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Publications per round and org.
    #[arg(long, default_value_t = 3000)]
    messages: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Rounds (each publishes with the schema, then without, or the reverse).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
}

const PROPERTIES: usize = 20;

/// A payload of 20 string properties, about 2 KB.
fn payload(i: usize) -> String {
    let fields: Vec<String> =
        (0..PROPERTIES).map(|p| format!(r#""field_{p:02}":"{i:08}-{}""#, "x".repeat(80))).collect();
    format!("{{{}}}", fields.join(","))
}

/// The schema every field of [`payload`] satisfies.
fn schema() -> String {
    let properties: Vec<String> = (0..PROPERTIES)
        .map(|p| format!(r#""field_{p:02}":{{"type":"string","minLength":8,"maxLength":200}}"#))
        .collect();
    let required: Vec<String> = (0..PROPERTIES).map(|p| format!(r#""field_{p:02}""#)).collect();
    format!(
        r#"{{"type":"object","additionalProperties":false,"required":[{}],"properties":{{{}}}}}"#,
        required.join(","),
        properties.join(",")
    )
}

/// An org with one endpoint on `path` and a publishing key; with `schema`,
/// `order.created` is in its catalog with that schema.
async fn org(addr: &str, root: &str, receiver: &Receiver, path: &str, schema: Option<String>) -> (String, String) {
    let org = random_org();
    let channel = authed_channel(addr, root).await;
    let mut keys = pb::api_key_service_client::ApiKeyServiceClient::new(channel.clone());
    let request = pb::CreateApiKeyRequest {
        org_id: org.clone(),
        name: "publisher".into(),
        scopes: vec!["keyplane:events:publish".into()],
        ..Default::default()
    };
    let token = keys.create_api_key(request).await.expect("key").into_inner().token;
    let mut webhooks = pb::webhook_service_client::WebhookServiceClient::new(channel.clone());
    let subscribe = pb::CreateSubscriptionRequest {
        org_id: org.clone(),
        url: receiver.url(path),
        event_types: vec!["order.created".into()],
        ..Default::default()
    };
    webhooks.create_subscription(subscribe).await.expect("subscribe");
    if let Some(schema_json) = schema {
        let mut catalog = pb::event_type_service_client::EventTypeServiceClient::new(channel);
        let create = pb::CreateEventTypeRequest {
            org_id: org.clone(),
            name: "order.created".into(),
            schema_json,
            ..Default::default()
        };
        catalog.create_event_type(create).await.expect("event type");
    }
    (org, token)
}

/// Publishes `messages` payloads with `publishers` concurrent publishers.
async fn round(addr: &str, (org, token): &(String, String), messages: usize, publishers: usize) -> Summary {
    let mut clients = Vec::new();
    for _ in 0..publishers {
        clients.push(pb::event_service_client::EventServiceClient::new(authed_channel(addr, token).await));
    }
    let started = Instant::now();
    let org = org.clone();
    let latencies = publish_concurrently(clients, messages, move |i| pb::PublishEventRequest {
        org_id: org.clone(),
        event_type: "order.created".into(),
        payload_json: payload(i),
        ..Default::default()
    })
    .await;
    Summary::of(latencies, started.elapsed())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = if args.backend == "postgres" { Backend::Postgres } else { Backend::Sqlite };
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = ["--admin-requests-per-second", "0"];
    let server = WebhookServer::prepare(backend, dir.path(), &flags).await.expect("the backend is available");
    let plane = ControlPlaneProcess::start(&server.args).await;
    let receiver = Receiver::start().await;
    let root = server.root_token();
    assert_eq!(payload(0).len() / 100, 20, "a 2 KB payload");
    let checked = org(&plane.addr, &root, &receiver, "/checked", Some(schema())).await;
    let plain = org(&plane.addr, &root, &receiver, "/plain", None).await;
    println!(
        "backend={} cpus={} payload={} B, schema of {PROPERTIES} properties, {} publishers, {} messages a round",
        args.backend,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        payload(0).len(),
        args.publishers,
        args.messages
    );
    let (mut with, mut without) = (0.0, 0.0);
    for r in 0..args.rounds {
        // Alternate which goes first, so neither always meets a warmer server.
        let order = if r % 2 == 0 { [(&checked, true), (&plain, false)] } else { [(&plain, false), (&checked, true)] };
        for (org, has_schema) in order {
            let summary = round(&plane.addr, org, args.messages, args.publishers).await;
            let label = if has_schema { "with schema   " } else { "without schema" };
            println!("  round {r} {label}: {summary}");
            *(if has_schema { &mut with } else { &mut without }) += summary.throughput;
        }
    }
    println!("publications/s with / without the schema check: {:.3}", with / without);
}
