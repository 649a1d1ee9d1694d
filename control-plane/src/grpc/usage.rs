//! `keyplane.admin.v1.UsageService` over [`UsageService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::usage_service_server::UsageService as UsageServiceApi;
use tonic::{Request, Response, Status};

use super::{convert, request_context};
use crate::service::usage::TopKeysQuery;
use crate::service::{Authenticator, UsageService};

/// The gRPC adapter of the usage service.
pub struct UsageGrpc {
    usage: Arc<UsageService>,
    auth: Authenticator,
}

impl UsageGrpc {
    pub fn new(usage: Arc<UsageService>, auth: Authenticator) -> Self {
        Self { usage, auth }
    }
}

#[tonic::async_trait]
impl UsageServiceApi for UsageGrpc {
    async fn query_key_usage(
        &self,
        request: Request<pb::QueryKeyUsageRequest>,
    ) -> Result<Response<pb::QueryKeyUsageResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let range = convert::range_from_proto(request.start_time, request.end_time, request.granularity)?;
        let environment = convert::environment_from_proto("environment", request.environment)?;
        let key_id = Some(request.key_id.as_str()).filter(|id| !id.is_empty());
        let series = self.usage.key_usage(&ctx, &request.org_id, key_id, range, environment).await?;
        Ok(Response::new(pb::QueryKeyUsageResponse {
            buckets: series
                .buckets
                .iter()
                .map(|(start, counts)| pb::UsageBucket {
                    start_time: Some(convert::time_to_proto(*start)),
                    counts: Some(convert::counts_to_proto(counts)),
                })
                .collect(),
            totals: Some(convert::counts_to_proto(&series.totals)),
        }))
    }

    async fn top_keys(&self, request: Request<pb::TopKeysRequest>) -> Result<Response<pb::TopKeysResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let query = TopKeysQuery {
            range: convert::range_from_proto(request.start_time, request.end_time, request.granularity)?,
            limit: request.limit,
            order_by: convert::outcome_from_proto("order_by", request.order_by)?,
            environment: convert::environment_from_proto("environment", request.environment)?,
            org_id: request.org_id,
        };
        let ranking = self.usage.top_keys(&ctx, query).await?;
        Ok(Response::new(pb::TopKeysResponse { keys: ranking.iter().map(convert::key_ranking_to_proto).collect() }))
    }

    async fn query_delivery_stats(
        &self,
        request: Request<pb::QueryDeliveryStatsRequest>,
    ) -> Result<Response<pb::QueryDeliveryStatsResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let range = convert::range_from_proto(request.start_time, request.end_time, request.granularity)?;
        let subscription_id = Some(request.subscription_id.as_str()).filter(|id| !id.is_empty());
        let buckets = self.usage.delivery_stats(&ctx, &request.org_id, subscription_id, range).await?;
        Ok(Response::new(pb::QueryDeliveryStatsResponse {
            buckets: buckets.iter().map(convert::delivery_stats_to_proto).collect(),
        }))
    }
}
