//! Admin keys (`bridge_admin_keys`, capability `bridge.admin`): stored as a SHA-256 of the key,
//! looked up by it, revoked by id or prefix; creation and revocation are audited.

use crate::model::ids::AdminKeyId;
use crate::{
    db::{
        Store, StoreError,
        audit::{Actor, AppendAudit},
        both,
    },
    model::{AuditOutcome, Ts},
};

/// An admin key found by its hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AdminKey {
    /// The key's id.
    pub id: AdminKeyId,
    /// Its label.
    pub name: String,
    /// When it stops working.
    pub expires_at: Option<Ts>,
    /// When it was revoked.
    pub revoked_at: Option<Ts>,
}

/// The store's view of admin keys (`bridge_admin_keys`). A component given this handle, not the
/// whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct AdminKeyStore {
    store: Store,
}

impl Store {
    /// The queries of admin keys (`bridge_admin_keys`).
    pub fn admin_keys(&self) -> AdminKeyStore {
        AdminKeyStore {
            store: self.clone(),
        }
    }
}

impl AdminKeyStore {
    /// Stores an admin key (only its hash).
    pub async fn insert(
        &self,
        name: &str,
        prefix: &str,
        hash: &str,
        expires_at: Option<Ts>,
        by: &Actor,
    ) -> Result<AdminKeyId, StoreError> {
        let id = AdminKeyId::new();
        let entry = by
            .did(
                "admin_key.created",
                Some(&id.to_string()),
                AuditOutcome::Allowed,
            )
            .details(serde_json::json!({ "name": name, "prefix": prefix }));
        both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO bridge_admin_keys (id, name, key_prefix, key_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(name)
            .bind(prefix)
            .bind(hash)
            .bind(Ts::now())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            tx.append_audit(&[entry]).await?;
            tx.commit().await?;
        });
        Ok(id)
    }

    /// An admin key by the hash of the key.
    pub async fn by_hash(&self, hash: &str) -> Result<Option<AdminKey>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT id, name, expires_at, revoked_at FROM bridge_admin_keys WHERE key_hash = $1",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await?))
    }

    /// Revokes admin keys by id or prefix; returns how many.
    pub async fn revoke(&self, id_or_prefix: &str, by: &Actor) -> Result<u64, StoreError> {
        let entry = by.did(
            "admin_key.revoked",
            Some(id_or_prefix),
            AuditOutcome::Allowed,
        );
        Ok(both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE bridge_admin_keys SET revoked_at = $2 WHERE revoked_at IS NULL \
                 AND (CAST(id AS TEXT) = $1 OR key_prefix = $1)",
            )
            .bind(id_or_prefix)
            .bind(Ts::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                tx.append_audit(&[entry]).await?;
            }
            tx.commit().await?;
            n
        }))
    }
}
