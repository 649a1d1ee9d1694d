//! Admin calls through whichever replica answers: each call has a timeout,
//! and its outcome is acknowledged, refused (a definitive answer), or
//! unknown (no answer: it may have applied, now or later).

use std::future::Future;
use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use super::history::{Shared, record};
use crate::{Authed, bearer};

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What became of a call.
pub enum Outcome<T> {
    Acknowledged(T),
    /// A definitive refusal (the request was judged, not lost).
    Refused(Code),
    /// No answer about the request; the last error seen.
    Unknown(Status),
}

impl<T> Outcome<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Acknowledged(value) => Outcome::Acknowledged(f(value)),
            Outcome::Refused(code) => Outcome::Refused(code),
            Outcome::Unknown(status) => Outcome::Unknown(status),
        }
    }
}

/// One channel per replica, authenticated with the root token.
#[derive(Clone)]
pub struct Admin {
    channels: Vec<Authed>,
    history: Shared,
}

impl Admin {
    pub fn new(replicas: &[String], root: &str, history: Shared) -> Self {
        let channels = replicas
            .iter()
            .map(|addr| {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .expect("replica uri")
                    .timeout(CALL_TIMEOUT)
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy();
                tonic::service::interceptor::InterceptedService::new(channel, bearer(root))
            })
            .collect();
        Self { channels, history }
    }

    /// The history the calls are counted in.
    pub fn history(&self) -> &Shared {
        &self.history
    }

    pub fn keys(&self, replica: usize) -> pb::api_key_service_client::ApiKeyServiceClient<Authed> {
        pb::api_key_service_client::ApiKeyServiceClient::new(self.channels[replica].clone())
    }

    pub fn identities(&self, replica: usize) -> pb::identity_service_client::IdentityServiceClient<Authed> {
        pb::identity_service_client::IdentityServiceClient::new(self.channels[replica].clone())
    }

    pub fn events(&self, replica: usize) -> pb::event_service_client::EventServiceClient<Authed> {
        pb::event_service_client::EventServiceClient::new(self.channels[replica].clone())
    }

    pub fn webhooks(&self, replica: usize) -> pb::webhook_service_client::WebhookServiceClient<Authed> {
        pb::webhook_service_client::WebhookServiceClient::new(self.channels[replica].clone())
    }

    pub fn audit(&self, replica: usize) -> pb::audit_service_client::AuditServiceClient<Authed> {
        pb::audit_service_client::AuditServiceClient::new(self.channels[replica].clone())
    }

    /// One call through replica `replica`, counted in the history.
    pub async fn once<T, Fut>(&self, call: Fut) -> Outcome<T>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let outcome = match call.await {
            Ok(response) => Outcome::Acknowledged(response.into_inner()),
            Err(status) if definitive(&status) => Outcome::Refused(status.code()),
            Err(status) => Outcome::Unknown(status),
        };
        record(&self.history, |h| match &outcome {
            Outcome::Acknowledged(_) => h.operations.0 += 1,
            Outcome::Refused(_) => h.operations.1 += 1,
            Outcome::Unknown(_) => h.operations.2 += 1,
        });
        outcome
    }

    /// Repeats an idempotent call, each time through the next replica,
    /// until it is acknowledged or refused, or `deadline` passes (then
    /// `Unknown`). `call(replica)` makes the request.
    pub async fn until_definitive<T, Fut>(
        &self,
        first: usize,
        deadline: tokio::time::Instant,
        mut call: impl FnMut(usize) -> Fut,
    ) -> Outcome<T>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut replica = first;
        loop {
            match self.once(call(replica)).await {
                Outcome::Unknown(_) if tokio::time::Instant::now() < deadline => {
                    replica = (replica + 1) % self.channels.len();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                outcome => return outcome,
            }
        }
    }
}

/// Whether a refusal is an answer about the request (not about reaching
/// the server, or the server reaching its database).
fn definitive(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::NotFound
            | Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange
    )
}
