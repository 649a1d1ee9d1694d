//! The connection to the control plane: the sidecar's credential on every
//! call, one channel per replica (TLS and mTLS as configured), and the
//! authenticated `KeySyncService` client that the key-event stream, Verify,
//! usage reports and leases share.

use std::net::SocketAddr;
use std::time::Duration;

use keyplane_proto::sync::v1 as pb;
use pb::key_sync_service_client::KeySyncServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::failover::Failover;

/// Adds the sidecar's credential to every control-plane call.
#[derive(Clone)]
pub struct Credential(MetadataValue<Ascii>);

impl Credential {
    /// `authorization: Bearer <token>`.
    pub fn bearer(token: &str) -> Result<Self> {
        format!("Bearer {token}")
            .parse()
            .map(Self)
            .map_err(|_| Error::Config("the credential is not a valid header value".into()))
    }
}

impl Interceptor for Credential {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The channels to the control-plane replicas, followed one at a time
/// ([`Failover`]). `https://` is TLS with the system roots or
/// `--control-plane-ca-file`, and the client certificate when one is
/// configured; TLS settings with an `http://` URL, or files that do not
/// parse, are start-up errors, never a silent downgrade to plaintext.
pub async fn control_plane_channel(config: &Config) -> Result<Failover> {
    let lookup = |host: String| async move { tokio::net::lookup_host(host).await.map(Iterator::collect) };
    let replicas = replicas(&config.control_plane, lookup).await?;
    let channels = replicas
        .iter()
        .map(|replica| Ok((replica.label.clone(), replica_channel(config, replica)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Failover::new(channels))
}

/// One control-plane replica to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// For logs: the URL given (with the address, when a name stood for several).
    pub label: String,
    /// The URL as given: its host names the server (`:authority`, TLS).
    pub url: String,
    /// Where to connect, when not the URL's own host.
    pub address: Option<SocketAddr>,
}

/// The replicas behind `--control-plane`: each URL as given, except a host
/// name that resolves to several addresses, which stands for one replica
/// per address (resolved once, at start-up; a name with one address is
/// left to the connection, which resolves it each time).
pub async fn replicas<F, Fut>(urls: &[String], resolve: F) -> Result<Vec<Replica>>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    if urls.is_empty() {
        return Err(Error::Config("--control-plane: give at least one URL".into()));
    }
    let mut replicas = Vec::with_capacity(urls.len());
    for url in urls {
        let uri: http::Uri = url.parse().map_err(|e| Error::Config(format!("--control-plane {url}: {e}")))?;
        let host = host_of(&uri);
        let given = Replica { label: url.clone(), url: url.clone(), address: None };
        if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
            replicas.push(given);
            continue;
        }
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        match resolve(format!("{host}:{port}")).await {
            Ok(addresses) if addresses.len() > 1 => replicas.extend(addresses.into_iter().map(|address| Replica {
                label: format!("{url} ({address})"),
                url: url.clone(),
                address: Some(address),
            })),
            Ok(_) => replicas.push(given),
            Err(error) => {
                tracing::warn!(url, %error, "cannot resolve the control plane's name now; connecting will retry");
                replicas.push(given);
            }
        }
    }
    Ok(replicas)
}

/// The URL's host without the brackets of an IPv6 literal.
fn host_of(uri: &http::Uri) -> &str {
    uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']')
}

fn replica_channel(config: &Config, replica: &Replica) -> Result<Channel> {
    let url = &replica.url;
    let endpoint =
        Endpoint::from_shared(url.clone()).map_err(|e| Error::Config(format!("--control-plane {url}: {e}")))?;
    let tls_requested = config.control_plane_ca_file.is_some() || config.tls_client_cert_file.is_some();
    let host = host_of(endpoint.uri()).to_owned();
    let endpoint = match endpoint.uri().scheme_str() {
        Some("https") => endpoint.tls_config(client_tls(config)?.domain_name(host))?,
        Some("http") if tls_requested => {
            return Err(Error::Config(format!(
                "--control-plane-ca-file and --tls-client-cert-file need an https:// control plane, not {url}"
            )));
        }
        Some("http") => endpoint,
        _ => return Err(Error::Config(format!("--control-plane {url}: use an http:// or https:// URL"))),
    };
    let endpoint = endpoint
        .tcp_nodelay(true)
        .connect_timeout(config.control_plane_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(match replica.address {
        // Connect to this address while the URL keeps naming the server.
        Some(address) => {
            let connector = tower::service_fn(move |_: http::Uri| async move {
                let stream = tokio::net::TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            });
            endpoint.connect_with_connector_lazy(connector)
        }
        None => endpoint.connect_lazy(),
    })
}

fn client_tls(config: &Config) -> Result<ClientTlsConfig> {
    let tls = ClientTlsConfig::new();
    let mut tls = match &config.control_plane_ca_file {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read_pem(path, "--control-plane-ca-file", false)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&config.tls_client_cert_file, &config.tls_client_key_file) {
        let cert = read_pem(cert, "--tls-client-cert-file", false)?;
        let key = read_pem(key, "--tls-client-key-file", true)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// Reads a PEM file and checks that it holds certificates (or a private key).
fn read_pem(path: &std::path::Path, flag: &str, private_key: bool) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = std::fs::read(path).map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))?;
    let parses = if private_key {
        PrivateKeyDer::from_pem_slice(&pem).is_ok()
    } else {
        CertificateDer::pem_slice_iter(&pem).next().is_some_and(|cert| cert.is_ok())
    };
    if !parses {
        let what = if private_key { "a PEM private key" } else { "PEM certificates" };
        return Err(Error::Config(format!("{flag} {}: does not hold {what}", path.display())));
    }
    Ok(pem)
}

/// Authenticated client of `KeySyncService`.
pub type ControlPlaneClient = KeySyncServiceClient<InterceptedService<Failover, Credential>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver that knows `cp.test` (two addresses) and `one.test` (one).
    async fn resolve(host: String) -> std::io::Result<Vec<SocketAddr>> {
        match host.as_str() {
            "cp.test:443" => Ok(vec!["10.0.0.1:443".parse().unwrap(), "[fd00::2]:443".parse().unwrap()]),
            "one.test:50051" => Ok(vec!["10.0.0.3:50051".parse().unwrap()]),
            other => panic!("resolved {other}"),
        }
    }

    #[tokio::test]
    async fn a_name_with_several_addresses_is_several_replicas() {
        let urls = ["https://cp.test", "http://127.0.0.1:50051", "http://[::1]:50051", "http://one.test:50051"];
        let urls: Vec<String> = urls.iter().map(|u| (*u).to_owned()).collect();
        let found = replicas(&urls, resolve).await.unwrap();
        let summary: Vec<_> = found.iter().map(|r| (r.url.as_str(), r.address)).collect();
        assert_eq!(
            summary,
            [
                ("https://cp.test", Some("10.0.0.1:443".parse().unwrap())),
                ("https://cp.test", Some("[fd00::2]:443".parse().unwrap())),
                ("http://127.0.0.1:50051", None),
                ("http://[::1]:50051", None),
                ("http://one.test:50051", None),
            ]
        );
        assert_eq!(found[1].label, "https://cp.test ([fd00::2]:443)");
        assert!(replicas(&[], resolve).await.is_err());
    }

    #[tokio::test]
    async fn a_replica_is_reached_at_its_address_while_the_url_names_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));
        // `cp.test` is never resolved: the channel connects to the address.
        let replica =
            Replica { label: "cp".into(), url: format!("http://cp.test:{}", address.port()), address: Some(address) };
        let config = Config::for_test(replica.url.clone(), "/unused".into());
        let channel = replica_channel(&config, &replica).unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let answer = client.check(tonic_health::pb::HealthCheckRequest::default()).await.unwrap().into_inner();
        assert_eq!(answer.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }
}
