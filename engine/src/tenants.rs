//! Tenants: the isolation boundary. Every key of a tenant starts with its name.

use crate::codec;
use crate::db::{Engram, Tx};
use crate::directory::{check_list, list_dir};
use crate::error::{Error, Result};
use crate::retention::{policy_from_record, policy_to_record};
use engram_core::keys;
use engram_core::model::{
    ChangeOp, EmbedderKind, ListQuery, Metric, Page, Receipt, RetentionPolicy, Tenant, TenantConfig,
};
use engram_core::records::TenantRecord;
use engram_core::validate;
use engram_storage::{ReadView, Space};

pub(crate) fn load_tenant(view: &dyn ReadView, tenant: &str) -> Result<TenantRecord> {
    validate::id("tenant", tenant)?;
    codec::get(view, Space::Meta, &keys::meta::tenant(tenant))?.ok_or_else(|| Error::not_found("tenant", tenant))
}

pub(crate) fn tenant_metric(record: &TenantRecord) -> Metric {
    Metric::from_i32(record.metric).unwrap_or(Metric::Cosine)
}

fn to_tenant(key: &[u8], r: TenantRecord) -> Result<Tenant> {
    Ok(Tenant {
        metric: tenant_metric(&r),
        vector_dim: (r.vector_dim > 0).then_some(r.vector_dim),
        retention: policy_from_record(r.retention.as_ref()),
        metadata: codec::json_map(key, &r.metadata_json)?,
        embedder: if r.embedder == EmbedderKind::Local as i32 { EmbedderKind::Local } else { EmbedderKind::None },
        name: r.name,
        created_at_ms: r.created_at_ms,
    })
}

fn put_tenant(tx: &mut Tx<'_>, record: &TenantRecord) {
    codec::put(&mut tx.batch, Space::Meta, keys::meta::tenant(&record.name), record);
}

impl Engram {
    /// Creates a tenant.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name or configuration, `AlreadyExists`.
    pub fn create_tenant(&self, name: &str, config: TenantConfig) -> Result<Tenant> {
        validate::id("tenant", name)?;
        if let Some(dim) = config.vector_dim.filter(|d| *d == 0 || *d as usize > engram_core::limits::MAX_VECTOR_DIM) {
            let max = engram_core::limits::MAX_VECTOR_DIM;
            return Err(Error::invalid("vector_dim", format!("is {dim}; it must be between 1 and {max}")));
        }
        let retention = policy_to_record("retention", &config.retention)?;
        let metadata_json = validate::metadata("metadata", &config.metadata)?;
        let vector_dim = match config.embedder {
            EmbedderKind::None => config.vector_dim.unwrap_or(0),
            EmbedderKind::Local => self.local_embedder_dim(config.vector_dim.unwrap_or(0))?,
        };
        let (record, _) = self.inner.commit(|tx| {
            let key = keys::meta::tenant(name);
            if tx.view().get(Space::Meta, &key)?.is_some() {
                return Err(Error::AlreadyExists { what: "tenant", id: name.to_string() });
            }
            let record = TenantRecord {
                name: name.to_string(),
                created_at_ms: tx.now_ms,
                vector_dim,
                metric: config.metric.unwrap_or(Metric::Cosine) as i32,
                retention,
                metadata_json,
                embedder: config.embedder as i32,
            };
            put_tenant(tx, &record);
            tx.record_change(ChangeOp::TenantCreated, name, "", "");
            Ok(record)
        })?;
        to_tenant(&keys::meta::tenant(name), record)
    }

    /// Creates the tenant with default settings unless it exists.
    pub(crate) fn ensure_tenant(&self, name: &str) -> Result<()> {
        match self.create_tenant(name, TenantConfig::default()) {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn get_tenant(&self, name: &str) -> Result<Tenant> {
        let record = load_tenant(&*self.inner.store, name)?;
        to_tenant(&keys::meta::tenant(name), record)
    }

    /// A page of tenants by name: after a cursor, with the given metadata.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad limit, cursor or filter.
    pub fn list_tenants(&self, query: &ListQuery) -> Result<Page<Tenant>> {
        check_list(query)?;
        let prefix = keys::meta::tenants_prefix();
        list_dir(&*self.inner.store, Space::Meta, &prefix, query, to_tenant)
    }

    /// Chooses where the tenant's vectors come from (see [`Engram::update_tenant`]).
    /// Switching to `Local` fixes the tenant's dimension to the model's, and the embedder
    /// then derives a vector for every stored text that has none (in the background).
    ///
    /// # Errors
    /// `InvalidArgument` (field `embedder`) when no local embedder is loaded or the tenant
    /// already holds vectors of another dimension; `NotFound` for the tenant.
    pub fn set_tenant_embedder(&self, name: &str, embedder: EmbedderKind) -> Result<Tenant> {
        self.update_tenant(name, None, Some(embedder))
    }

    /// Replaces the tenant's retention policy (see [`Engram::update_tenant`]). Keep-last-N
    /// and time to live take effect at the next sweep; reads hide expired events at once.
    pub fn set_tenant_retention(&self, name: &str, retention: RetentionPolicy) -> Result<Tenant> {
        self.update_tenant(name, Some(retention), None)
    }

    /// Replaces the tenant's retention policy, its embedder or both, in one write: when
    /// either is refused, neither changes (see [`Engram::set_tenant_retention`] and
    /// [`Engram::set_tenant_embedder`] for what each does).
    ///
    /// # Errors
    /// `NotFound` for the tenant; `InvalidArgument` for an invalid policy, an embedder
    /// refused as [`Engram::set_tenant_embedder`] says, or neither given (field
    /// `retention`).
    pub fn update_tenant(
        &self,
        name: &str,
        retention: Option<RetentionPolicy>,
        embedder: Option<EmbedderKind>,
    ) -> Result<Tenant> {
        if retention.is_none() && embedder.is_none() {
            return Err(Error::invalid("retention", "give retention, embedder or both"));
        }
        let retention = retention.map(|r| policy_to_record("retention", &r)).transpose()?;
        let model_dim = match embedder {
            Some(EmbedderKind::Local) => Some(self.local_embedder_dim(0)?),
            Some(EmbedderKind::None) | None => None,
        };
        let (tenant, _) = self.inner.commit(|tx| {
            let mut tenant = load_tenant(tx.view(), name)?;
            if let Some(record) = &retention {
                tenant.retention.clone_from(record);
            }
            if let Some(dim) = model_dim {
                if tenant.vector_dim != 0 && tenant.vector_dim != dim {
                    return Err(Error::invalid(
                        "embedder",
                        format!(
                            "the tenant's vectors have dimension {}; the local model's have {dim}",
                            tenant.vector_dim
                        ),
                    ));
                }
                tenant.vector_dim = dim;
            }
            if let Some(embedder) = embedder {
                tenant.embedder = embedder as i32;
            }
            put_tenant(tx, &tenant);
            let change = tx.record_change(ChangeOp::TenantUpdated, name, "", "");
            if embedder.is_some() {
                // The embedder's worker looks for this key to start deriving vectors.
                change.key = crate::embed::EMBEDDER_CHANGE_KEY.to_string();
            }
            Ok(tenant)
        })?;
        to_tenant(&keys::meta::tenant(name), tenant)
    }

    /// The local model's dimension, checked against a declared one (0: none declared).
    fn local_embedder_dim(&self, declared: u32) -> Result<u32> {
        let model = self.inner.options.embedder.as_ref().ok_or_else(|| {
            Error::invalid(
                "embedder",
                "no local embedder is loaded (Options::embedder, `engram serve --embedding-model`)",
            )
        })?;
        let dim = model.dim() as u32;
        if declared != 0 && declared != dim {
            return Err(Error::invalid("vector_dim", format!("is {declared}; the local model's vectors have {dim}")));
        }
        Ok(dim)
    }

    /// Deletes a tenant, everything it owns and its API keys; returns what was removed.
    pub fn delete_tenant(&self, name: &str) -> Result<Receipt> {
        let prefix = keys::tenant_prefix(name);
        self.commit_removal(&prefix, |tx| {
            load_tenant(tx.view(), name)?;
            let mut receipt = Receipt { tenant: name.to_string(), ..Receipt::default() };
            crate::forget::remove_range(tx, name, &prefix, &mut receipt, None)?;
            tx.batch.delete(Space::Meta, keys::meta::tenant(name));
            crate::api_keys::delete_tenant_keys(tx, name)?;
            let redaction = crate::forget::redact_changelog(tx, |c| c.tenant == name)?;
            tx.record_change(ChangeOp::TenantDeleted, name, "", "");
            Ok((receipt, redaction))
        })
    }
}
