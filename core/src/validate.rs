//! Input checks. Each returns a [`ValidationError`] naming the offending field; nothing is
//! written when one fails.

use crate::limits;
use crate::model::{JsonMap, Metric};
use thiserror::Error;

/// Bad input: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { field: field.into(), message: message.into() }
    }
}

type Result<T = ()> = std::result::Result<T, ValidationError>;

/// Ids are 1 to [`limits::MAX_ID_BYTES`] bytes of `A-Z a-z 0-9 - _ . : @ + =`, so that
/// they are safe in URLs, file names and logs as they are.
pub fn id(field: &str, value: &str) -> Result {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > limits::MAX_ID_BYTES {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes; the limit is {}", value.len(), limits::MAX_ID_BYTES),
        ));
    }
    if let Some(c) =
        value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+' | '=')))
    {
        return Err(ValidationError::new(field, format!("contains {c:?}; allowed are A-Z a-z 0-9 and - _ . : @ + =")));
    }
    if value == "." || value == ".." {
        // URL path resolution would turn them into another path.
        return Err(ValidationError::new(field, "must not be \".\" or \"..\""));
    }
    Ok(())
}

/// A byte length against a limit.
pub fn len(field: &str, actual: usize, limit: usize) -> Result {
    if actual > limit {
        return Err(ValidationError::new(field, format!("is {actual} bytes; the limit is {limit}")));
    }
    Ok(())
}

/// Serialized size of a JSON value, checked against `limit`; returns the JSON text.
pub fn json(field: &str, value: &serde_json::Value, limit: usize) -> Result<String> {
    let text =
        serde_json::to_string(value).map_err(|e| ValidationError::new(field, format!("is not serializable: {e}")))?;
    len(field, text.len(), limit)?;
    Ok(text)
}

/// A metadata object: size and key count limits; returns its JSON text ("" when empty).
pub fn metadata(field: &str, value: &JsonMap) -> Result<String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    if value.len() > limits::MAX_METADATA_KEYS {
        return Err(ValidationError::new(
            field,
            format!("has {} keys; the limit is {}", value.len(), limits::MAX_METADATA_KEYS),
        ));
    }
    let text =
        serde_json::to_string(value).map_err(|e| ValidationError::new(field, format!("is not serializable: {e}")))?;
    len(field, text.len(), limits::MAX_METADATA_BYTES)?;
    Ok(text)
}

/// A vector: non-empty, at most [`limits::MAX_VECTOR_DIM`], finite, of the tenant's
/// dimension when one is fixed, and not all zeros under cosine.
pub fn vector(field: &str, v: &[f32], expected_dim: Option<u32>, metric: Metric) -> Result {
    if v.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if v.len() > limits::MAX_VECTOR_DIM {
        return Err(ValidationError::new(
            field,
            format!("has dimension {}; the limit is {}", v.len(), limits::MAX_VECTOR_DIM),
        ));
    }
    if let Some(dim) = expected_dim
        && v.len() != dim as usize
    {
        return Err(ValidationError::new(field, format!("has dimension {}; the tenant's dimension is {dim}", v.len())));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(ValidationError::new(format!("{field}[{i}]"), format!("is {}; vectors must be finite", v[i])));
    }
    if !v.iter().map(|x| x * x).sum::<f32>().is_finite() {
        return Err(ValidationError::new(field, "is too large: its squared length overflows 32-bit floats"));
    }
    if metric == Metric::Cosine && v.iter().all(|x| *x == 0.0) {
        return Err(ValidationError::new(field, "is all zeros; cosine needs a non-zero vector"));
    }
    Ok(())
}

/// A page size: 1 to [`limits::MAX_PAGE_LIMIT`].
pub fn page_limit(field: &str, limit: usize) -> Result {
    if limit == 0 || limit > limits::MAX_PAGE_LIMIT {
        return Err(ValidationError::new(
            field,
            format!("is {limit}; it must be between 1 and {}", limits::MAX_PAGE_LIMIT),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(id("identity", "user-42@example.com").is_ok());
        assert_eq!(id("identity", "").map_err(|e| e.field), Err("identity".to_string()));
        assert!(id("session", "a b").is_err());
        assert!(id("session", "a/b").is_err());
        assert!(id("session", ".").is_err());
        assert!(id("session", "..").is_err());
        assert!(id("session", "...").is_ok());
        assert!(id("session", &"x".repeat(limits::MAX_ID_BYTES)).is_ok());
        assert!(id("session", &"x".repeat(limits::MAX_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn vectors() {
        assert!(vector("embedding", &[1.0, 0.0], Some(2), Metric::Cosine).is_ok());
        assert!(vector("embedding", &[1.0], Some(2), Metric::Cosine).is_err());
        let nan = vector("embedding", &[1.0, f32::NAN], None, Metric::Dot);
        assert_eq!(nan.map_err(|e| e.field), Err("embedding[1]".to_string()));
        assert!(vector("embedding", &[f32::INFINITY], None, Metric::L2).is_err());
        assert!(vector("embedding", &[0.0, 0.0], None, Metric::Cosine).is_err());
        assert!(vector("embedding", &[0.0, 0.0], None, Metric::L2).is_ok());
        assert!(vector("embedding", &[], None, Metric::L2).is_err());
    }
}
