//! The event catalog (docs/webhooks.md "Event catalog"): an org's event
//! types with a description, a group, JSON Schema versions and examples;
//! Keyplane's own types listed beside them, read-only, with schemas
//! generated from their payload types. PublishEvent checks a payload
//! against the newest schema of its type ([`EventCatalog::check_payload`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::event_types::check_event_type;
use super::system_events::SystemEvent;
use crate::error::{Error, Result};
use crate::service::auth::RequestContext;
use crate::service::authz::{Action, Target};
use crate::service::validate::Violations;
use crate::store::audit::AuditAction;
use crate::store::event_types::{self, EventTypeChanges, NewEventType};
use crate::store::{self, OrgTx, audit, orgs};

const MAX_DESCRIPTION_CHARS: usize = 2000;
const MAX_GROUP_CHARS: usize = 64;
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
const MAX_EXAMPLES: usize = 10;
/// Violations reported for one payload (the first ones found).
const MAX_PAYLOAD_VIOLATIONS: usize = 10;
/// A schema change reaches other replicas' publishers within this long.
const VALIDATOR_TTL: Duration = Duration::from_secs(5);

impl EventCatalog {
    /// Whether `org` requires cataloged types (cached).
    async fn policy(&self, org: &str) -> Result<bool> {
        if let Some(required) = self.policies.get(org) {
            return Ok(required);
        }
        let required = orgs::find(&self.db, org).await?.is_some_and(|row| row.require_cataloged_events);
        self.policies.insert(org.to_owned(), required);
        Ok(required)
    }
}

/// One schema version as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SchemaVersion {
    pub version: u32,
    pub schema: Value,
    pub created_at: DateTime<Utc>,
}

/// An event type as callers see it.
#[derive(Clone, Debug)]
pub struct EventTypeView {
    pub org_id: String,
    pub name: String,
    pub description: String,
    pub group: String,
    pub schemas: Vec<SchemaVersion>,
    pub examples: Vec<Value>,
    pub deprecated: bool,
    pub archived: bool,
    pub system: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<event_types::Model> for EventTypeView {
    fn from(row: event_types::Model) -> Self {
        EventTypeView {
            schemas: serde_json::from_str(&row.schemas).unwrap_or_default(),
            examples: serde_json::from_str(&row.examples).unwrap_or_default(),
            org_id: row.org_id,
            name: row.name,
            description: row.description,
            group: row.group_name,
            deprecated: row.deprecated,
            archived: row.archived,
            system: false,
            created_at: Some(row.created_at),
            updated_at: Some(row.updated_at),
        }
    }
}

/// A new event type, as asked.
#[derive(Clone, Debug, Default)]
pub struct NewType {
    pub name: String,
    pub description: String,
    pub group: String,
    /// Empty: no schema.
    pub schema_json: String,
    pub examples_json: Vec<String>,
}

/// What an update changes (`None`: unchanged).
#[derive(Clone, Debug, Default)]
pub struct TypeChanges {
    pub description: Option<String>,
    pub group: Option<String>,
    /// A schema to add as the next version.
    pub schema_json: Option<String>,
    pub examples_json: Option<Vec<String>>,
    pub deprecated: Option<bool>,
}

/// A cataloged type's compiled newest schema (`None`: it has none).
type Compiled = Option<Arc<jsonschema::Validator>>;

/// The event catalog service.
pub struct EventCatalog {
    db: DatabaseConnection,
    /// What a publication of a type in an org is checked against: `None`
    /// for a type that is not in the catalog (or archived).
    validators: moka::sync::Cache<(String, String), Option<Compiled>>,
    /// Whether an org publishes only cataloged types.
    policies: moka::sync::Cache<String, bool>,
}

impl EventCatalog {
    pub fn new(db: DatabaseConnection) -> Self {
        let validators = moka::sync::Cache::builder().max_capacity(10_000).time_to_live(VALIDATOR_TTL).build();
        let policies = moka::sync::Cache::builder().max_capacity(10_000).time_to_live(VALIDATOR_TTL).build();
        Self { db, validators, policies }
    }

    /// Whether the org publishes only cataloged types.
    pub async fn requires_cataloged(&self, ctx: &RequestContext, org_id: &str) -> Result<bool> {
        let org = ctx.authorize(Action::ReadSubscriptions, Target::Org(org_id))?;
        self.policy(&org).await
    }

    /// Sets whether the org publishes only cataloged types (audited; an
    /// org admin's act, as it changes what the org's publishers may send).
    pub async fn set_policy(&self, ctx: &RequestContext, org_id: &str, required: bool) -> Result<bool> {
        let org = ctx.authorize(Action::ChangeOrg, Target::Org(org_id))?;
        let tx = OrgTx::begin(&self.db, &org).await?;
        orgs::register(&tx).await?;
        orgs::set_require_cataloged_events(&tx, required).await?;
        let details = json!({ "require_cataloged_events": required });
        audit::append(&tx, ctx.audit(AuditAction::CatalogPolicySet, &org, details)).await?;
        tx.commit().await?;
        self.policies.invalidate(&org);
        Ok(required)
    }

    /// Adds an event type (audited).
    pub async fn create(&self, ctx: &RequestContext, org_id: &str, new: NewType) -> Result<EventTypeView> {
        let org = ctx.authorize(Action::WriteSubscriptions, Target::Org(org_id))?;
        let mut violations = Violations::default();
        if let Err(why) = check_event_type(&new.name) {
            violations.add("name", why);
        } else if system_type(&new.name).is_some() {
            violations.add("name", "is one of Keyplane's own event types");
        }
        violations.optional_text("description", &new.description, MAX_DESCRIPTION_CHARS);
        violations.optional_text("group", &new.group, MAX_GROUP_CHARS);
        let schema = (!new.schema_json.trim().is_empty()).then(|| parse_schema(&mut violations, &new.schema_json));
        let schema = schema.flatten();
        let examples = parse_examples(&mut violations, &new.examples_json, schema.as_ref());
        violations.finish()?;
        let schemas: Vec<SchemaVersion> = schema
            .into_iter()
            .map(|(schema, _)| SchemaVersion { version: 1, schema, created_at: store::now() })
            .collect();
        let tx = OrgTx::begin(&self.db, &org).await?;
        let row = NewEventType {
            name: new.name.clone(),
            description: new.description.trim().to_owned(),
            group_name: new.group.trim().to_owned(),
            schemas: json!(schemas).to_string(),
            examples: json!(examples).to_string(),
        };
        let Some(row) = event_types::insert(&tx, row).await? else {
            return Err(Error::AlreadyExists(format!("name: event type {} exists", new.name)));
        };
        orgs::register(&tx).await?;
        let details = json!({ "name": row.name, "schema_versions": schemas.len() });
        audit::append(&tx, ctx.audit(AuditAction::EventTypeCreated, &row.name, details)).await?;
        tx.commit().await?;
        self.validators.invalidate(&(org, new.name));
        Ok(row.into())
    }

    /// One event type (Keyplane's own included).
    pub async fn get(&self, ctx: &RequestContext, org_id: &str, name: &str) -> Result<EventTypeView> {
        let org = ctx.authorize(Action::ReadSubscriptions, Target::Org(org_id))?;
        if let Some(system) = system_type(name) {
            return Ok(EventTypeView { org_id: org, ..system });
        }
        Ok(event_types::find(&self.db, &org, name).await?.ok_or(Error::NotFound("event type"))?.into())
    }

    /// Keyplane's own types, then the org's by group and name.
    pub async fn list(&self, ctx: &RequestContext, org_id: &str, include_archived: bool) -> Result<Vec<EventTypeView>> {
        let org = ctx.authorize(Action::ReadSubscriptions, Target::Org(org_id))?;
        let own = event_types::list(&self.db, &org, include_archived).await?;
        let system = SystemEvent::NAMES.iter().filter_map(|name| system_type(name));
        Ok(system
            .map(|view| EventTypeView { org_id: org.clone(), ..view })
            .chain(own.into_iter().map(Into::into))
            .collect())
    }

    /// Changes an event type (audited); a schema is added as a new version.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        name: &str,
        changes: TypeChanges,
    ) -> Result<EventTypeView> {
        let org = ctx.authorize(Action::WriteSubscriptions, Target::Org(org_id))?;
        if system_type(name).is_some() {
            return Err(Error::FailedPrecondition(format!("{name} is one of Keyplane's own event types: read-only")));
        }
        let mut violations = Violations::default();
        if let Some(description) = &changes.description {
            violations.optional_text("description", description, MAX_DESCRIPTION_CHARS);
        }
        if let Some(group) = &changes.group {
            violations.optional_text("group", group, MAX_GROUP_CHARS);
        }
        let schema = changes.schema_json.as_deref().and_then(|text| parse_schema(&mut violations, text));
        let tx = OrgTx::begin(&self.db, &org).await?;
        let row = event_types::find(tx.conn(), &org, name).await?.ok_or(Error::NotFound("event type"))?;
        let current = EventTypeView::from(row.clone());
        let mut schemas = current.schemas.clone();
        if let Some((schema, _)) = &schema {
            let version = schemas.last().map_or(1, |last| last.version + 1);
            schemas.push(SchemaVersion { version, schema: schema.clone(), created_at: store::now() });
        }
        // Examples must fit the newest schema, old ones included.
        let examples_json =
            changes.examples_json.clone().unwrap_or_else(|| current.examples.iter().map(Value::to_string).collect());
        let newest = match &schema {
            Some(compiled) => Some(compiled.clone()),
            None => schemas.last().and_then(|last| compile(&last.schema).ok().map(|v| (last.schema.clone(), v))),
        };
        let examples = parse_examples(&mut violations, &examples_json, newest.as_ref());
        violations.finish()?;
        let update = EventTypeChanges {
            description: changes.description.map(|d| d.trim().to_owned()),
            group_name: changes.group.map(|g| g.trim().to_owned()),
            schemas: schema.is_some().then(|| json!(schemas).to_string()),
            examples: changes.examples_json.is_some().then(|| json!(examples).to_string()),
            deprecated: changes.deprecated,
            archived: None,
        };
        let row = event_types::update(&tx, row, update).await?;
        let details = json!({ "name": row.name, "schema_versions": schemas.len(), "deprecated": row.deprecated });
        audit::append(&tx, ctx.audit(AuditAction::EventTypeUpdated, &row.name, details)).await?;
        tx.commit().await?;
        self.validators.invalidate(&(org, name.to_owned()));
        Ok(row.into())
    }

    /// Archives or restores an event type (audited).
    pub async fn archive(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        name: &str,
        archived: bool,
    ) -> Result<EventTypeView> {
        let org = ctx.authorize(Action::WriteSubscriptions, Target::Org(org_id))?;
        if system_type(name).is_some() {
            return Err(Error::FailedPrecondition(format!("{name} is one of Keyplane's own event types: read-only")));
        }
        let tx = OrgTx::begin(&self.db, &org).await?;
        let row = event_types::find(tx.conn(), &org, name).await?.ok_or(Error::NotFound("event type"))?;
        let row =
            event_types::update(&tx, row, EventTypeChanges { archived: Some(archived), ..Default::default() }).await?;
        let action = if archived { AuditAction::EventTypeArchived } else { AuditAction::EventTypeRestored };
        audit::append(&tx, ctx.audit(action, &row.name, json!({ "name": row.name }))).await?;
        tx.commit().await?;
        self.validators.invalidate(&(org, name.to_owned()));
        Ok(row.into())
    }

    /// Checks `payload` of an event of `event_type` published in `org`
    /// against its type's newest schema: INVALID_ARGUMENT naming each
    /// JSON pointer and rule it breaks. Types without a schema pass; types
    /// archived or not in the catalog pass unless the org requires
    /// cataloged types. Compiled schemas and policies are cached for
    /// [`VALIDATOR_TTL`].
    pub async fn check_payload(&self, org: &str, event_type: &str, payload: &Value) -> Result<()> {
        let key = (org.to_owned(), event_type.to_owned());
        let listed = match self.validators.get(&key) {
            Some(listed) => listed,
            None => {
                let row = event_types::find(&self.db, org, event_type).await?.filter(|row| !row.archived);
                let listed = row.map(|row| {
                    EventTypeView::from(row).schemas.pop().and_then(|version| compile(&version.schema).ok())
                });
                self.validators.insert(key, listed.clone());
                listed
            }
        };
        let Some(validator) = listed else {
            return if self.policy(org).await? {
                Err(Error::invalid(
                    "event_type",
                    format!("{event_type} is not in the org's event catalog, which this org requires"),
                ))
            } else {
                Ok(())
            };
        };
        let Some(validator) = validator else { return Ok(()) };
        // The common case answers without building errors.
        if validator.is_valid(payload) {
            return Ok(());
        }
        let mut violations = Violations::default();
        for error in validator.iter_errors(payload).take(MAX_PAYLOAD_VIOLATIONS) {
            let pointer = error.instance_path().as_str();
            let schema_path = error.schema_path().as_str();
            let rule = schema_path.rsplit('/').next().unwrap_or_default();
            let at = if pointer.is_empty() { "/" } else { pointer };
            violations.add(
                "payload_json",
                format!("at {at}: {error} (rule `{rule}` at {schema_path} of the {event_type} schema)"),
            );
        }
        violations.finish()
    }
}

/// A schema given as text: valid JSON, valid against its meta-schema, and
/// compilable without fetching anything (no `$ref` outside itself).
fn parse_schema(violations: &mut Violations, text: &str) -> Option<(Value, Arc<jsonschema::Validator>)> {
    if text.len() > MAX_SCHEMA_BYTES {
        violations.add("schema_json", format!("is {} bytes; at most {MAX_SCHEMA_BYTES}", text.len()));
        return None;
    }
    let schema: Value = match serde_json::from_str(text) {
        Ok(schema @ Value::Object(_)) => schema,
        Ok(_) => {
            violations.add("schema_json", "must be a JSON object");
            return None;
        }
        Err(e) => {
            violations.add("schema_json", format!("is not JSON: {e}"));
            return None;
        }
    };
    if let Err(error) = jsonschema::meta::options().validate(&schema) {
        let at = error.instance_path().as_str().to_owned();
        violations.add(
            "schema_json",
            format!("is not a valid JSON Schema at {}: {error}", if at.is_empty() { "/" } else { &at }),
        );
        return None;
    }
    match compile(&schema) {
        Ok(validator) => Some((schema, validator)),
        Err(why) => {
            violations.add("schema_json", why);
            None
        }
    }
}

fn compile(schema: &Value) -> std::result::Result<Arc<jsonschema::Validator>, String> {
    jsonschema::validator_for(schema).map(Arc::new).map_err(|e| format!("cannot be used: {e}"))
}

/// Example payloads: JSON objects, valid against `schema` when there is one.
fn parse_examples(
    violations: &mut Violations,
    texts: &[String],
    schema: Option<&(Value, Arc<jsonschema::Validator>)>,
) -> Vec<Value> {
    if texts.len() > MAX_EXAMPLES {
        violations.add("examples_json", format!("at most {MAX_EXAMPLES} examples"));
    }
    let mut examples = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let field = format!("examples_json[{i}]");
        match serde_json::from_str::<Value>(text) {
            Ok(example @ Value::Object(_)) => {
                if let Some((_, validator)) = schema
                    && let Some(error) = validator.iter_errors(&example).next()
                {
                    let at = error.instance_path().as_str();
                    violations.add(
                        field,
                        format!("does not match the schema at {}: {error}", if at.is_empty() { "/" } else { at }),
                    );
                }
                examples.push(example);
            }
            Ok(_) => violations.add(field, "must be a JSON object"),
            Err(e) => violations.add(field, format!("is not JSON: {e}")),
        }
    }
    examples
}

/// Keyplane's own event type `name`, with its generated schema.
fn system_type(name: &str) -> Option<EventTypeView> {
    let schema = SystemEvent::schema_of(name)?;
    Some(EventTypeView {
        org_id: String::new(),
        name: name.to_owned(),
        description: SystemEvent::description_of(name).to_owned(),
        group: "keyplane".into(),
        schemas: vec![SchemaVersion { version: 1, schema, created_at: DateTime::UNIX_EPOCH }],
        examples: Vec::new(),
        deprecated: false,
        archived: false,
        system: true,
        created_at: None,
        updated_at: None,
    })
}
