//! `keyplane import keys`: sends a JSON Lines export of another system's
//! keys to a running Keyplane's `ImportApiKeys`, a batch at a time, with
//! progress on stderr and a summary of what was imported, skipped and
//! refused (each refusal with its line and reason). A progress file beside
//! the export records the lines already sent, so an interrupted run picks
//! up where it stopped (and a line sent twice is skipped by its source id).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use keyplane_proto::admin::v1 as pb;
use pb::api_key_service_client::ApiKeyServiceClient;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;
use tonic::metadata::MetadataValue;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};
use crate::grpc::convert::{json_to_struct, time_to_proto};

/// What to import.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// API keys from a JSON Lines file (docs/migrating.md "Migrating to Keyplane").
    Keys(ImportKeysArgs),
}

/// `keyplane import keys`.
#[derive(Debug, Args)]
pub struct ImportKeysArgs {
    /// One key per line: `{"source_id", "hash", "hash_format", "lookup", "name",
    /// "environment", "scopes", "roles", "expires_at", "created_at", "metadata", "revoked"}`.
    #[arg(long)]
    pub file: PathBuf,
    /// The org the keys belong to.
    #[arg(long)]
    pub org: String,
    /// Keyplane's gRPC address (`https://…` checks its certificate against the system's roots).
    #[arg(long, env = "KEYPLANE_ADDRESS", default_value = "http://127.0.0.1:50051")]
    pub address: String,
    /// A credential with `keyplane:keys:write` in the org.
    #[arg(long, env = "KEYPLANE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Re-hash salted keys to Keyplane's argon2id at their first verification.
    #[arg(long)]
    pub upgrade_on_use: bool,
    /// Keys per call, 1 to 1000.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: u16,
}

/// A line of the export, in JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    source_id: String,
    hash: String,
    hash_format: String,
    #[serde(default)]
    lookup: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    revoked: bool,
}

/// Counts of a run.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub imported: u64,
    pub skipped: u64,
    /// `line N (source_id S): field: reason`.
    pub refused: Vec<String>,
}

fn hash_format(name: &str) -> Option<pb::ImportedHashFormat> {
    use pb::ImportedHashFormat::*;
    Some(match name {
        "sha256_hex" => Sha256Hex,
        "sha256_base64" => Sha256Base64,
        "sha256_base64url" => Sha256Base64url,
        "bcrypt" => Bcrypt,
        "argon2" => Argon2,
        "scrypt" => Scrypt,
        _ => return None,
    })
}

/// A line as a record, or why it cannot be one.
fn record(text: &str) -> std::result::Result<pb::ImportedApiKey, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not a key record: {e}"))?;
    let format = hash_format(&line.hash_format).ok_or_else(|| {
        format!(
            "hash_format: {:?} is not sha256_hex, sha256_base64, sha256_base64url, bcrypt, argon2 or scrypt",
            line.hash_format
        )
    })?;
    let environment = match line.environment.as_deref() {
        None | Some("live") => pb::Environment::Live,
        Some("test") => pb::Environment::Test,
        Some(other) => return Err(format!("environment: {other:?} is not live or test")),
    };
    let metadata = line.metadata.and_then(|map| json_to_struct(&map.into()));
    Ok(pb::ImportedApiKey {
        source_id: line.source_id,
        hash: line.hash,
        hash_format: format.into(),
        lookup: line.lookup,
        name: line.name,
        environment: environment.into(),
        scopes: line.scopes,
        roles: line.roles,
        expires_at: line.expires_at.map(time_to_proto),
        created_at: line.created_at.map(time_to_proto),
        metadata,
        revoked: line.revoked,
    })
}

fn progress_file(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".progress");
    PathBuf::from(name)
}

/// Runs `keyplane import keys`.
pub async fn import_keys(args: &ImportKeysArgs) -> Result<ImportSummary> {
    let endpoint = Endpoint::from_shared(args.address.clone())
        .map_err(|e| Error::Config(format!("--address {}: {e}", args.address)))?;
    let endpoint = if args.address.starts_with("https://") {
        endpoint.tls_config(ClientTlsConfig::new().with_native_roots())?
    } else {
        endpoint
    };
    let channel = endpoint.connect().await?;
    let bearer: MetadataValue<_> = format!("Bearer {}", args.token)
        .parse()
        .map_err(|_| Error::Config("--token is not a valid header value".into()))?;
    let mut client = ApiKeyServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", bearer.clone());
        Ok(request)
    });

    let progress = progress_file(&args.file);
    let done: u64 = tokio::fs::read_to_string(&progress).await.ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    if done > 0 {
        eprintln!("resuming after line {done} ({})", progress.display());
    }
    let file = tokio::fs::File::open(&args.file)
        .await
        .map_err(|e| Error::Config(format!("--file {}: {e}", args.file.display())))?;
    let mut lines = tokio::io::BufReader::new(file).lines();
    let mut summary = ImportSummary::default();
    let mut number = 0u64;
    let mut batch: Vec<(u64, pb::ImportedApiKey)> = Vec::new();
    loop {
        let line = lines.next_line().await?;
        if let Some(text) = &line {
            number += 1;
            if number <= done || text.trim().is_empty() {
                continue;
            }
            match record(text) {
                Ok(record) => batch.push((number, record)),
                Err(why) => summary.refused.push(format!("line {number}: {why}")),
            }
        }
        if batch.len() >= usize::from(args.batch) || (line.is_none() && !batch.is_empty()) {
            send(&mut client, args, std::mem::take(&mut batch), &mut summary).await?;
            tokio::fs::write(&progress, number.to_string()).await?;
            eprintln!(
                "line {number}: {} imported, {} skipped, {} refused",
                summary.imported,
                summary.skipped,
                summary.refused.len()
            );
        }
        if line.is_none() {
            break;
        }
    }
    let _ = tokio::fs::remove_file(&progress).await;
    Ok(summary)
}

async fn send<S>(
    client: &mut ApiKeyServiceClient<S>,
    args: &ImportKeysArgs,
    batch: Vec<(u64, pb::ImportedApiKey)>,
    summary: &mut ImportSummary,
) -> Result<()>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let (numbers, keys): (Vec<u64>, Vec<pb::ImportedApiKey>) = batch.into_iter().unzip();
    let request = pb::ImportApiKeysRequest { org_id: args.org.clone(), keys, upgrade_on_use: args.upgrade_on_use };
    let response = client
        .import_api_keys(request)
        .await
        .map_err(|status| Error::Unavailable(format!("ImportApiKeys: {}: {}", status.code(), status.message())))?;
    for (number, result) in numbers.into_iter().zip(response.into_inner().results) {
        match pb::ImportOutcome::try_from(result.outcome) {
            Ok(pb::ImportOutcome::Imported) => summary.imported += 1,
            Ok(pb::ImportOutcome::Skipped) => summary.skipped += 1,
            _ => summary
                .refused
                .push(format!("line {number} (source_id {}): {}: {}", result.source_id, result.field, result.reason)),
        }
    }
    Ok(())
}
