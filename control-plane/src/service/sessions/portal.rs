//! Portal sessions: opened from a one-time link, alive while the
//! credential that created the link could still create it.

use super::*;

impl SessionService {
    /// Opens a portal session from a one-time link token; `None` when the
    /// link is unknown, expired or used.
    pub async fn open_portal(&self, token: &str, client: &Client) -> Result<Option<(String, Session)>> {
        let token_hash = crate::crypto::hex(&crate::crypto::sha256(token.as_bytes()));
        let Some(link) = portal_links::redeem(&self.db, &token_hash, store::now()).await? else {
            return Ok(None);
        };
        let (id, mut row) = self.new_session(
            SessionKind::Portal,
            SessionActor::Portal,
            Some(link.id.clone()),
            link.org_id.clone(),
            link.frame_ancestors,
        );
        // A portal session lasts no longer than its link would have.
        row.expires_at = row.expires_at.min(link.expires_at);
        sessions::insert(&self.db, row.clone()).await?;
        let actor = Actor::Portal { org_id: link.org_id.clone(), link_id: link.id };
        let session = self.session(&id, &row, actor);
        self.audit(&session, client, &link.org_id, AuditAction::PortalOpened).await?;
        Ok(Some((id, session)))
    }

    /// The actor of a portal session while the credential that created its
    /// link could still create it.
    pub(super) async fn live_portal(&self, row: &sessions::Model) -> Result<Option<Actor>> {
        let Some(link_id) = row.key_id.clone() else { return Ok(None) };
        let Some(link) = portal_links::find(&self.db, &row.org_id, &link_id).await? else { return Ok(None) };
        let creator = match link.created_by.as_str() {
            "root" | "operator" => Some(Actor::Operator),
            user_id if user_id.starts_with("usr_") => self.live_user(Some(user_id), &row.org_id).await?,
            // The creator's own allow-list is about the creator, not the customer.
            key_id => self.usable_key(Some(key_id)).await?.map(|key| Actor::ApiKey {
                scopes: key.scope_list(),
                key_id: key.id,
                org_id: key.org_id,
            }),
        };
        let creator_may = creator.is_some_and(|actor| {
            let ctx = RequestContext { actor, ..RequestContext::operator() };
            ctx.authorize(Action::CreatePortalLink, Target::Org(&row.org_id)).is_ok()
        });
        Ok(creator_may.then(|| Actor::Portal { org_id: row.org_id.clone(), link_id }))
    }
}
