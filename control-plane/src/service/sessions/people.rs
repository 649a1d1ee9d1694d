//! People's sessions: opened by a single sign-on (`service/users.rs`), alive
//! while the user is enabled and holds rights.

use super::*;

impl SessionService {
    /// Opens a session for `user`, who holds `rights` (a sign-in with the
    /// OpenID provider, already checked). A person who holds rights in one
    /// org only acts in it; others pick one.
    pub async fn open_for_user(
        &self,
        user: &users::Model,
        rights: Rights,
        client: &Client,
    ) -> Result<(String, Session)> {
        let orgs: Vec<&str> = rights.orgs().collect();
        let org = match orgs.as_slice() {
            [only] if !rights.every_org() => (*only).to_owned(),
            _ => String::new(),
        };
        let (id, row) =
            self.new_session(SessionKind::Console, SessionActor::User, Some(user.id.clone()), org, String::new());
        sessions::insert(&self.db, row.clone()).await?;
        let actor =
            Actor::User { user_id: user.id.clone(), email: user.email.clone(), org: row.org_id.clone(), rights };
        let session = self.session(&id, &row, actor);
        self.audit(&session, client, PLATFORM_ORG, AuditAction::ConsoleSignedIn).await?;
        Ok((id, session))
    }

    /// The actor of a person's session, acting in `org`, while they are
    /// enabled and hold rights (as their last sign-in mapped them).
    pub(super) async fn live_user(&self, user_id: Option<&str>, org: &str) -> Result<Option<Actor>> {
        let Some(user_id) = user_id else { return Ok(None) };
        let Some(user) = users::find(&self.db, user_id).await?.filter(|user| !user.disabled) else { return Ok(None) };
        let rights = Rights::from_stored(&user.rights);
        if rights.is_empty() {
            return Ok(None);
        }
        Ok(Some(Actor::User { user_id: user.id, email: user.email, org: org.to_owned(), rights }))
    }
}
