//! Access keys and their capabilities (the microDAO access schema, seed 001): an agent
//! runtime's (the agent API, acting as the agent), a person's (reading the channels they are
//! in), an integration's (may hold `bridge.admin`, the admin API) or an embassy's (stored).

use serde::Serialize;

use crate::model::{
    KeyStatus, KeySubject,
    ids::{AccessKeyId, AgentId, UserRowId},
    topics::{Draft, KeyChanged, PAYLOAD_VERSION, Topic, agent_partition, key_partition},
};
use crate::{
    db::{
        Store, StoreError,
        audit::{Actor, AppendAudit, NewAudit},
        both,
        events::AppendEvents,
    },
    model::{AuditOutcome, Ts},
};

/// An access key found by its hash, with what the agent API needs to authorise a call.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuthKey {
    /// The key's id.
    pub key_id: AccessKeyId,
    /// Whose key it is.
    pub subject_kind: KeySubject,
    /// The person a user key belongs to.
    pub user_id: Option<UserRowId>,
    /// The agent an agent key acts as.
    pub agent_id: Option<AgentId>,
    /// That agent's external id.
    pub agent_external_id: Option<String>,
    /// Its label.
    pub name: String,
    /// Active, revoked or expired, as stored (the timestamps decide; see [`KeyStore::mark_expired`]).
    pub status: KeyStatus,
    /// When it stops working, if ever.
    pub expires_at: Option<Ts>,
    /// When it was revoked.
    pub revoked_at: Option<Ts>,
    /// Last authenticated use.
    pub last_used_at: Option<Ts>,
    /// Capability codes it holds.
    #[sqlx(skip)]
    pub capabilities: Vec<String>,
}

/// A key as listings show it (never the key itself).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeyListing {
    /// The key's id.
    pub id: AccessKeyId,
    /// Whose key it is.
    pub subject_kind: KeySubject,
    /// Its subject: the agent's external id, the person's Matrix id (none for integrations and
    /// embassies, which their name identifies).
    pub subject: Option<String>,
    /// The agent's external id (agent keys).
    pub agent: Option<String>,
    /// Active, revoked or expired.
    pub status: KeyStatus,
    /// Its label.
    pub name: String,
    /// Its first characters.
    pub prefix: String,
    /// When it was created.
    pub created_at: Ts,
    /// When it expires.
    pub expires_at: Option<Ts>,
    /// When it was revoked.
    pub revoked_at: Option<Ts>,
    /// Last authenticated use.
    pub last_used_at: Option<Ts>,
    /// Capability codes.
    #[sqlx(skip)]
    pub capabilities: Vec<String>,
}

/// The capability of the admin API, which only integration keys may hold.
pub const ADMIN_CAPABILITY: &str = "bridge.admin";

/// Whose key a new key is.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// An agent, by external id.
    Agent(&'a str),
    /// A person, by Matrix id (a `users` row is made if there is none).
    User(&'a ruma::UserId),
    /// An integration (named by the key's name).
    Integration,
    /// An embassy (named by the key's name).
    Embassy,
}

impl Subject<'_> {
    /// Its `subject_kind`.
    pub fn kind(&self) -> KeySubject {
        match self {
            Subject::Agent(_) => KeySubject::Agent,
            Subject::User(_) => KeySubject::User,
            Subject::Integration => KeySubject::Integration,
            Subject::Embassy => KeySubject::Embassy,
        }
    }
}

/// A key to store: everything but the key itself, which is never stored.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    /// Whose key it is.
    pub subject: Subject<'a>,
    /// A label.
    pub name: &'a str,
    /// The key's first characters.
    pub prefix: &'a str,
    /// SHA-256 (hex) of the key.
    pub hash: &'a str,
    /// Capability codes (each must exist).
    pub capabilities: &'a [String],
    /// When it expires.
    pub expires_at: Option<Ts>,
    /// Who creates it (audited).
    pub by: &'a Actor,
}

/// The store's view of access keys of agent runtimes and their capabilities. A component given this
/// handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct KeyStore {
    store: Store,
}

impl Store {
    /// The queries of access keys of agent runtimes and their capabilities.
    pub fn keys(&self) -> KeyStore {
        KeyStore {
            store: self.clone(),
        }
    }
}

impl KeyStore {
    /// Stores a new key (hash only) with its capabilities, atomically.
    pub async fn insert(&self, key: &NewKey<'_>) -> Result<AccessKeyId, StoreError> {
        let agent = match key.subject {
            Subject::Agent(external) => Some(
                self.store
                    .agents()
                    .by_external_id(external)
                    .await?
                    .ok_or_else(|| StoreError::NotFound {
                        what: "agent",
                        key: external.into(),
                    })?,
            ),
            _ => None,
        };
        let known: Vec<String> = both!(self.store, pool => sqlx::query_scalar("SELECT code FROM capabilities ORDER BY code")
            .fetch_all(pool)
            .await?);
        if let Some(unknown) = key.capabilities.iter().find(|c| !known.contains(c)) {
            return Err(StoreError::Invalid(format!(
                "unknown capability `{unknown}` (known: {})",
                known.join(", ")
            )));
        }
        // The admin API is for integrations only: a runtime's or a person's key that could
        // provision the bridge would make every leaked runtime key an admin key.
        if key.capabilities.iter().any(|c| c == ADMIN_CAPABILITY)
            && key.subject.kind() != KeySubject::Integration
        {
            return Err(StoreError::Invalid(format!(
                "only integration keys may hold `{ADMIN_CAPABILITY}`"
            )));
        }
        let id = AccessKeyId::new();
        let subject_label = match key.subject {
            Subject::Agent(a) => Some(a.to_owned()),
            Subject::User(u) => Some(u.to_string()),
            _ => None,
        };
        both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let subject_id: Option<uuid::Uuid> = match key.subject {
                Subject::Agent(_) => agent.map(|a| a.0),
                Subject::User(user) => {
                    sqlx::query(super::admin::ENSURE_USER)
                        .bind(UserRowId::new())
                        .bind(user.as_str())
                        .bind(user.localpart())
                        .execute(&mut *tx)
                        .await?;
                    let row: UserRowId = sqlx::query_scalar("SELECT id FROM users WHERE matrix_id = $1")
                        .bind(user.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                    Some(row.0)
                }
                Subject::Integration | Subject::Embassy => None,
            };
            sqlx::query(
                "INSERT INTO access_keys (id, agent_id, name, key_prefix, key_hash, created_at, expires_at, \
                 subject_kind, subject_id, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active')",
            )
            .bind(id)
            .bind(agent)
            .bind(key.name)
            .bind(key.prefix)
            .bind(key.hash)
            .bind(Ts::now())
            .bind(key.expires_at)
            .bind(key.subject.kind())
            .bind(subject_id.map(UserRowId))
            .execute(&mut *tx)
            .await?;
            tx.append_audit(&[key
                .by
                .did("access_key.created", Some(&id.to_string()), AuditOutcome::Allowed)
                .details(serde_json::json!({
                    "subject_kind": key.subject.kind(), "subject": subject_label,
                    "agent": agent.map(|_| subject_label.clone()), "prefix": key.prefix, "name": key.name,
                    "capabilities": key.capabilities, "expires_at": key.expires_at,
                }))])
                .await?;
            if self.store.events_enabled() {
                tx.append_events(&[Draft::new(
                    Topic::KeyCreated,
                    agent.map_or_else(|| key_partition(id), agent_partition),
                    &KeyChanged {
                        v: PAYLOAD_VERSION,
                        key_id: id,
                        subject_kind: key.subject.kind(),
                        subject_id,
                        agent_id: agent,
                        name: Some(key.name),
                        prefix: key.prefix,
                        capabilities: Some(key.capabilities),
                        at: Ts::now(),
                    },
                )])
                .await?;
            }
            for cap in key.capabilities {
                sqlx::query(
                    "INSERT INTO access_key_caps (key_id, cap_id) SELECT $1, id FROM capabilities WHERE code = $2 \
                     ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(cap)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        self.store.wake_publisher();
        Ok(id)
    }

    /// Capability codes of a bundle (empty for an unknown bundle).
    pub async fn bundle_caps(&self, bundle: &str) -> Result<Vec<String>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT c.code FROM bundle_caps bc JOIN bundles b ON b.id = bc.bundle_id \
             JOIN capabilities c ON c.id = bc.cap_id WHERE b.code = $1 ORDER BY c.code",
        )
        .bind(bundle)
        .fetch_all(pool)
        .await?))
    }

    async fn key_caps(&self, key: AccessKeyId) -> Result<Vec<String>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT c.code FROM access_key_caps kc JOIN capabilities c ON c.id = kc.cap_id \
             WHERE kc.key_id = $1 ORDER BY c.code",
        )
        .bind(key)
        .fetch_all(pool)
        .await?))
    }

    /// The key with this hash, with its capabilities.
    pub async fn by_hash(&self, hash: &str) -> Result<Option<AuthKey>, StoreError> {
        let row: Option<AuthKey> = both!(self.store, pool => sqlx::query_as(
            "SELECT k.id AS key_id, k.subject_kind, CASE WHEN k.subject_kind = 'user' THEN k.subject_id END AS user_id, k.agent_id, a.external_id AS agent_external_id, \
             k.name, k.status, k.expires_at, k.revoked_at, k.last_used_at \
             FROM access_keys k LEFT JOIN agents a ON a.id = k.agent_id WHERE k.key_hash = $1",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await?);
        let Some(mut key) = row else { return Ok(None) };
        key.capabilities = self.key_caps(key.key_id).await?;
        Ok(Some(key))
    }

    /// Marks a key found past its `expires_at` as `expired` (seed 001's status follows the
    /// timestamps; the timestamps, not the status, decide whether a key works).
    pub async fn mark_expired(&self, key: AccessKeyId) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query("UPDATE access_keys SET status = 'expired' WHERE id = $1 AND status = 'active'")
            .bind(key)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Records a use of the key.
    pub async fn touch(&self, key: AccessKeyId, now: Ts) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query("UPDATE access_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(key)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Every key (of one agent, when given), oldest first.
    pub async fn list(
        &self,
        agent_external_id: Option<&str>,
    ) -> Result<Vec<KeyListing>, StoreError> {
        let mut keys: Vec<KeyListing> = both!(self.store, pool => sqlx::query_as(
            "SELECT k.id, k.subject_kind, COALESCE(a.external_id, u.matrix_id) AS subject, a.external_id AS agent, \
             k.status, k.name, k.key_prefix AS prefix, k.created_at, k.expires_at, k.revoked_at, k.last_used_at \
             FROM access_keys k LEFT JOIN agents a ON a.id = k.agent_id \
             LEFT JOIN users u ON k.subject_kind = 'user' AND u.id = k.subject_id \
             WHERE ($1 = '' OR a.external_id = $1) ORDER BY k.created_at",
        )
        .bind(agent_external_id.unwrap_or(""))
        .fetch_all(pool)
        .await?);
        for key in &mut keys {
            key.capabilities = self.key_caps(key.id).await?;
        }
        Ok(keys)
    }

    /// Revokes the key with this id or prefix (audited as `by`); returns how many keys were
    /// revoked.
    pub async fn revoke(&self, id_or_prefix: &str, by: &Actor) -> Result<u64, StoreError> {
        let now = Ts::now();
        let n = both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            #[allow(clippy::type_complexity)]
            let rows: Vec<(AccessKeyId, Option<AgentId>, Option<String>, String, KeySubject, Option<UserRowId>)> = sqlx::query_as(
                "UPDATE access_keys SET revoked_at = $1, status = 'revoked' WHERE revoked_at IS NULL \
                 AND (CAST(id AS TEXT) = $2 OR key_prefix = $2) \
                 RETURNING id, agent_id, name, key_prefix, subject_kind, subject_id",
            )
            .bind(now)
            .bind(id_or_prefix)
            .fetch_all(&mut *tx)
            .await?;
            let audits: Vec<NewAudit> = rows
                .iter()
                .map(|(id, _, _, prefix, _, _)| {
                    by.did("access_key.revoked", Some(&id.to_string()), AuditOutcome::Allowed)
                        .details(serde_json::json!({ "prefix": prefix }))
                })
                .collect();
            tx.append_audit(&audits).await?;
            if self.store.events_enabled() {
                let drafts: Vec<Draft> = rows
                    .iter()
                    .map(|(id, agent, name, prefix, kind, subject)| {
                        Draft::new(
                            Topic::KeyRevoked,
                            agent.map_or_else(|| key_partition(*id), agent_partition),
                            &KeyChanged {
                                v: PAYLOAD_VERSION,
                                key_id: *id,
                                subject_kind: *kind,
                                subject_id: subject.map(|s| s.0),
                                agent_id: *agent,
                                name: name.as_deref(),
                                prefix,
                                capabilities: None,
                                at: now,
                            },
                        )
                    })
                    .collect();
                tx.append_events(&drafts).await?;
            }
            tx.commit().await?;
            rows.len() as u64
        });
        self.store.wake_publisher();
        Ok(n)
    }
}
