//! `keyplane.admin.v1.ApiKeyService` over [`KeyService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::api_key_service_server::ApiKeyService;
use tonic::{Request, Response, Status};

use super::convert::{self, api_key_to_proto};
use super::{allowed_context, request_context};
use crate::error::{Error, Result};
use crate::service::api_keys::{Expiry, KeyChanges, NewKey};
use crate::service::authz::Action;
use crate::service::paging::{ListQuery, PageRequest};
use crate::service::records::{Environment, KeyFilter};
use crate::service::verify::Requirements;
use crate::service::{Authenticator, KeyService};

/// The gRPC adapter of the API-key service.
pub struct ApiKeyGrpc {
    keys: Arc<KeyService>,
    auth: Authenticator,
}

impl ApiKeyGrpc {
    /// An adapter over `keys`.
    pub fn new(keys: Arc<KeyService>, auth: Authenticator) -> Self {
        Self { keys, auth }
    }
}

fn new_key(mut request: pb::CreateApiKeyRequest) -> Result<NewKey> {
    let limits = convert::new_limits(&mut request)?;
    Ok(NewKey {
        environment: convert::environment_from_proto("environment", request.environment)?.unwrap_or(Environment::Live),
        expiry: match request.expiry {
            None => None,
            Some(pb::create_api_key_request::Expiry::ExpiresAt(at)) => {
                Some(Expiry::At(convert::time_from_proto("expires_at", at)?))
            }
            Some(pb::create_api_key_request::Expiry::Ttl(ttl)) => {
                Some(Expiry::Ttl(convert::duration_from_proto("ttl", ttl)?))
            }
        },
        limits,
        metadata: request.metadata.map(|m| convert::struct_to_json("metadata", m)).transpose()?,
        org_id: request.org_id,
        name: request.name,
        description: request.description,
        scopes: request.scopes,
        recoverable: request.recoverable,
        identity_id: Some(request.identity_id),
    })
}

/// An update request: the org, the key, and the changes its mask names.
fn key_changes(request: pb::UpdateApiKeyRequest) -> Result<(String, String, KeyChanges)> {
    let update = request.update.unwrap_or_default();
    let mut changes = KeyChanges::default();
    changes.limits = convert::read_mask_with_limits(request.update_mask.as_ref(), (&update).into(), |path| {
        match path {
            "name" => changes.name = Some(update.name.clone()),
            "description" => changes.description = Some(update.description.clone()),
            "scopes" => changes.scopes = Some(update.scopes.clone()),
            "expires_at" => {
                changes.expires_at =
                    Some(update.expires_at.map(|at| convert::time_from_proto("update.expires_at", at)).transpose()?);
            }
            "identity_id" => changes.identity_id = Some(Some(update.identity_id.clone())),
            "metadata" => {
                changes.metadata =
                    Some(update.metadata.clone().map(|m| convert::struct_to_json("update.metadata", m)).transpose()?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((request.org_id, request.id, changes))
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyGrpc {
    async fn import_api_keys(
        &self,
        request: Request<pb::ImportApiKeysRequest>,
    ) -> Result<Response<pb::ImportApiKeysResponse>, Status> {
        let ctx = allowed_context(&self.auth, &request, Action::CreateKey, |r| &r.org_id).await?;
        let request = request.into_inner();
        let source_ids: Vec<String> = request.keys.iter().map(|k| k.source_id.clone()).collect();
        let records = convert::import_records(request.keys);
        let outcomes = self.keys.import(&ctx, &request.org_id, records, request.upgrade_on_use).await?;
        let results = source_ids.into_iter().zip(outcomes).map(|(id, o)| convert::import_result_to_proto(id, o));
        Ok(Response::new(pb::ImportApiKeysResponse { results: results.collect() }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let issued = self.keys.create(&ctx, new_key(request.into_inner())?).await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(api_key_to_proto(&issued.key)),
            token: issued.token,
        }))
    }

    async fn get_api_key(
        &self,
        request: Request<pb::GetApiKeyRequest>,
    ) -> Result<Response<pb::GetApiKeyResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::GetApiKeyRequest { org_id, id } = request.into_inner();
        let key = self.keys.get(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::GetApiKeyResponse { api_key: Some(api_key_to_proto(&key)) }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let query = ListQuery {
            filter: KeyFilter {
                status: convert::status_from_proto("status", request.status)?,
                environment: convert::environment_from_proto("environment", request.environment)?,
                name_prefix: Some(request.name_prefix).filter(|p| !p.is_empty()),
                identity_id: Some(request.identity_id).filter(|id| !id.is_empty()),
            },
            org_id: request.org_id,
            page: PageRequest { size: request.page_size, token: request.page_token },
        };
        let (api_keys, next_page_token) = self.keys.list(&ctx, query).await?.convert(api_key_to_proto);
        Ok(Response::new(pb::ListApiKeysResponse { api_keys, next_page_token }))
    }

    async fn update_api_key(
        &self,
        request: Request<pb::UpdateApiKeyRequest>,
    ) -> Result<Response<pb::UpdateApiKeyResponse>, Status> {
        let ctx = allowed_context(&self.auth, &request, Action::UpdateKey, |r| &r.org_id).await?;
        let (org_id, id, changes) = key_changes(request.into_inner())?;
        let key = self.keys.update(&ctx, &org_id, &id, changes).await?;
        Ok(Response::new(pb::UpdateApiKeyResponse { api_key: Some(api_key_to_proto(&key)) }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::RevokeApiKeyRequest { org_id, id, reason } = request.into_inner();
        let key = self.keys.revoke(&ctx, &org_id, &id, &reason).await?;
        Ok(Response::new(pb::RevokeApiKeyResponse { api_key: Some(api_key_to_proto(&key)) }))
    }

    async fn delete_api_key(
        &self,
        request: Request<pb::DeleteApiKeyRequest>,
    ) -> Result<Response<pb::DeleteApiKeyResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::DeleteApiKeyRequest { org_id, id } = request.into_inner();
        self.keys.delete(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::DeleteApiKeyResponse {}))
    }

    async fn rotate_api_key(
        &self,
        request: Request<pb::RotateApiKeyRequest>,
    ) -> Result<Response<pb::RotateApiKeyResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::RotateApiKeyRequest { org_id, id, grace_period } = request.into_inner();
        let grace = grace_period.map(|g| convert::duration_from_proto("grace_period", g)).transpose()?;
        let rotation = self.keys.rotate(&ctx, &org_id, &id, grace).await?;
        Ok(Response::new(pb::RotateApiKeyResponse {
            api_key: Some(api_key_to_proto(&rotation.issued.key)),
            token: rotation.issued.token,
            previous: Some(api_key_to_proto(&rotation.previous)),
        }))
    }

    async fn reveal_api_key(
        &self,
        request: Request<pb::RevealApiKeyRequest>,
    ) -> Result<Response<pb::RevealApiKeyResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::RevealApiKeyRequest { org_id, id } = request.into_inner();
        let token = self.keys.reveal(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::RevealApiKeyResponse { token }))
    }

    async fn verify_api_key(
        &self,
        request: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::VerifyApiKeyResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let environment = convert::environment_from_proto("environment", request.environment)?;
        let client = match request.client_address.trim() {
            "" => None,
            text => {
                Some(text.parse().map_err(|_| Error::invalid("client_address", "must be an IPv4 or IPv6 address"))?)
            }
        };
        let requirements = Requirements {
            environment,
            scopes: &request.required_scopes,
            client,
            cost: u64::from(request.cost),
            permission_query: &request.permission_query,
        };
        let verification = self.keys.verify(&ctx, &request.token, requirements).await?;
        let (valid, failure, principal) = convert::verification_to_proto(&verification);
        Ok(Response::new(pb::VerifyApiKeyResponse { valid, failure: failure.into(), principal }))
    }
}
