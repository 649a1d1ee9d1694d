//! Load generator for the sidecar (BENCHMARKS.md): cached ext_authz check
//! latency at fixed rates (open loop, measured from the intended send time),
//! maximum throughput against the trivial `hello-authz` (answering like the
//! sidecar, and bare) in the same run, revocation propagation with 100 Watch
//! streams, and the sidecar's RSS idle and with many cached keys.
//!
//! `cargo build --release --workspace && target/release/loadgen-sidecar`
//! (BENCHMARKS.md measures the `dist` profile: `target/dist/loadgen-sidecar`)
//!
//! The control plane runs in-process on SQLite; the sidecar is the real
//! release binary as a child process. Every loop is bounded in count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use envoy_types::pb::envoy::service::auth::v3 as envoy;
use keyplane_control_plane::crypto::token::{CHECKSUM_LEN, KEY_ID_LEN, SECRET_LEN, encode_fixed, new_id_body};
use keyplane_control_plane::service::records::{Environment, KeyStatus};
use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1 as sync_pb;
use keyplane_sidecar::listen::CopiedWrites;
use keyplane_tests::stats::Summary;
use keyplane_tests::{Backend, TestControlPlane};
use tokio::process::Command;
use tokio::sync::Mutex;
use tokio_stream::StreamExt;

/// The sidecar's allocator, so the client's own cost stays small too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    /// Distinct keys checked in the latency runs.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Open-loop rates (checks/s) measured for `--seconds` each.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,20000")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Open-loop rounds per rate, each the same-answer trivial server then
    /// the sidecar, so the host's noisy minutes fall on both alike.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Watch streams connected during the propagation run (including the sidecar's).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Revocations measured.
    #[arg(long, default_value_t = 50)]
    revocations: usize,
    /// Keys cached for the RSS measurement.
    #[arg(long, default_value_t = 100_000)]
    rss_keys: usize,
    /// HTTP/2 connections the checks are spread over (Envoy opens several).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Checks in flight in the closed-loop throughput run.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
}

type AuthzClient = envoy::authorization_client::AuthorizationClient<tonic::transport::Channel>;

/// `count` clients, each on its own HTTP/2 connection to `port`.
async fn clients(port: u16, count: usize) -> Vec<AuthzClient> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        clients.push(AuthzClient::new(channel));
    }
    clients
}

/// A check request for `token`, requiring `orders:read`.
fn check_request(token: &str) -> envoy::CheckRequest {
    envoy::CheckRequest {
        attributes: Some(envoy::AttributeContext {
            request: Some(envoy::attribute_context::Request {
                http: Some(envoy::attribute_context::HttpRequest {
                    headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("required_scopes".to_owned(), "orders:read".to_owned())].into(),
            ..Default::default()
        }),
    }
}

/// Open loop: `rate` checks/s for `seconds`, a check every 1/rate s
/// round-robin over `connections` HTTP/2 connections to `port`, each latency
/// measured from the instant it was due (so a late send counts against it).
///
/// The client is kept to a fraction of a core, so that on a two-core machine
/// the latencies measure the server, not the client queueing behind itself.
/// It runs on a thread of its own with a single-threaded runtime (no wake-up
/// crosses threads), paced by a timerfd ticking every 1/rate s (tokio's timer
/// has 1 ms granularity and would send each millisecond's checks in one
/// burst), and speaks gRPC on raw h2 with each request encoded beforehand:
/// its headers and message leave in one write, as Envoy sends them, where
/// tonic's client flushes them in two.
async fn open_loop(port: u16, connections: usize, tokens: &[String], rate: u64, seconds: u64) -> Summary {
    let count = (rate * seconds) as usize;
    let messages: Vec<Bytes> = tokens.iter().map(|token| grpc_message(&check_request(token))).collect();
    let client = move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let connections = h2_connections(port, connections).await;
            for connection in &connections {
                h2_check(connection.clone(), messages[0].clone()).await;
            }
            let period = Duration::from_secs_f64(1.0 / rate as f64);
            let begin = Instant::now();
            let mut ticks = tokio_timerfd::Interval::new(begin, period).expect("timerfd");
            let mut checks = Vec::with_capacity(count);
            while checks.len() < count {
                ticks.next().await.expect("ticks never end").expect("timerfd read");
                let due = (begin.elapsed().as_secs_f64() * rate as f64) as usize + 1;
                while checks.len() < due.min(count) {
                    let i = checks.len();
                    let due_at = begin + period.mul_f64(i as f64);
                    let check =
                        h2_check(connections[i % connections.len()].clone(), messages[i % messages.len()].clone());
                    checks.push(tokio::spawn(async move {
                        check.await;
                        due_at.elapsed()
                    }));
                }
            }
            let mut latencies = Vec::with_capacity(count);
            for check in checks {
                latencies.push(check.await.unwrap());
            }
            Summary::of(latencies, begin.elapsed())
        })
    };
    let client = std::thread::spawn(client);
    tokio::task::spawn_blocking(|| client.join().unwrap()).await.unwrap()
}

/// `count` HTTP/2 connections to `port`, their tasks spawned on the current runtime.
async fn h2_connections(port: u16, count: usize) -> Vec<h2::client::SendRequest<Bytes>> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (send, connection) = h2::client::handshake(CopiedWrites(stream)).await.unwrap();
        tokio::spawn(connection);
        connections.push(send);
    }
    connections
}

/// `message` in gRPC's length-prefixed framing (uncompressed).
fn grpc_message(message: &impl prost::Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + encoded.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&encoded);
    framed.into()
}

/// One `Authorization/Check` call over raw h2; panics unless it is allowed.
async fn h2_check(connection: h2::client::SendRequest<Bytes>, message: Bytes) {
    let mut connection = connection.ready().await.unwrap();
    let request = http::Request::post("http://127.0.0.1/envoy.service.auth.v3.Authorization/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = connection.send_request(request, false).unwrap();
    body.send_data(message, true).unwrap();
    let mut body = response.await.unwrap().into_body();
    let mut answer = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        answer.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("grpc-status trailer");
    assert_eq!(trailers.get("grpc-status").map(|status| status.as_bytes()), Some(&b"0"[..]));
    let answer = <envoy::CheckResponse as prost::Message>::decode(&answer[5..]).unwrap();
    assert_eq!(answer.status.unwrap().code, 0, "check allowed");
}

/// Closed loop: `in_flight` workers spread over `clients`, each sending its
/// next check when the last is answered, for `seconds`.
async fn closed_loop(clients: &[AuthzClient], tokens: &[String], in_flight: usize, seconds: u64) -> Summary {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let mut client = clients[w % clients.len()].clone();
            let tokens = tokens.to_vec();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = w;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    client.check(check_request(&tokens[i % tokens.len()])).await.unwrap();
                    latencies.push(begun.elapsed());
                    i += in_flight;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    Summary::of(latencies, started.elapsed())
}

/// A token for a seeded key: every seeded key shares one secret (and hash).
fn seeded_token(id_body: &str, secret: &str) -> String {
    let signed = format!("kp_live_{id_body}{secret}");
    let checksum = encode_fixed(&crc32fast::hash(signed.as_bytes()).to_be_bytes(), CHECKSUM_LEN);
    format!("{signed}{checksum}")
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plane = TestControlPlane::start(Backend::Sqlite).await.expect("sqlite");
    let (_, credential) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credential"), &credential).unwrap();

    // Seed keys directly: one shared secret hashed once (cheap test argon2
    // parameters), so 100k keys take seconds, not an hour of argon2.
    let secret = "S".repeat(SECRET_LEN);
    let hasher = keyplane_control_plane::crypto::SecretHasher::new(
        keyplane_control_plane::crypto::HashingParams { memory_kib: 256, iterations: 1, parallelism: 1 },
        1,
    )
    .unwrap();
    let hash = hasher.hash(secret.clone()).await.unwrap();
    let org = keyplane_tests::random_org();
    let db = plane.database().await;
    let total = args.keys.max(args.rss_keys);
    let mut tokens = Vec::with_capacity(total);
    keyplane_tests::seed::keys(&db, total, |_| {
        let body = new_id_body();
        assert_eq!(body.len(), KEY_ID_LEN);
        tokens.push(seeded_token(&body, &secret));
        keyplane_tests::seed::key_row(
            &org,
            format!("key_{body}"),
            "bench".into(),
            Environment::Live,
            KeyStatus::Active,
            &hash,
        )
    })
    .await;

    // The real sidecar binary.
    let grpc_port = free_port();
    let http_port = free_port();
    let mut sidecar = Command::new(keyplane_tests::process::workspace_binary("keyplane-sidecar"))
        .args(["--control-plane", &format!("http://{}", plane.addr)])
        .arg("--credential-file")
        .arg(dir.path().join("credential"))
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}"), "--http-listen", &format!("127.0.0.1:{http_port}")])
        .args(["--cache-capacity", &(total * 2).to_string()])
        .env("RUST_LOG", "warn")
        .envs(std::env::var("SIDECAR_MALLOC_ARENA_MAX").ok().map(|v| ("MALLOC_ARENA_MAX", v)))
        .kill_on_drop(true)
        .spawn()
        .expect("start sidecar");
    let pid = sidecar.id().unwrap();
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("http://127.0.0.1:{http_port}/readyz")).send().await.map_or(true, |r| r.status() != 200) {
        assert!(started.elapsed() < Duration::from_secs(20), "sidecar ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("sidecar RSS idle: {} KiB", keyplane_tests::process::rss_kib(pid));
    println!(
        "sidecar binary: {} bytes",
        std::fs::metadata(keyplane_tests::process::workspace_binary("keyplane-sidecar")).unwrap().len()
    );

    let pool = clients(grpc_port, args.connections).await;
    let client = pool[0].clone();

    // Warm the cache with `keys` tokens (misses: one Verify each), then also
    // with the rest for the RSS measurement.
    let warm = |slice: Vec<String>| {
        let client = client.clone();
        async move {
            let slice = Arc::new(Mutex::new(slice));
            let workers: Vec<_> = (0..32)
                .map(|_| {
                    let (mut client, slice) = (client.clone(), slice.clone());
                    tokio::spawn(async move {
                        loop {
                            let Some(token) = slice.lock().await.pop() else { return };
                            let response = client.check(check_request(&token)).await.unwrap().into_inner();
                            assert_eq!(response.status.unwrap().code, 0, "warm check allowed");
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.await.unwrap();
            }
        }
    };
    let started = Instant::now();
    warm(tokens[..args.keys].to_vec()).await;
    println!("warmed {} keys (cache misses) in {:.2}s", args.keys, started.elapsed().as_secs_f64());

    // The same load against trivial ext_authz servers (`hello-authz`), in the
    // same run: one answering like the sidecar (same headers), one bare.
    let mut baselines = Vec::new();
    let mut baseline_pools = Vec::new();
    let mut baseline_ports = Vec::new();
    for mode in [None, Some("--bare")] {
        let port = free_port();
        baselines.push(
            Command::new(keyplane_tests::process::workspace_binary("hello-authz"))
                .arg(format!("127.0.0.1:{port}"))
                .args(mode)
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start hello-authz"),
        );
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "hello-authz listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        baseline_pools.push(clients(port, args.connections).await);
        baseline_ports.push(port);
    }
    let [same_answer, bare] = &baseline_pools[..] else { unreachable!() };
    let same_answer_port = baseline_ports[0];
    let keys = &tokens[..args.keys];
    let shape = format!("{} connections", args.connections);
    for &rate in &args.rates {
        let mut p99_ratios = Vec::with_capacity(args.rounds);
        for _ in 0..args.rounds.max(1) {
            let trivial = open_loop(same_answer_port, args.connections, keys, rate, args.seconds).await;
            println!("trivial ext_authz (same answer) at {rate}/s ({shape}): {trivial}");
            let sidecar = open_loop(grpc_port, args.connections, keys, rate, args.seconds).await;
            println!("ext_authz cached check at {rate}/s ({shape}): {sidecar}");
            p99_ratios.push(sidecar.p99.as_secs_f64() / trivial.p99.as_secs_f64());
        }
        p99_ratios.sort_by(f64::total_cmp);
        let rounded: Vec<String> = p99_ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!("p99 sidecar / trivial (same answer) at {rate}/s, by round: {}", rounded.join(" "));
    }
    let in_flight = args.in_flight;
    let bare_floor = closed_loop(bare, keys, in_flight, args.seconds).await;
    let floor = closed_loop(same_answer, keys, in_flight, args.seconds).await;
    let sidecar_max = closed_loop(&pool, keys, in_flight, args.seconds).await;
    let floor_again = closed_loop(same_answer, keys, in_flight, args.seconds).await;
    let bare_again = closed_loop(bare, keys, in_flight, args.seconds).await;
    println!("trivial ext_authz, bare answer, max throughput ({in_flight} in flight, {shape}): {bare_floor}");
    println!("trivial ext_authz, same answer, max throughput ({in_flight} in flight, {shape}): {floor}");
    println!("ext_authz max throughput ({in_flight} in flight, {shape}): {sidecar_max}");
    println!("trivial ext_authz, same answer, again: {floor_again}");
    println!("trivial ext_authz, bare answer, again: {bare_again}");
    let ratio = |a: &Summary, b: &Summary| sidecar_max.throughput / ((a.throughput + b.throughput) / 2.0);
    println!("ratio sidecar / trivial with the same answer: {:.2}", ratio(&floor, &floor_again));
    println!("ratio sidecar / trivial with a bare answer: {:.2}", ratio(&bare_floor, &bare_again));
    for mut baseline in baselines {
        let _ = baseline.kill().await;
    }

    // Revocation propagation with `streams` Watch streams connected.
    let mut watchers = Vec::new();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    for _ in 0..args.streams.saturating_sub(1) {
        let mut client = sync_pb::key_sync_service_client::KeySyncServiceClient::new(plane.authed(&credential).await);
        let seen = seen_tx.clone();
        let request = sync_pb::WatchRequest { after_seq: 0, from_head: true, ..Default::default() };
        let mut stream = client.watch(request).await.unwrap().into_inner();
        watchers.push(tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                if let Some(sync_pb::watch_response::Message::Event(event)) = message.message {
                    let _ = seen.send((event.key_id, Instant::now()));
                }
            }
        }));
    }
    let mut keys_client = plane.keys(&plane.root_token).await;
    let mut sidecar_latencies = Vec::new();
    let mut stream_latencies = Vec::new();
    for token in &tokens[..args.revocations] {
        let key_id = format!("key_{}", &token[8..8 + KEY_ID_LEN]);
        keys_client
            .revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.clone(), id: key_id.clone(), reason: String::new() })
            .await
            .unwrap();
        let returned = Instant::now();
        let mut probe = client.clone();
        loop {
            let response = probe.check(check_request(token)).await.unwrap().into_inner();
            if response.status.unwrap().code != 0 {
                break;
            }
            assert!(returned.elapsed() < Duration::from_secs(5), "revocation applied");
        }
        sidecar_latencies.push(returned.elapsed());
        let mut received = 0;
        let mut slowest = Duration::ZERO;
        while received < args.streams.saturating_sub(1) {
            let (id, at) = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv()).await.unwrap().unwrap();
            if id == key_id {
                received += 1;
                slowest = slowest.max(at.saturating_duration_since(returned));
            }
        }
        stream_latencies.push(slowest);
    }
    println!(
        "revocation → denial at the sidecar ({} streams): {}",
        args.streams,
        Summary::of(sidecar_latencies, Duration::from_secs(1))
    );
    println!(
        "revocation → event on the slowest of {} raw streams: {}",
        args.streams - 1,
        Summary::of(stream_latencies, Duration::from_secs(1))
    );
    for watcher in watchers {
        watcher.abort();
    }

    let started = Instant::now();
    warm(tokens[args.keys..].to_vec()).await;
    println!(
        "cached {} more keys in {:.1}s; sidecar RSS with {} cached keys: {} KiB",
        total - args.keys,
        started.elapsed().as_secs_f64(),
        total,
        keyplane_tests::process::rss_kib(pid)
    );
    let _ = sidecar.kill().await;
    plane.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
