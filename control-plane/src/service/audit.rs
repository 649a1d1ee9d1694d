//! Reading the audit log and checking its hash chain.

use std::collections::HashMap;

use sea_orm::DatabaseConnection;

use super::auth::{API_KEY_ACTOR, RequestContext, USER_ACTOR};
use super::paging::{self, ListQuery, Listing, Page};
use crate::error::{Error, Result};
use crate::service::authz::{Action, Target};
use crate::store::audit::{self, AuditFilter};
use crate::store::{api_keys, users};

const LISTING: Listing = Listing::named("audit");
const CHAIN_BATCH: u64 = 1000;

/// Outcome of a chain check.
#[derive(Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// Rows checked (up to and including the first broken one).
    pub events_checked: u64,
    /// The first broken row and what is wrong with it.
    pub first_broken: Option<(i64, String, String)>,
}

/// An audit event, with the name of the key that acted (when it is a key
/// of the event's org) or the email of the person.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub event: audit::Model,
    pub actor_name: Option<String>,
}

/// The audit service.
pub struct AuditService {
    db: DatabaseConnection,
}

impl AuditService {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// A page of audit events, newest first.
    pub async fn list(&self, ctx: &RequestContext, query: ListQuery<AuditFilter>) -> Result<Page<AuditEntry>> {
        let org = ctx.authorize(Action::ReadAudit, Target::Org(&query.org_id))?;
        let cursor = LISTING.start(&query.page)?;
        let before = cursor
            .position
            .as_deref()
            .map(|seq| seq.parse::<i64>().map_err(|_| paging::invalid_token()))
            .transpose()?;
        if let (Some(start), Some(end)) = (query.filter.start_time, query.filter.end_time)
            && start >= end
        {
            return Err(Error::invalid("end_time", "must be after start_time"));
        }
        let rows = audit::list(&self.db, &org, &query.filter, before, cursor.fetch()).await?;
        let keys: Vec<String> =
            rows.iter().filter(|e| e.actor_type == API_KEY_ACTOR).map(|e| e.actor_id.clone()).collect();
        let mut names: HashMap<String, String> = api_keys::names(&self.db, &org, &keys).await?;
        let people: Vec<String> =
            rows.iter().filter(|e| e.actor_type == USER_ACTOR).map(|e| e.actor_id.clone()).collect();
        names.extend(users::emails(&self.db, &people).await?);
        let entries = rows
            .into_iter()
            .map(|event| AuditEntry { actor_name: names.get(&event.actor_id).cloned(), event })
            .collect();
        Ok(cursor.page(entries, |entry: &AuditEntry| entry.event.seq.to_string()))
    }

    /// Recomputes the org's chain from the first row and reports the first
    /// row whose seq, link or hash is wrong.
    pub async fn verify_chain(&self, ctx: &RequestContext, org_id: &str) -> Result<ChainReport> {
        let org = ctx.authorize(Action::ReadAudit, Target::Org(org_id))?;
        let mut checked = 0u64;
        let mut expected_seq = 1i64;
        let mut prev_hash = String::new();
        loop {
            let rows = audit::chain_page(&self.db, &org, expected_seq - 1, CHAIN_BATCH).await?;
            if rows.is_empty() {
                return Ok(ChainReport { events_checked: checked, first_broken: None });
            }
            for row in rows {
                checked += 1;
                let problem = if row.seq != expected_seq {
                    Some(format!("expected seq {expected_seq}, found {}: rows are missing", row.seq))
                } else if row.prev_hash != prev_hash {
                    Some("prev_hash does not match the previous event".to_owned())
                } else if audit::chain_hash(&row) != row.hash {
                    Some("hash does not match the event's contents: it was altered".to_owned())
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Ok(ChainReport { events_checked: checked, first_broken: Some((row.seq, row.id, problem)) });
                }
                expected_seq += 1;
                prev_hash = row.hash;
            }
        }
    }
}
