//! The admin gRPC server's services: each added with [`GrpcServices::add`]
//! is routed and reported SERVING by the health service in one step.

use std::convert::Infallible;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic_health::server::HealthReporter;

use crate::error::{Error, Result};

/// The routes built so far and the health reporter that covers them.
pub struct GrpcServices {
    routes: RoutesBuilder,
    pub health: HealthReporter,
}

impl GrpcServices {
    /// Health and reflection (v1 and v1alpha) to start with.
    pub fn new() -> Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(keyplane_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc.BadRequest and the other error details, so
                // reflection clients (grpcurl) can decode what errors carry.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().map_err(|e| Error::Config(format!("reflection: {e}")))?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| Error::Config(format!("reflection: {e}")))?;
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
        Ok(Self { routes, health })
    }

    /// Routes `service` and reports it SERVING.
    pub async fn add<S>(&mut self, service: S)
    where
        S: tower::Service<http::Request<Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.health.set_serving::<S>().await;
        self.routes.add_service(service);
    }

    /// The routes, for the server.
    pub fn routes(self) -> (Routes, HealthReporter) {
        (self.routes.routes(), self.health)
    }
}
