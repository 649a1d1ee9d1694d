//! Importing keys from another system (README "Migrating to Keyplane"):
//! each record keeps the hash the old system stored, so the token its
//! customer holds keeps working. A batch is idempotent by the old system's
//! id; a refused record does not stop the others; every imported key is
//! audited in the one transaction that stores the batch.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tonic_types::FieldViolation;

use super::{KeyService, rules};
use crate::crypto::Environment;
use crate::crypto::imported::{self, HashFormat, LOOKUP_CHARS, SourceFormat};
use crate::error::{Error, Result};
use crate::service::auth::RequestContext;
use crate::service::authz::{Action, Target};
use crate::service::validate::Violations;
use crate::service::verify::MAX_CANDIDATES;
use crate::store::api_keys::{NewKeyRow, NewLimits};
use crate::store::audit::AuditAction;
use crate::store::imported_keys::{self, ImportedKeyRow};
use crate::store::{OrgTx, audit};

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
        let mut outcomes = Vec::with_capacity(records.len());
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        let mut per_lookup: HashMap<String, u64> = HashMap::new();
        for (i, record) in records.into_iter().enumerate() {
            let record = match record {
                Ok(record) => record,
                Err(violation) => {
                    outcomes.push(ImportOutcome::Refused(violation));
                    continue;
                }
            };
            if let Some(key_id) = before.get(&record.source_id) {
                outcomes.push(ImportOutcome::Skipped(key_id.clone()));
                continue;
            }
            let field = format!("keys[{i}]");
            let row = match self.check_record(ctx, &org, &field, record, upgrade_on_use, &mut seen, &mut per_lookup) {
                Ok(row) => row,
                Err(violation) => {
                    outcomes.push(ImportOutcome::Refused(violation));
                    continue;
                }
            };
            outcomes.push(ImportOutcome::Imported(row.key.id.clone()));
            rows.push(row);
        }
        if rows.is_empty() {
            return Ok(outcomes);
        }
        for (lookup, new) in &per_lookup {
            let existing = imported_keys::count_with_lookup(&self.db, lookup, MAX_CANDIDATES + 1).await?;
            if existing + new > MAX_CANDIDATES {
                refuse_lookup(&mut outcomes, &mut rows, lookup);
            }
        }
        let tx = OrgTx::begin(&self.db, &org).await?;
        for row in rows {
            let details = json!({
                "source_id": row.source_id,
                "hash_format": row.hash_format,
                "revoked": row.revoked.is_some(),
                "upgrade_on_use": row.upgrade_on_use,
            });
            let key = imported_keys::insert(&tx, row).await?;
            audit::append(&tx, ctx.audit(AuditAction::ApiKeyImported, &key.id, details)).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// The row of one record, or why it is refused (fields under `field`).
    #[allow(clippy::too_many_arguments)]
    fn check_record(
        &self,
        ctx: &RequestContext,
        org: &str,
        field: &str,
        record: ImportRecord,
        upgrade_on_use: bool,
        seen: &mut HashSet<String>,
        per_lookup: &mut HashMap<String, u64>,
    ) -> std::result::Result<ImportedKeyRow, FieldViolation> {
        let mut violations = Violations::default();
        let source = &record.source_id;
        if source.is_empty() || source.chars().count() > MAX_SOURCE_ID_CHARS {
            violations.add(format!("{field}.source_id"), format!("must be 1 to {MAX_SOURCE_ID_CHARS} characters"));
        } else if !seen.insert(source.clone()) {
            violations.add(format!("{field}.source_id"), "appears twice in the batch");
        }
        let name = match record.name.trim() {
            "" => format!("imported {source}"),
            name => name.to_owned(),
        };
        violations.required_text(&format!("{field}.name"), &name, rules::MAX_NAME_CHARS);
        violations.scopes(&format!("{field}.scopes"), &record.scopes);
        if let Some(metadata) = &record.metadata {
            violations.metadata(&format!("{field}.metadata"), metadata);
        }
        let hash = violations.absorb(imported::normalise(&format!("{field}.hash"), record.hash_format, &record.hash));
        let lookup = match hash {
            Ok(Some((HashFormat::Sha256, ref hex))) => Some(imported::digest_lookup(hex)),
            Ok(Some(_)) => {
                let lookup = record.lookup.as_str();
                let fits = LOOKUP_CHARS.contains(&lookup.len()) && lookup.bytes().all(|b| b.is_ascii_graphic());
                if !fits {
                    let why =
                        "must be the 4 to 64 characters the old system kept in clear (salted hashes are found by it)";
                    violations.add(format!("{field}.lookup"), why);
                }
                fits.then(|| lookup.to_owned())
            }
            _ => None,
        };
        let first = |violations: Violations| match violations.into_error() {
            Error::InvalidArgument(mut list) if !list.is_empty() => list.swap_remove(0),
            other => FieldViolation::new(field, other.to_string()),
        };
        let (Ok(Some((hash_format, secret_hash))), Some(lookup)) = (hash, lookup) else {
            return Err(first(violations));
        };
        if !violations.is_empty() {
            return Err(first(violations));
        }
        if let Err(denied) = ctx.authorize(Action::CreateKey, Target::Key { org, scopes: &record.scopes }) {
            return Err(FieldViolation::new(format!("{field}.scopes"), denied.to_string()));
        }
        if hash_format.needs_clear_start() {
            *per_lookup.entry(lookup.clone()).or_default() += 1;
        }
        let start = if hash_format.needs_clear_start() { lookup.clone() } else { record.lookup.clone() };
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
            created_by: ctx.actor_label().1,
            rotated_from: None,
            identity_id: None,
        };
        Ok(ImportedKeyRow {
            key,
            hash_format,
            lookup,
            source_id: record.source_id,
            upgrade_on_use: upgrade_on_use && hash_format != HashFormat::Sha256,
            created_at: record.created_at,
            revoked: record.revoked.then(|| (crate::store::now(), "revoked before the import".to_owned())),
        })
    }
}

/// Refuses every row of the batch found by `lookup`: with the keys already
/// stored under it, more than a verification may try.
fn refuse_lookup(outcomes: &mut [ImportOutcome], rows: &mut Vec<ImportedKeyRow>, lookup: &str) {
    let refused: HashSet<String> =
        rows.iter().filter(|row| row.lookup == lookup).map(|row| row.key.id.clone()).collect();
    rows.retain(|row| row.lookup != lookup);
    for (i, outcome) in outcomes.iter_mut().enumerate() {
        if matches!(outcome, ImportOutcome::Imported(id) if refused.contains(id)) {
            let why = format!(
                "more than {MAX_CANDIDATES} keys would share this lookup; a salted hash needs a lookup that tells keys apart"
            );
            *outcome = ImportOutcome::Refused(FieldViolation::new(format!("keys[{i}].lookup"), why));
        }
    }
}
