//! Versioned JSON state documents per session and per identity, with compare-and-set.

use crate::codec;
use crate::db::{Engram, Tx};
use crate::directory::{ensure_identity, ensure_session, put_session};
use crate::error::{Error, Result};
use crate::tenants::load_tenant;
use engram_core::keys;
use engram_core::limits;
use engram_core::model::{ChangeOp, StateDoc, StatePrecondition, StateScope};
use engram_core::records::StateRecord;
use engram_core::validate;
use engram_storage::{Direction, ReadView, Space};

fn scope_prefix(tenant: &str, scope: StateScope<'_>) -> Result<Vec<u8>> {
    Ok(match scope {
        StateScope::Identity { identity } => {
            validate::id("identity", identity)?;
            keys::identity_state_prefix(tenant, identity)
        }
        StateScope::Session { identity, session } => {
            validate::id("identity", identity)?;
            validate::id("session", session)?;
            keys::session_state_prefix(tenant, identity, session)
        }
    })
}

fn scope_names(scope: StateScope<'_>) -> (&str, &str) {
    match scope {
        StateScope::Identity { identity } => (identity, ""),
        StateScope::Session { identity, session } => (identity, session),
    }
}

pub(crate) fn to_doc(key: &[u8], name: &str, r: StateRecord) -> Result<StateDoc> {
    Ok(StateDoc {
        key: name.to_string(),
        value: codec::json_value(key, &r.value_json)?,
        version: r.version,
        updated_at_ms: r.updated_at_ms,
    })
}

fn check(precondition: StatePrecondition, current: Option<&StateRecord>) -> Result<()> {
    let actual = current.map(|r| r.version);
    let ok = match precondition {
        StatePrecondition::None => true,
        StatePrecondition::Absent => actual.is_none(),
        StatePrecondition::Version(v) => actual == Some(v),
    };
    if ok {
        return Ok(());
    }
    let expected = match precondition {
        StatePrecondition::Version(v) => Some(v),
        _ => None,
    };
    Err(Error::VersionMismatch { expected, actual })
}

/// Makes sure the scope's owner exists inside `tx` (writes create identities and sessions).
fn ensure_scope(tx: &mut Tx<'_>, tenant: &str, scope: StateScope<'_>) -> Result<()> {
    match scope {
        StateScope::Identity { identity } => ensure_identity(tx, tenant, identity),
        StateScope::Session { identity, session } => {
            let (record, created) = ensure_session(tx, tenant, identity, session)?;
            if created {
                put_session(tx, tenant, identity, &record);
            }
            Ok(())
        }
    }
}

fn get_state_in(view: &dyn ReadView, tenant: &str, scope: StateScope<'_>, key: &str) -> Result<Option<StateDoc>> {
    validate::id("key", key)?;
    let prefix = scope_prefix(tenant, scope)?;
    load_tenant(view, tenant)?;
    let k = keys::state(&prefix, key);
    codec::get::<StateRecord>(view, Space::Data, &k)?.map(|r| to_doc(&k, key, r)).transpose()
}

impl Engram {
    /// The state document `key` of `scope`, if it exists.
    pub fn get_state(&self, tenant: &str, scope: StateScope<'_>, key: &str) -> Result<Option<StateDoc>> {
        get_state_in(&*self.inner.store, tenant, scope, key)
    }

    /// [`Engram::get_state`] from memory only, like [`Engram::history_cached`]: the outer
    /// `None` when the document is not in memory (then call `get_state`).
    pub fn get_state_cached(&self, tenant: &str, scope: StateScope<'_>, key: &str) -> Result<Option<Option<StateDoc>>> {
        self.cached(|view| get_state_in(view, tenant, scope, key))
    }

    /// Every state document of `scope`, by key.
    pub fn list_state(&self, tenant: &str, scope: StateScope<'_>) -> Result<Vec<StateDoc>> {
        let prefix = scope_prefix(tenant, scope)?;
        load_tenant(&*self.inner.store, tenant)?;
        codec::scan_prefix::<StateRecord>(&*self.inner.store, Space::Data, &prefix, Direction::Forward)
            .map(|entry| {
                let (k, r) = entry?;
                let name = keys::trailing_str(&prefix, &k).map_err(|e| Error::corruption(&k, e))?;
                to_doc(&k, &name, r)
            })
            .collect()
    }

    /// Writes a state document if `precondition` holds; its version becomes one more than
    /// before (1 for a new document). Creates the identity / session if needed.
    ///
    /// # Errors
    /// `VersionMismatch` when the precondition fails (nothing written), `InvalidArgument`
    /// for a bad key or a value over `MAX_JSON_BYTES`.
    pub fn put_state(
        &self,
        tenant: &str,
        scope: StateScope<'_>,
        key: &str,
        value: serde_json::Value,
        precondition: StatePrecondition,
    ) -> Result<StateDoc> {
        validate::id("key", key)?;
        let prefix = scope_prefix(tenant, scope)?;
        let value_json = validate::json("value", &value, limits::MAX_JSON_BYTES)?;
        let k = keys::state(&prefix, key);
        let (record, _) = self.inner.commit(|tx| {
            load_tenant(tx.view(), tenant)?;
            let current = codec::get::<StateRecord>(tx.view(), Space::Data, &k)?;
            check(precondition, current.as_ref())?;
            ensure_scope(tx, tenant, scope)?;
            let record =
                StateRecord { value_json, version: current.map_or(1, |c| c.version + 1), updated_at_ms: tx.now_ms };
            codec::put(&mut tx.batch, Space::Data, k.clone(), &record);
            let (identity, session) = scope_names(scope);
            tx.record_change(ChangeOp::StatePut, tenant, identity, session).key = key.to_string();
            Ok(record)
        })?;
        Ok(StateDoc { key: key.to_string(), value, version: record.version, updated_at_ms: record.updated_at_ms })
    }

    /// Deletes a state document if `precondition` holds. Returns whether it existed.
    pub fn delete_state(
        &self,
        tenant: &str,
        scope: StateScope<'_>,
        key: &str,
        precondition: StatePrecondition,
    ) -> Result<bool> {
        validate::id("key", key)?;
        let prefix = scope_prefix(tenant, scope)?;
        let k = keys::state(&prefix, key);
        let (existed, _) = self.inner.commit(|tx| {
            load_tenant(tx.view(), tenant)?;
            let current = codec::get::<StateRecord>(tx.view(), Space::Data, &k)?;
            check(precondition, current.as_ref())?;
            if current.is_none() {
                return Ok(false);
            }
            tx.batch.delete(Space::Data, k.clone());
            let (identity, session) = scope_names(scope);
            tx.record_change(ChangeOp::StateDeleted, tenant, identity, session).key = key.to_string();
            Ok(true)
        })?;
        Ok(existed)
    }
}
