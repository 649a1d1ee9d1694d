//! Orgs as records: OrgService (create, get, list with search and paging,
//! rename, delete refused while the org holds something or with what it
//! holds), orgs registered by their first key, who may do what, and
//! everything audited.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, TestSidecar, assert_invalid_field, both_backends, random_org, start_or_skip};
use tonic::Code;

both_backends!(orgs_are_records, deleting_an_org_with_what_it_holds_ends_its_keys);

async fn orgs_are_records(backend: Backend) {
    let plane = start_or_skip!(backend);
    let mut orgs = plane.orgs(&plane.root_token).await;
    let (org, other) = (random_org(), random_org());

    // Created with a display name; a second time is ALREADY_EXISTS.
    let create = |org_id: &str, display_name: &str| pb::CreateOrgRequest {
        org_id: org_id.to_owned(),
        display_name: display_name.to_owned(),
    };
    let created = orgs.create_org(create(&org, "  Acme Rockets ")).await.unwrap().into_inner().org.unwrap();
    assert_eq!((created.id.as_str(), created.display_name.as_str()), (org.as_str(), "Acme Rockets"));
    assert_eq!(created.holdings, Some(pb::OrgHoldings::default()));
    let again = orgs.create_org(create(&org, "Acme")).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // Bad input names the field, all at once.
    let bad = orgs.create_org(create("no spaces", &"x".repeat(201))).await.unwrap_err();
    assert_invalid_field(&bad, "org_id");
    assert_invalid_field(&bad, "display_name");
    let bad = orgs.rename_org(pb::RenameOrgRequest { org_id: org.clone(), display_name: " ".into() }).await;
    assert_invalid_field(&bad.unwrap_err(), "display_name");

    // A first key registers an org, named by its id; counts follow.
    let (_, admin) = plane.create_key(&other, &["keyplane:admin"]).await;
    plane.create_key(&org, &["orders:read"]).await;
    let got = orgs.get_org(pb::GetOrgRequest { org_id: other.clone() }).await.unwrap().into_inner().org.unwrap();
    assert_eq!(got.display_name, other, "registered by its first key");
    assert_eq!(got.holdings.unwrap().keys, 1);

    // Search by name or id, ignoring case; paging in id order.
    let search = |search: &str, page_size: u32, page_token: &str| pb::ListOrgsRequest {
        search: search.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
    };
    let found = orgs.list_orgs(search("aCmE rOcK", 0, "")).await.unwrap().into_inner().orgs;
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [org.as_str()]);
    assert_eq!(found[0].holdings.unwrap().keys, 1);
    let first = orgs.list_orgs(search("org_", 1, "")).await.unwrap().into_inner();
    assert_eq!(first.orgs.len(), 1);
    let second = orgs.list_orgs(search("org_", 1, &first.next_page_token)).await.unwrap().into_inner();
    assert!(second.orgs[0].id > first.orgs[0].id, "keyset paging in id order");
    let nothing = orgs.list_orgs(search("%", 0, "")).await.unwrap().into_inner().orgs;
    assert!(nothing.is_empty(), "LIKE wildcards are matched as themselves");

    // An org's own admin reads and renames it, but cannot list, create or
    // delete orgs, nor read another.
    let mut own = plane.orgs(&admin).await;
    let renamed = own.rename_org(pb::RenameOrgRequest { org_id: String::new(), display_name: "Globex".into() }).await;
    assert_eq!(renamed.unwrap().into_inner().org.unwrap().display_name, "Globex");
    let denied = [
        own.list_orgs(search("", 0, "")).await.map(drop).unwrap_err(),
        own.create_org(create(&random_org(), "")).await.map(drop).unwrap_err(),
        own.delete_org(pb::DeleteOrgRequest { org_id: other.clone(), delete_holdings: true })
            .await
            .map(drop)
            .unwrap_err(),
        own.get_org(pb::GetOrgRequest { org_id: org.clone() }).await.map(drop).unwrap_err(),
    ];
    for status in denied {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }

    // Deleting an org that holds keys is refused, with the counts; an empty
    // one goes; the platform org never does.
    let refused = orgs.delete_org(pb::DeleteOrgRequest { org_id: org.clone(), delete_holdings: false }).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("1 keys"), "{}", refused.message());
    let empty = random_org();
    orgs.create_org(create(&empty, "")).await.unwrap();
    orgs.delete_org(pb::DeleteOrgRequest { org_id: empty.clone(), delete_holdings: false }).await.unwrap();
    let gone = orgs.get_org(pb::GetOrgRequest { org_id: empty.clone() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let platform = orgs.delete_org(pb::DeleteOrgRequest { org_id: "keyplane".into(), delete_holdings: true }).await;
    assert_eq!(platform.unwrap_err().code(), Code::FailedPrecondition);

    // Every change is audited in the org's own log.
    assert_eq!(plane.audit_events(&org, "org.created").await.len(), 1);
    let renamed = plane.audit_events(&other, "org.renamed").await;
    assert_eq!(renamed[0].metadata.as_ref().unwrap().fields["before"].kind, Some(string_value(&other)));
    assert_eq!(plane.audit_events(&empty, "org.deleted").await.len(), 1);
    plane.stop().await;
}

fn string_value(text: &str) -> prost_types::value::Kind {
    prost_types::value::Kind::StringValue(text.to_owned())
}

async fn deleting_an_org_with_what_it_holds_ends_its_keys(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (_, token) = plane.create_key(&org, &["orders:read"]).await;
    let identity = pb::CreateIdentityRequest { org_id: org.clone(), external_id: "cust".into(), ..Default::default() };
    plane.identities(&plane.root_token).await.create_identity(identity).await.unwrap();
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    assert_eq!(sidecar.check_status(&token).await, 200);

    let mut orgs = plane.orgs(&plane.root_token).await;
    let deleted = orgs.delete_org(pb::DeleteOrgRequest { org_id: org.clone(), delete_holdings: true }).await;
    let deleted = deleted.unwrap().into_inner().deleted.unwrap();
    assert_eq!((deleted.keys, deleted.identities), (1, 1));
    sidecar.wait_for_status(&token, 401).await;
    let listed = plane.keys(&plane.root_token).await;
    let keys = listed
        .clone()
        .list_api_keys(pb::ListApiKeysRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(keys.api_keys.is_empty(), "its keys are gone");
    let audited = plane.audit_events(&org, "org.deleted").await;
    assert_eq!(audited.len(), 1, "its audit log stays, and says what went");
    plane.stop().await;
}
