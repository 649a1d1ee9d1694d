//! The event catalog: types with schemas, versions and examples, audited;
//! publications checked against the newest schema (the JSON pointer and
//! rule named, nothing stored); Keyplane's own types listed with generated
//! schemas that their real payloads satisfy; archiving; scopes.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::receiver::Receiver;
use keyplane_tests::webhooks::{publish, subscribe, violations};
use keyplane_tests::{Backend, assert_invalid_field, both_backends, random_org, start_webhooks_or_skip};
use tonic::Code;

both_backends!(the_catalog_checks_what_is_published);

const ORDER_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["order_id", "amount"],
  "properties": {
    "order_id": { "type": "string", "pattern": "^ord_" },
    "amount": { "type": "integer", "minimum": 0 }
  }
}"#;

async fn the_catalog_checks_what_is_published(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let org = random_org();
    let receiver = Receiver::start().await;
    let (subscription, _) = subscribe(&plane, &org, &receiver.url("/hooks"), &["order.*"]).await;
    let mut catalog = plane.event_types(&plane.root_token).await;
    let create = |name: &str, schema: &str, examples: &[&str]| pb::CreateEventTypeRequest {
        org_id: org.clone(),
        name: name.into(),
        description: "An order was placed.".into(),
        group: "orders".into(),
        schema_json: schema.into(),
        examples_json: examples.iter().map(|e| (*e).to_owned()).collect(),
    };

    // Bad input names its field; a schema may not fetch anything.
    for (request, field) in [
        (create("Order.Created", "", &[]), "name"),
        (create("order.created", "{ not json", &[]), "schema_json"),
        (create("order.created", r#"{"type": "nonsense"}"#, &[]), "schema_json"),
        (create("order.created", r#"{"$ref": "http://127.0.0.1:9/schema.json"}"#, &[]), "schema_json"),
        (create("order.created", ORDER_SCHEMA, &[r#"{"order_id": "ord_1"}"#]), "examples_json[0]"),
        (create("api_key.created", "", &[]), "name"),
    ] {
        let refused = catalog.create_event_type(request).await.unwrap_err();
        assert_invalid_field(&refused, field);
    }
    let example = r#"{"order_id": "ord_1", "amount": 1200}"#;
    let created = catalog.create_event_type(create("order.created", ORDER_SCHEMA, &[example])).await.unwrap();
    let created = created.into_inner().event_type.unwrap();
    assert_eq!((created.schemas.len(), created.examples_json.len(), created.system), (1, 1, false));
    let again = catalog.create_event_type(create("order.created", "", &[])).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    // A payload that breaks the schema is refused before anything is stored.
    let mut events = plane.events(&plane.root_token).await;
    let publish_request = |payload: &str| pb::PublishEventRequest {
        org_id: org.clone(),
        event_type: "order.created".into(),
        payload_json: payload.into(),
        ..Default::default()
    };
    let refused = events.publish_event(publish_request(r#"{"order_id": "x", "amount": -5}"#)).await.unwrap_err();
    let said = violations(&refused);
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(said.iter().all(|(field, _)| field == "payload_json"));
    assert!(said.iter().any(|(_, why)| why.contains("at /order_id") && why.contains("rule `pattern`")), "{said:?}");
    assert!(said.iter().any(|(_, why)| why.contains("at /amount") && why.contains("rule `minimum`")), "{said:?}");
    let missing = events.publish_event(publish_request(r#"{"order_id": "ord_2"}"#)).await.unwrap_err();
    assert!(violations(&missing)[0].1.contains("rule `required`"), "{:?}", violations(&missing));
    let published = publish(&plane, &org, "order.created", example).await;
    assert_eq!(published.deliveries_created, 1);
    // Types outside the catalog pass as before.
    assert_eq!(publish(&plane, &org, "order.shipped", r#"{"anything": true}"#).await.deliveries_created, 1);
    receiver.wait_for("/hooks", 2, Duration::from_secs(10)).await;
    let mut deliveries = plane.deliveries(&plane.root_token).await;
    let listed = deliveries
        .list_deliveries(pb::ListDeliveriesRequest {
            org_id: org.clone(),
            subscription_id: subscription.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.deliveries.len(), 2, "the refused payloads made no delivery");

    // A new schema version applies to the next publication; examples must fit it.
    let stricter = ORDER_SCHEMA.replace(r#""minimum": 0"#, r#""minimum": 2000"#);
    let update = |mask: &[&str], schema: &str, examples: &[&str]| pb::UpdateEventTypeRequest {
        org_id: org.clone(),
        name: "order.created".into(),
        schema_json: schema.into(),
        examples_json: examples.iter().map(|e| (*e).to_owned()).collect(),
        deprecated: true,
        update_mask: Some(prost_types::FieldMask { paths: mask.iter().map(|p| (*p).to_owned()).collect() }),
        ..Default::default()
    };
    let unfit = catalog.update_event_type(update(&["schema_json"], &stricter, &[])).await.unwrap_err();
    assert_invalid_field(&unfit, "examples_json[0]");
    let fitting = r#"{"order_id": "ord_9", "amount": 2500}"#;
    let updated = catalog
        .update_event_type(update(&["schema_json", "examples_json", "deprecated"], &stricter, &[fitting]))
        .await
        .unwrap()
        .into_inner()
        .event_type
        .unwrap();
    assert_eq!((updated.schemas.len(), updated.schemas[1].version, updated.deprecated), (2, 2, true));
    // Replicas' cached schemas catch up within seconds; this one at once.
    let refused = events.publish_event(publish_request(example)).await.unwrap_err();
    assert!(violations(&refused)[0].1.contains("rule `minimum`"));

    // An endpoint can be sent a type's example, whatever it subscribes to.
    let (other, _) = subscribe(&plane, &org, &receiver.url("/other"), &["invoice.paid"]).await;
    let example_request = |name: &str| pb::SendTestEventRequest {
        org_id: org.clone(),
        subscription_id: other.id.clone(),
        event_type: name.into(),
    };
    let sent = deliveries.send_test_event(example_request("order.created")).await.unwrap().into_inner();
    assert_eq!(sent.delivery.unwrap().event_type, "order.created");
    let got = receiver.wait_for("/other", 1, Duration::from_secs(10)).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["data"]["amount"], 2500, "the newest example: {body}");
    let none = deliveries.send_test_event(example_request("api_key.created")).await.unwrap_err();
    assert_eq!(none.code(), Code::NotFound, "Keyplane's own types have no stored example");

    // Keyplane's own types are listed with schemas their real payloads satisfy.
    let listed = catalog
        .list_event_types(pb::ListEventTypesRequest { org_id: org.clone(), include_archived: false })
        .await
        .unwrap()
        .into_inner()
        .event_types;
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(&names[..2], ["api_key.created", "api_key.rotated"], "{names:?}");
    assert!(names.contains(&"order.created"));
    let key_created = listed.iter().find(|t| t.name == "api_key.created").unwrap();
    assert!(key_created.system && !key_created.description.is_empty());
    let schema: serde_json::Value = serde_json::from_str(&key_created.schemas[0].schema_json).unwrap();
    let (key_receiver, _) = (Receiver::start().await, ());
    subscribe(&plane, &org, &key_receiver.url("/keys"), &["api_key.created"]).await;
    plane.create_key(&org, &["orders:read"]).await;
    let got = key_receiver.wait_for("/keys", 1, Duration::from_secs(10)).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the generated schema compiles");
    assert!(validator.is_valid(&body["data"]), "api_key.created's payload fits its schema: {}", body["data"]);
    let read_only = catalog.archive_event_type(pb::ArchiveEventTypeRequest {
        org_id: org.clone(),
        name: "api_key.created".into(),
        archived: true,
    });
    assert_eq!(read_only.await.unwrap_err().code(), Code::FailedPrecondition);

    // The console and the customer's portal show the catalog; an endpoint
    // page offers the examples.
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in_to(&plane.root_token, &org).await;
    let page = browser.get("/webhooks/catalog").await;
    assert_eq!(page.status, 200, "{}", page.body);
    for shown in ["order.created", "An order was placed.", "v2", "deprecated", "api_key.created", "ord_9"] {
        assert!(page.body.contains(shown), "the catalog page shows {shown}: {}", page.body);
    }
    let endpoint = browser.get(&format!("/webhooks/{}", other.id)).await;
    assert!(endpoint.body.contains("Send example") && endpoint.body.contains("<option>order.created</option>"));
    let sent = browser.post(&format!("/webhooks/{}/test", other.id), &[("event_type", "order.created")]).await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let link = plane
        .webhooks(&plane.root_token)
        .await
        .create_portal_link(pb::CreatePortalLinkRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .url;
    let portal = ConsoleClient::new(plane.console_addr);
    portal.open_portal(link.trim_start_matches(&format!("http://{}", plane.console_addr))).await;
    let page = portal.get("/webhooks/catalog").await;
    assert!(page.status == 200 && page.body.contains("order.created"), "the portal shows it: {}", page.body);

    // Archived: out of the listing, and its schema no longer applies.
    let archive = pb::ArchiveEventTypeRequest { org_id: org.clone(), name: "order.created".into(), archived: true };
    assert!(catalog.archive_event_type(archive).await.unwrap().into_inner().event_type.unwrap().archived);
    let listed = catalog
        .list_event_types(pb::ListEventTypesRequest { org_id: org.clone(), include_archived: false })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.event_types.iter().all(|t| t.name != "order.created"));
    assert_eq!(publish(&plane, &org, "order.created", r#"{"free": "form"}"#).await.deliveries_created, 1);

    // An org may publish only what its catalog lists (archived types included out).
    let policy =
        |required: bool| pb::SetCatalogPolicyRequest { org_id: org.clone(), require_cataloged_events: required };
    assert!(catalog.set_catalog_policy(policy(true)).await.unwrap().into_inner().require_cataloged_events);
    let listed = catalog
        .list_event_types(pb::ListEventTypesRequest { org_id: org.clone(), include_archived: true })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.require_cataloged_events && listed.event_types.iter().any(|t| t.name == "order.created"));
    for (event_type, payload) in
        [("order.shipped", "{}"), ("order.created", r#"{"order_id": "ord_3", "amount": 2100}"#)]
    {
        let mut request = publish_request(payload);
        request.event_type = event_type.into();
        let refused = events.publish_event(request).await.unwrap_err();
        assert_invalid_field(&refused, "event_type");
        assert!(refused.message().contains("catalog") || format!("{:?}", violations(&refused)).contains("catalog"));
    }
    let restore = pb::ArchiveEventTypeRequest { org_id: org.clone(), name: "order.created".into(), archived: false };
    catalog.archive_event_type(restore).await.unwrap();
    let fitting_payload = r#"{"order_id": "ord_3", "amount": 2100}"#;
    assert!(events.publish_event(publish_request(fitting_payload)).await.is_ok(), "cataloged again");
    catalog.set_catalog_policy(policy(false)).await.unwrap();
    assert_eq!(publish(&plane, &org, "order.shipped", "{}").await.deliveries_created, 1);
    assert_eq!(plane.audit_events(&org, "org.catalog_policy_set").await.len(), 2);

    // Audited; readers may read, only writers change.
    for action in ["event_type.created", "event_type.updated", "event_type.archived", "event_type.restored"] {
        assert_eq!(plane.audit_events(&org, action).await.len(), 1, "{action}");
    }
    let (_, reader) = plane.create_key(&org, &["keyplane:webhooks:read"]).await;
    let mut as_reader = plane.event_types(&reader).await;
    let get = pb::GetEventTypeRequest { org_id: String::new(), name: "order.created".into() };
    assert!(as_reader.get_event_type(get).await.is_ok());
    let denied = as_reader.create_event_type(create("order.refunded", "", &[])).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let (_, writer) = plane.create_key(&org, &["keyplane:webhooks:write"]).await;
    let mut as_writer = plane.event_types(&writer).await;
    let denied = as_writer
        .set_catalog_policy(pb::SetCatalogPolicyRequest { org_id: String::new(), require_cataloged_events: true });
    assert_eq!(denied.await.unwrap_err().code(), Code::PermissionDenied, "the policy is an org admin's");
    plane.stop().await;
}
