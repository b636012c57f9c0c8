//! Access keys (agent runtimes', people's, integrations'): generated from the OS random source, shown once, stored as a
//! SHA-256 hash (a 256-bit random key needs no slow hash: there is nothing to brute-force).

use sha2::{Digest, Sha256};

use crate::{
    db::{
        Store, StoreError,
        audit::Actor,
        keys::{NewKey, Subject},
    },
    model::{Ts, ids::AccessKeyId},
    registration::random_token,
};

/// Keys start with this, so they are recognisable in logs and secret scanners.
pub const PREFIX: &str = "dab_";

/// The stored hash of a key.
pub fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a key for the agent with the given capabilities (and those of the bundles).
/// Returns the id and the key itself, which is never stored.
pub async fn create(
    store: &Store,
    agent_external_id: &str,
    name: &str,
    caps: &[String],
    bundles: &[String],
    expires_at: Option<Ts>,
    by: &Actor,
) -> Result<(AccessKeyId, String), StoreError> {
    create_for(
        store,
        Subject::Agent(agent_external_id),
        name,
        caps,
        bundles,
        expires_at,
        by,
    )
    .await
}

/// Creates a key for `subject` (an agent, a person, an integration, an embassy) with the given
/// capabilities and those of the bundles. Returns the id and the key itself.
pub async fn create_for(
    store: &Store,
    subject: Subject<'_>,
    name: &str,
    caps: &[String],
    bundles: &[String],
    expires_at: Option<Ts>,
    by: &Actor,
) -> Result<(AccessKeyId, String), StoreError> {
    let mut all: Vec<String> = caps.to_vec();
    for bundle in bundles {
        let in_bundle = store.keys().bundle_caps(bundle).await?;
        if in_bundle.is_empty() {
            return Err(StoreError::NotFound {
                what: "bundle",
                key: bundle.clone(),
            });
        }
        all.extend(in_bundle);
    }
    all.sort();
    all.dedup();
    if all.is_empty() {
        return Err(StoreError::Invalid(
            "a key needs at least one capability (--cap or --bundle)".into(),
        ));
    }
    let key = format!("{PREFIX}{}", random_token());
    let prefix = key[..12].to_owned();
    let id = store
        .keys()
        .insert(&NewKey {
            subject,
            name,
            prefix: &prefix,
            hash: &hash(&key),
            capabilities: &all,
            expires_at,
            by,
        })
        .await?;
    Ok((id, key))
}

/// Creates an admin key (capability `bridge.admin`, for the admin API). Returns the id and the
/// key itself, which is never stored.
pub async fn create_admin(
    store: &Store,
    name: &str,
    expires_at: Option<Ts>,
    by: &Actor,
) -> Result<(crate::model::ids::AdminKeyId, String), StoreError> {
    let key = format!("{PREFIX}{}", random_token());
    let id = store
        .admin_keys()
        .insert(name, &key[..12], &hash(&key), expires_at, by)
        .await?;
    Ok((id, key))
}
