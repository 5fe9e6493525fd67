//! Constructors of the model layer's errors ([`crate::ModelError`], carried by
//! [`crate::Error::Model`]).

use super::Schema;
use crate::Error;
use serde_json::Value;

pub use crate::error::ModelError;

impl Error {
    /// The model-layer error inside, if this is one ([`Error::Model`]).
    ///
    /// ```
    /// use remodel::model::ModelError;
    /// let e: remodel::Error = ModelError::Invalid("no".into()).into();
    /// assert_eq!(e.as_model(), Some(&ModelError::Invalid("no".into())));
    /// ```
    pub fn as_model(&self) -> Option<&ModelError> {
        match self {
            Error::Model(e) => Some(e),
            _ => None,
        }
    }
}

impl ModelError {
    pub(crate) fn missing(schema: &Schema, key: Value) -> Self {
        ModelError::NotFound {
            model: schema.model.to_string(),
            table: schema.table.to_string(),
            key: Box::new(key),
        }
    }

    pub(crate) fn not_saved(schema: &Schema, operation: &str) -> Self {
        ModelError::NotSaved {
            model: schema.model.to_string(),
            operation: operation.to_string(),
        }
    }
}
