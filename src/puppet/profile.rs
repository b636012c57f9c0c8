//! A puppet's existence and profile on the homeserver: registered once, display name and avatar
//! kept equal to the agent's, all remembered in `bridge_puppets` so a restart repeats nothing.

use ruma::OwnedMxcUri;

use super::{PuppetError, Puppets};
use crate::model::Agent;

impl Puppets {
    /// Registers the puppet once and keeps its display name and avatar in sync with the agent.
    pub async fn ensure_ready(&self, agent: &Agent) -> Result<(), PuppetError> {
        if self.ready().contains(&agent.id) {
            return Ok(());
        }
        let user = &agent.user_id;
        let mut state = self.store.agents().puppet_state(agent.id).await?;
        let before = state.clone();
        if !state.registered {
            self.hs.ensure_registered(user.localpart()).await?;
            state.registered = true;
        }
        if state.display_name.as_deref() != Some(agent.name.as_str()) {
            self.hs.set_display_name(user, &agent.name).await?;
            state.display_name = Some(agent.name.clone());
        }
        if let Some(source) = &agent.behaviour.avatar
            && state.avatar_source.as_deref() != Some(source.as_str())
        {
            let mxc = self.avatar_mxc(source).await?;
            self.hs.set_avatar_url(user, mxc.clone()).await?;
            state.avatar_url = Some(mxc.to_string());
            state.avatar_source = Some(source.clone());
        }
        if before != state {
            self.store
                .agents()
                .set_puppet_state(agent.id, &state)
                .await?;
        }
        self.ready().insert(agent.id);
        Ok(())
    }

    /// Forgets that the puppet's profile is in sync, so the next action re-checks it.
    pub fn profile_changed(&self, agent: &Agent) {
        self.ready().remove(&agent.id);
    }

    /// Re-applies the profile of registered puppets whose agents changed name or avatar (as
    /// the agent registry's reload reports them).
    /// Returns how many were updated.
    pub async fn sync_profiles(
        &self,
        changed: &[std::sync::Arc<Agent>],
    ) -> Result<usize, PuppetError> {
        let mut updated = 0;
        for agent in changed {
            let state = self.store.agents().puppet_state(agent.id).await?;
            let name_differs = state.display_name.as_deref() != Some(agent.name.as_str());
            let avatar_differs = agent.behaviour.avatar.is_some()
                && state.avatar_source.as_deref() != agent.behaviour.avatar.as_deref();
            if !state.registered || !(name_differs || avatar_differs) {
                continue;
            }
            self.profile_changed(agent);
            self.ensure_ready(agent).await?;
            tracing::info!(user_id = %agent.user_id, name = %agent.name, "puppet profile updated");
            updated += 1;
        }
        Ok(updated)
    }

    async fn avatar_mxc(&self, source: &str) -> Result<OwnedMxcUri, PuppetError> {
        if source.starts_with("mxc://") {
            return Ok(OwnedMxcUri::from(source));
        }
        let bytes = tokio::fs::read(source)
            .await
            .map_err(|e| PuppetError::Avatar {
                path: source.to_owned(),
                source: e,
            })?;
        let extension = source.rsplit('.').next().map(str::to_ascii_lowercase);
        let mime = match extension.as_deref() {
            Some("png") => "image/png",
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("gif") => "image/gif",
            Some("webp") => "image/webp",
            _ => "application/octet-stream",
        };
        let name = std::path::Path::new(source)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("avatar");
        Ok(self.hs.upload(bytes, mime, name).await?)
    }
}
