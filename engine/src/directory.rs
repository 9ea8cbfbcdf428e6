//! Identities and sessions: creation (explicit, or implicit on first write), lookup,
//! listing with cursor pagination and metadata filters, forks.

use crate::codec;
use crate::db::{Engram, Tx};
use crate::error::{Error, Result};
use crate::retention::{policy_from_record, policy_to_record};
use crate::tenants::load_tenant;
use engram_core::keys;
use engram_core::limits;
use engram_core::model::{
    ChangeOp, Identity, JsonMap, ListQuery, Memory, Page, RetentionPolicy, Session, SessionConfig, Tenant,
};
use engram_core::records::{IdentityRecord, SessionRecord};
use engram_core::validate;
use engram_storage::{Direction, ReadView, Space};

pub(crate) fn to_identity(key: &[u8], r: IdentityRecord) -> Result<Identity> {
    Ok(Identity { metadata: codec::json_map(key, &r.metadata_json)?, id: r.id, created_at_ms: r.created_at_ms })
}

pub(crate) fn to_session(identity: &str, key: &[u8], r: SessionRecord) -> Result<Session> {
    Ok(Session {
        identity: identity.to_string(),
        metadata: codec::json_map(key, &r.metadata_json)?,
        retention: policy_from_record(r.retention.as_ref()),
        forked_from: r.parent.clone().map(|p| (p, r.fork_seq)),
        id: r.id,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        head_seq: r.head_seq,
    })
}

/// Creates the identity's directory entry inside `tx` unless it exists.
pub(crate) fn ensure_identity(tx: &mut Tx<'_>, tenant: &str, identity: &str) -> Result<()> {
    let key = keys::identity_dir(tenant, identity);
    if tx.view().get(Space::Data, &key)?.is_none() {
        let record =
            IdentityRecord { id: identity.to_string(), created_at_ms: tx.now_ms, metadata_json: String::new() };
        codec::put(&mut tx.batch, Space::Data, key, &record);
    }
    Ok(())
}

pub(crate) fn load_session(view: &dyn ReadView, tenant: &str, identity: &str, session: &str) -> Result<SessionRecord> {
    codec::get(view, Space::Data, &keys::session_dir(tenant, identity, session))?
        .ok_or_else(|| Error::not_found("session", session))
}

/// The session's record inside `tx`; when it does not exist, a new one (its identity is
/// created in `tx`; the caller puts the session record) and `true`.
pub(crate) fn ensure_session(
    tx: &mut Tx<'_>,
    tenant: &str,
    identity: &str,
    session: &str,
) -> Result<(SessionRecord, bool)> {
    let key = keys::session_dir(tenant, identity, session);
    if let Some(record) = codec::get(tx.view(), Space::Data, &key)? {
        return Ok((record, false));
    }
    ensure_identity(tx, tenant, identity)?;
    let record = SessionRecord {
        id: session.to_string(),
        created_at_ms: tx.now_ms,
        updated_at_ms: tx.now_ms,
        ..SessionRecord::default()
    };
    Ok((record, true))
}

pub(crate) fn put_session(tx: &mut Tx<'_>, tenant: &str, identity: &str, record: &SessionRecord) {
    codec::put(&mut tx.batch, Space::Data, keys::session_dir(tenant, identity, &record.id), record);
}

fn check_ids(identity: &str, session: Option<&str>) -> Result<()> {
    validate::id("identity", identity)?;
    if let Some(session) = session {
        validate::id("session", session)?;
    }
    Ok(())
}

pub(crate) fn check_list(query: &ListQuery) -> Result<()> {
    validate::page_limit("limit", query.limit)?;
    if let Some(after) = &query.after {
        validate::id("after", after)?;
    }
    if query.metadata.len() > limits::MAX_FILTERS {
        return Err(Error::invalid(
            "metadata",
            format!("has {} filters; the limit is {}", query.metadata.len(), limits::MAX_FILTERS),
        ));
    }
    Ok(())
}

/// What a directory listing pages over: its id (the cursor) and its metadata (the filter).
pub(crate) trait Listed {
    fn id(&self) -> &str;
    fn metadata(&self) -> &JsonMap;
}

macro_rules! listed {
    ($($type:ty => $id:ident),* $(,)?) => {$(
        impl Listed for $type {
            fn id(&self) -> &str {
                &self.$id
            }
            fn metadata(&self) -> &JsonMap {
                &self.metadata
            }
        }
    )*};
}

listed!(Tenant => name, Identity => id, Session => id, Memory => id);

/// One page of a directory (`prefix` + encoded id -> record), after the cursor.
pub(crate) fn list_dir<M, T>(
    view: &dyn ReadView,
    space: Space,
    prefix: &[u8],
    query: &ListQuery,
    mut convert: impl FnMut(&[u8], M) -> Result<T>,
) -> Result<Page<T>>
where
    M: prost::Message + Default,
    T: Listed,
{
    let start = match &query.after {
        Some(after) => {
            let mut k = prefix.to_vec();
            keys::put_str(&mut k, after);
            keys::prefix_end(&k).unwrap_or(k)
        }
        None => prefix.to_vec(),
    };
    let end = keys::prefix_end(prefix);
    let mut items = Vec::new();
    let mut more = false;
    for entry in codec::scan::<M>(view, space, &start, end.as_deref(), Direction::Forward) {
        let (key, record) = entry?;
        let item = convert(&key, record)?;
        if !codec::metadata_matches(item.metadata(), &query.metadata) {
            continue;
        }
        if items.len() == query.limit {
            more = true;
            break;
        }
        items.push(item);
    }
    let next_cursor = if more { items.last().map(|i| i.id().to_string()) } else { None };
    Ok(Page { items, next_cursor })
}

impl Engram {
    /// Creates an identity. Writes that name an identity create it too; this one sets
    /// metadata and refuses an existing id.
    pub fn create_identity(&self, tenant: &str, identity: &str, metadata: JsonMap) -> Result<Identity> {
        check_ids(identity, None)?;
        let metadata_json = validate::metadata("metadata", &metadata)?;
        let (record, _) = self.inner.commit(|tx| {
            load_tenant(tx.view(), tenant)?;
            let key = keys::identity_dir(tenant, identity);
            if tx.view().get(Space::Data, &key)?.is_some() {
                return Err(Error::AlreadyExists { what: "identity", id: identity.to_string() });
            }
            let record = IdentityRecord { id: identity.to_string(), created_at_ms: tx.now_ms, metadata_json };
            codec::put(&mut tx.batch, Space::Data, key, &record);
            tx.record_change(ChangeOp::IdentityCreated, tenant, identity, "");
            Ok(record)
        })?;
        to_identity(&keys::identity_dir(tenant, identity), record)
    }

    pub fn get_identity(&self, tenant: &str, identity: &str) -> Result<Identity> {
        check_ids(identity, None)?;
        let view = &*self.inner.store;
        load_tenant(view, tenant)?;
        let key = keys::identity_dir(tenant, identity);
        let record = codec::get(view, Space::Data, &key)?.ok_or_else(|| Error::not_found("identity", identity))?;
        to_identity(&key, record)
    }

    /// Identities of a tenant in id order, a page at a time.
    pub fn list_identities(&self, tenant: &str, query: &ListQuery) -> Result<Page<Identity>> {
        check_list(query)?;
        let view = &*self.inner.store;
        load_tenant(view, tenant)?;
        list_dir(view, Space::Data, &keys::identity_dir_prefix(tenant), query, to_identity)
    }

    /// Creates a session (and its identity if needed).
    ///
    /// # Errors
    /// `AlreadyExists`, `InvalidArgument`, `NotFound` for the tenant.
    pub fn create_session(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        config: SessionConfig,
    ) -> Result<Session> {
        check_ids(identity, Some(session))?;
        let metadata_json = validate::metadata("metadata", &config.metadata)?;
        let retention = policy_to_record("retention", &config.retention)?;
        let (record, _) = self.inner.commit(|tx| {
            load_tenant(tx.view(), tenant)?;
            if tx.view().get(Space::Data, &keys::session_dir(tenant, identity, session))?.is_some() {
                return Err(Error::AlreadyExists { what: "session", id: session.to_string() });
            }
            let (mut record, _) = ensure_session(tx, tenant, identity, session)?;
            record.metadata_json = metadata_json;
            record.retention = retention;
            put_session(tx, tenant, identity, &record);
            tx.record_change(ChangeOp::SessionCreated, tenant, identity, session);
            Ok(record)
        })?;
        to_session(identity, &keys::session_dir(tenant, identity, session), record)
    }

    pub fn get_session(&self, tenant: &str, identity: &str, session: &str) -> Result<Session> {
        check_ids(identity, Some(session))?;
        let view = &*self.inner.store;
        load_tenant(view, tenant)?;
        let record = load_session(view, tenant, identity, session)?;
        to_session(identity, &keys::session_dir(tenant, identity, session), record)
    }

    /// Sessions of an identity in id order, a page at a time.
    pub fn list_sessions(&self, tenant: &str, identity: &str, query: &ListQuery) -> Result<Page<Session>> {
        check_ids(identity, None)?;
        check_list(query)?;
        let view = &*self.inner.store;
        load_tenant(view, tenant)?;
        if view.get(Space::Data, &keys::identity_dir(tenant, identity))?.is_none() {
            return Err(Error::not_found("identity", identity));
        }
        let convert = |key: &[u8], r: SessionRecord| to_session(identity, key, r);
        list_dir(view, Space::Data, &keys::session_dir_prefix(tenant, identity), query, convert)
    }

    /// Replaces the session's metadata (see [`Engram::update_session`]).
    ///
    /// # Errors
    /// `NotFound` for the session, `InvalidArgument` for metadata over its limits.
    pub fn set_session_metadata(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        metadata: JsonMap,
    ) -> Result<Session> {
        self.update_session(tenant, identity, session, None, Some(metadata))
    }

    /// Replaces a session's retention policy; keep-last-N applies at once (see
    /// [`Engram::update_session`]).
    pub fn set_session_retention(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        retention: RetentionPolicy,
    ) -> Result<Session> {
        self.update_session(tenant, identity, session, Some(retention), None)
    }

    /// Replaces a session's retention policy, its metadata or both, in one write: when
    /// either is refused, neither changes. A new keep-last-N applies at once.
    ///
    /// # Errors
    /// `NotFound` for the session; `InvalidArgument` for metadata over its limits, an
    /// invalid policy, or neither given (field `retention`).
    pub fn update_session(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        retention: Option<RetentionPolicy>,
        metadata: Option<JsonMap>,
    ) -> Result<Session> {
        check_ids(identity, Some(session))?;
        if retention.is_none() && metadata.is_none() {
            return Err(Error::invalid("retention", "give retention, metadata or both"));
        }
        let metadata_json = metadata.map(|m| validate::metadata("metadata", &m)).transpose()?;
        let retention = retention.map(|r| policy_to_record("retention", &r)).transpose()?;
        let (session_record, _) = self.inner.commit(|tx| {
            let tenant_record = load_tenant(tx.view(), tenant)?;
            let mut s = load_session(tx.view(), tenant, identity, session)?;
            if let Some(metadata_json) = &metadata_json {
                s.metadata_json.clone_from(metadata_json);
            }
            s.updated_at_ms = tx.now_ms;
            let mut removed = Vec::new();
            if let Some(record) = &retention {
                s.retention.clone_from(record);
                let mut ledger = crate::blobs::BlobLedger::new(tenant);
                let effective = crate::retention::Effective::new(&tenant_record, &s);
                if let Some(n) = effective.keep_last {
                    removed = crate::retention::trim_keep_last(tx, &mut ledger, identity, &mut s, n, &[])?;
                }
                ledger.flush(&mut tx.batch);
            }
            put_session(tx, tenant, identity, &s);
            tx.record_change(ChangeOp::SessionUpdated, tenant, identity, session).removed = removed;
            Ok(s)
        })?;
        to_session(identity, &keys::session_dir(tenant, identity, session), session_record)
    }

    /// Forks `source` at sequence `at` (its head when `None`) into a new session `fork`
    /// of the same identity. Nothing is copied: the fork's history reads the source's
    /// events up to `at`, then its own; later appends to either do not show in the other.
    /// Retention of the source (TTL, keep-last-N) also removes those inherited events from
    /// the fork's history.
    ///
    /// # Errors
    /// `NotFound` for the source, `AlreadyExists` for the fork id, `InvalidArgument` when
    /// `at` is past the source's head or the chain of forks is deeper than
    /// `MAX_FORK_DEPTH`.
    pub fn fork_session(
        &self,
        tenant: &str,
        identity: &str,
        source: &str,
        at: Option<u64>,
        fork: &str,
        config: SessionConfig,
    ) -> Result<Session> {
        check_ids(identity, Some(source))?;
        validate::id("fork", fork)?;
        let metadata_json = validate::metadata("metadata", &config.metadata)?;
        let retention = policy_to_record("retention", &config.retention)?;
        let (record, _) = self.inner.commit(|tx| {
            load_tenant(tx.view(), tenant)?;
            let mut parent = load_session(tx.view(), tenant, identity, source)?;
            let at = at.unwrap_or(parent.head_seq);
            if at > parent.head_seq {
                return Err(Error::invalid("at", format!("is {at}; the session head is {}", parent.head_seq)));
            }
            if tx.view().get(Space::Data, &keys::session_dir(tenant, identity, fork))?.is_some() {
                return Err(Error::AlreadyExists { what: "session", id: fork.to_string() });
            }
            let mut depth = 1;
            let mut cursor = parent.parent.clone();
            while let Some(ancestor) = cursor {
                depth += 1;
                if depth >= limits::MAX_FORK_DEPTH {
                    return Err(Error::invalid(
                        "source",
                        format!("forks may nest at most {} deep", limits::MAX_FORK_DEPTH),
                    ));
                }
                cursor = load_session(tx.view(), tenant, identity, &ancestor)?.parent;
            }
            parent.fork_children += 1;
            put_session(tx, tenant, identity, &parent);
            let record = SessionRecord {
                id: fork.to_string(),
                created_at_ms: tx.now_ms,
                updated_at_ms: tx.now_ms,
                metadata_json,
                head_seq: at,
                parent: Some(source.to_string()),
                fork_seq: at,
                retention,
                ..SessionRecord::default()
            };
            put_session(tx, tenant, identity, &record);
            tx.record_change(ChangeOp::SessionCreated, tenant, identity, fork).key = source.to_string();
            Ok(record)
        })?;
        to_session(identity, &keys::session_dir(tenant, identity, fork), record)
    }
}
