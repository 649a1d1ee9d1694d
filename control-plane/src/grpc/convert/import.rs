//! ImportApiKeys records → [`ImportRecord`]s (a record that does not read
//! is refused alone, naming its field), and outcomes → protobuf.

use keyplane_proto::admin::v1 as pb;
use tonic_types::FieldViolation;

use super::{environment_from_proto, struct_to_json, time_from_proto};
use crate::error::{Error, Result};
use crate::service::api_keys::import::{ImportOutcome, ImportRecord};
use crate::service::records::{Environment, SourceFormat};

/// Each record read, or the first violation that stopped it.
pub fn import_records(keys: Vec<pb::ImportedApiKey>) -> Vec<std::result::Result<ImportRecord, FieldViolation>> {
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| {
            let field = format!("keys[{i}]");
            import_record(&field, key).map_err(|error| error.first_violation(&field))
        })
        .collect()
}

fn import_record(field: &str, key: pb::ImportedApiKey) -> Result<ImportRecord> {
    let hash_format = match pb::ImportedHashFormat::try_from(key.hash_format) {
        Ok(pb::ImportedHashFormat::Sha256Hex) => SourceFormat::Sha256Hex,
        Ok(pb::ImportedHashFormat::Sha256Base64) => SourceFormat::Sha256Base64,
        Ok(pb::ImportedHashFormat::Sha256Base64url) => SourceFormat::Sha256Base64Url,
        Ok(pb::ImportedHashFormat::Bcrypt) => SourceFormat::Bcrypt,
        Ok(pb::ImportedHashFormat::Argon2) => SourceFormat::Argon2,
        Ok(pb::ImportedHashFormat::Scrypt) => SourceFormat::Scrypt,
        Ok(pb::ImportedHashFormat::Unspecified) | Err(_) => {
            return Err(Error::invalid(format!("{field}.hash_format"), "name one of the ImportedHashFormat values"));
        }
    };
    let at = |name: &str, ts: Option<prost_types::Timestamp>| {
        ts.map(|ts| time_from_proto(&format!("{field}.{name}"), ts)).transpose()
    };
    Ok(ImportRecord {
        environment: environment_from_proto(&format!("{field}.environment"), key.environment)?
            .unwrap_or(Environment::Live),
        expires_at: at("expires_at", key.expires_at)?,
        created_at: at("created_at", key.created_at)?,
        metadata: key.metadata.map(|m| struct_to_json(&format!("{field}.metadata"), m)).transpose()?,
        source_id: key.source_id,
        hash: key.hash,
        hash_format,
        lookup: key.lookup,
        name: key.name,
        scopes: key.scopes,
        roles: key.roles,
        revoked: key.revoked,
    })
}

/// One outcome as protobuf.
pub fn import_result_to_proto(source_id: String, outcome: ImportOutcome) -> pb::ImportResult {
    let (outcome, key_id, field, reason) = match outcome {
        ImportOutcome::Imported(id) => (pb::ImportOutcome::Imported, id, String::new(), String::new()),
        ImportOutcome::Skipped(id) => (pb::ImportOutcome::Skipped, id, String::new(), String::new()),
        ImportOutcome::Refused(v) => (pb::ImportOutcome::Refused, String::new(), v.field, v.description),
    };
    pb::ImportResult { source_id, outcome: outcome.into(), key_id, field, reason }
}
