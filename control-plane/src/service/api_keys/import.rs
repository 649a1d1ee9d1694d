//! Importing keys from another system (docs/migrating.md "Migrating to Keyplane"):
//! each record keeps the hash the old system stored, so the token its
//! customer holds keeps working. A batch is idempotent by the old system's
//! id; a refused record does not stop the others; every imported key is
//! audited in the one transaction that stores the batch.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use keyplane_proto::token;
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};
use tonic_types::FieldViolation;

use super::{KeyService, rules};
use crate::crypto::Environment;
use crate::crypto::imported::{self, LOOKUP_CHARS, SourceFormat};
use crate::error::{Error, Result};
use crate::service::auth::RequestContext;
use crate::service::authz::{Action, Target};
use crate::service::validate::Violations;
use crate::service::verify::MAX_CANDIDATES;
use crate::store::api_keys::{self, NewKeyRow, NewLimits};
use crate::store::audit::AuditAction;
use crate::store::imported_keys::{self, ImportedKeyRow};
use crate::store::orgs;
use crate::store::{OrgTx, audit, roles};

/// Most records in one call.
pub const MAX_BATCH: usize = 1000;
/// Longest source id.
const MAX_SOURCE_ID_CHARS: usize = 200;

/// One key as the old system stored it; the adapters have read its fields.
#[derive(Clone, Debug)]
pub struct ImportRecord {
    pub source_id: String,
    pub hash: String,
    pub hash_format: SourceFormat,
    pub lookup: String,
    pub name: String,
    pub environment: Environment,
    pub scopes: Vec<String>,
    /// Role names or ids of the org.
    pub roles: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub metadata: Option<Value>,
    pub revoked: bool,
}

/// What became of one record.
#[derive(Clone, Debug)]
pub enum ImportOutcome {
    /// Stored as this key.
    Imported(String),
    /// Imported before, as this key.
    Skipped(String),
    /// Not stored: the field at fault and why.
    Refused(FieldViolation),
}

impl KeyService {
    /// Imports `records` (each already read, or the violation that stopped
    /// it) into the caller's org; one outcome per record, in order.
    pub async fn import(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        records: Vec<std::result::Result<ImportRecord, FieldViolation>>,
        upgrade_on_use: bool,
    ) -> Result<Vec<ImportOutcome>> {
        let org = ctx.authorize(Action::CreateKey, Target::Org(org_id))?;
        if records.is_empty() || records.len() > MAX_BATCH {
            return Err(Error::invalid("keys", format!("must hold 1 to {MAX_BATCH} keys")));
        }
        let source_ids: Vec<&str> = records.iter().flatten().map(|r| r.source_id.as_str()).collect();
        let before = imported_keys::imported_sources(&self.db, &org, &source_ids).await?;
        let named: Vec<String> = records.iter().flatten().flat_map(|r| r.roles.iter().cloned()).collect();
        let known = roles::find_named(&self.db, &org, &named).await?;
        let mut batch = Batch { ctx, org: &org, upgrade_on_use, seen: HashSet::new(), roles: &known };
        let mut granted = HashMap::new();
        let mut outcomes = Vec::with_capacity(records.len());
        let mut rows = Vec::new();
        for (i, record) in records.into_iter().enumerate() {
            let outcome = match record {
                Err(violation) => ImportOutcome::Refused(violation),
                Ok(record) => match before.get(&record.source_id) {
                    Some(key_id) => ImportOutcome::Skipped(key_id.clone()),
                    None => match batch.row(&format!("keys[{i}]"), record) {
                        Ok((row, role_ids)) => {
                            rows.push((i, row));
                            granted.insert(i, role_ids);
                            continue;
                        }
                        Err(violation) => ImportOutcome::Refused(violation),
                    },
                },
            };
            outcomes.push((i, outcome));
        }
        let rows = refuse_crowded_lookups(&self.db, rows, &mut outcomes).await?;
        if !rows.is_empty() {
            let tx = OrgTx::begin(&self.db, &org).await?;
            orgs::register(&tx).await?;
            for (i, row) in rows {
                let details = json!({
                    "source_id": row.source_id,
                    "hash_format": row.hash_format,
                    "revoked": row.revoked.is_some(),
                    "upgrade_on_use": row.upgrade_on_use,
                });
                let key = imported_keys::insert(&tx, row).await?;
                if let Some(role_ids) = granted.get(&i).filter(|ids| !ids.is_empty()) {
                    roles::set_grants::<api_keys::Entity>(&tx, &key.id, role_ids).await?;
                }
                audit::append(&tx, ctx.audit(AuditAction::ApiKeyImported, &key.id, details)).await?;
                outcomes.push((i, ImportOutcome::Imported(key.id)));
            }
            tx.commit().await?;
        }
        outcomes.sort_by_key(|(i, _)| *i);
        Ok(outcomes.into_iter().map(|(_, outcome)| outcome).collect())
    }
}

/// What one batch's records are checked against.
struct Batch<'a> {
    ctx: &'a RequestContext,
    org: &'a str,
    upgrade_on_use: bool,
    /// Source ids seen so far in the batch.
    seen: HashSet<String>,
    /// The org's roles the batch names.
    roles: &'a [roles::Model],
}

impl Batch<'_> {
    /// The row of one record and the ids of the roles it holds, or why it
    /// is refused (fields under `field`).
    fn row(
        &mut self,
        field: &str,
        record: ImportRecord,
    ) -> std::result::Result<(ImportedKeyRow, Vec<String>), FieldViolation> {
        let mut violations = Violations::default();
        let source = &record.source_id;
        if source.is_empty() || source.chars().count() > MAX_SOURCE_ID_CHARS {
            violations.add(format!("{field}.source_id"), format!("must be 1 to {MAX_SOURCE_ID_CHARS} characters"));
        } else if !self.seen.insert(source.clone()) {
            violations.add(format!("{field}.source_id"), "appears twice in the batch");
        }
        let name = match record.name.trim() {
            "" => format!("imported {source}"),
            name => name.to_owned(),
        };
        violations.required_text(&format!("{field}.name"), &name, rules::MAX_NAME_CHARS);
        violations.scopes(&format!("{field}.scopes"), &record.scopes);
        let role_ids = self.role_ids(&mut violations, field, &record.roles);
        if let Some(metadata) = &record.metadata {
            violations.metadata(&format!("{field}.metadata"), metadata);
        }
        let normalised = imported::normalise(&format!("{field}.hash"), record.hash_format, &record.hash);
        let hash = violations.absorb(normalised).map_err(|e| e.first_violation(field))?;
        // A SHA-256 key is found by its digest; a salted one by its clear
        // start, which it must have (one given for a SHA-256 key is shown only).
        let clear_start = Some(record.lookup.as_str())
            .filter(|start| LOOKUP_CHARS.contains(&start.len()) && token::could_be_foreign(start));
        let salted = hash.as_ref().is_some_and(|(format, _)| format.is_salted());
        if clear_start.is_none() && (salted || !record.lookup.is_empty()) {
            let why = "must be the 4 to 64 characters the old system kept in clear (salted hashes are found by it)";
            violations.add(format!("{field}.lookup"), why);
        }
        let lookup = match &hash {
            Some((format, hex)) if !format.is_salted() => Some(imported::digest_lookup(hex)),
            Some(_) => clear_start.map(str::to_owned),
            None => None,
        };
        violations.finish().map_err(|e| e.first_violation(field))?;
        let (Some((hash_format, secret_hash)), Some(lookup)) = (hash, lookup) else {
            return Err(FieldViolation::new(format!("{field}.hash"), "is not a hash in the format named"));
        };
        let scopes = Target::Key { org: self.org, scopes: &record.scopes };
        if let Err(denied) = self.ctx.authorize(Action::CreateKey, scopes) {
            return Err(FieldViolation::new(format!("{field}.scopes"), denied.to_string()));
        }
        // What the old system showed in clear, and nothing more.
        let start = if hash_format.is_salted() { lookup.clone() } else { record.lookup };
        let key = NewKeyRow {
            id: crate::crypto::new_id("key_"),
            name,
            description: format!("imported ({})", record.source_id),
            environment: record.environment,
            scopes: record.scopes,
            secret_hash,
            start,
            expires_at: record.expires_at,
            metadata: record.metadata,
            sealed_token: None,
            limits: NewLimits::default(),
            created_by: self.ctx.actor_label().1,
            rotated_from: None,
            identity_id: None,
        };
        let row = ImportedKeyRow {
            key,
            hash_format,
            lookup,
            source_id: record.source_id,
            upgrade_on_use: self.upgrade_on_use && hash_format.is_salted(),
            created_at: record.created_at,
            revoked: record.revoked.then(|| (crate::store::now(), "revoked before the import".to_owned())),
        };
        Ok((row, role_ids))
    }

    /// The ids of the roles `names` (names or ids of the batch's org).
    fn role_ids(&self, violations: &mut Violations, field: &str, names: &[String]) -> Vec<String> {
        let held = crate::service::roles::resolve(violations, &format!("{field}.roles"), names, self.roles);
        held.into_iter().map(|role| role.id).collect()
    }
}

/// The rows whose salted lookup, with the keys already stored under it,
/// stays within what a verification tries; the others become refusals.
async fn refuse_crowded_lookups(
    db: &DatabaseConnection,
    rows: Vec<(usize, ImportedKeyRow)>,
    outcomes: &mut Vec<(usize, ImportOutcome)>,
) -> Result<Vec<(usize, ImportedKeyRow)>> {
    let salted = || rows.iter().filter(|(_, row)| row.hash_format.is_salted()).map(|(_, row)| row.lookup.as_str());
    let mut per_lookup = imported_keys::count_by_lookup(db, &salted().collect::<Vec<_>>()).await?;
    for lookup in salted() {
        *per_lookup.entry(lookup.to_owned()).or_default() += 1;
    }
    let (kept, crowded): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, row)| {
        !row.hash_format.is_salted() || per_lookup.get(&row.lookup).is_none_or(|n| *n <= MAX_CANDIDATES)
    });
    for (i, _) in crowded {
        let why = format!(
            "more than {MAX_CANDIDATES} keys would share this lookup; a salted hash needs a lookup that tells keys apart"
        );
        outcomes.push((i, ImportOutcome::Refused(FieldViolation::new(format!("keys[{i}].lookup"), why))));
    }
    Ok(kept)
}
