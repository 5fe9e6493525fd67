//! The model layer's errors, carried by [`crate::Error::Model`].

use super::Schema;
use crate::Error;
use serde_json::Value;

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        Error::Model(crate::Source::new(e))
    }
}

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
            Error::Model(e) => e.get().downcast_ref::<ModelError>(),
            _ => None,
        }
    }
}

/// What can go wrong in the model layer (as [`crate::Error::Model`]).
///
/// ```
/// use remodel::model::ModelError;
/// use remodel::Error;
/// let e: Error = ModelError::Rejected("names are required".into()).into();
/// assert!(matches!(e.as_model(), Some(ModelError::Rejected(_))));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A stored document does not fit the model's struct.
    #[error("document {key} of table `{table}` does not fit the model: field `{field}`: {reason}")]
    Decode {
        /// The table read from.
        table: String,
        /// The document's primary key (`null` when it has none).
        key: Value,
        /// The field that does not fit (a dotted path for nested fields).
        field: String,
        /// What serde said.
        reason: String,
    },
    /// A relation (or an update, delete or feed) needs a saved model, one with a key.
    #[error("this {model} is not saved (it has no key yet): save it before `{operation}`")]
    NotSaved {
        /// The model's type name.
        model: String,
        /// What was asked for (a relation accessor or a method).
        operation: String,
    },
    /// The model's row is not in its table (deleted since the model was read).
    #[error("{model} {key} is not in table `{table}` (deleted since it was read?)")]
    Missing {
        /// The model's type name.
        model: String,
        /// The table.
        table: String,
        /// The key.
        key: Value,
    },
    /// A belongs_to relation's foreign key is empty, so there is no owner to watch.
    #[error("this {model} has no `{relation}` (its `{foreign_key}` is empty)")]
    NoOwner {
        /// The model's type name.
        model: String,
        /// The relation's accessor.
        relation: String,
        /// The empty foreign key field.
        foreign_key: String,
    },
    /// A relation names a model that is not part of the schema being created.
    #[error(
        "`{referenced_by}.{relation}` relates to `{model}`, which is not in the schema: add it \
         (derive Model on it, or list it in the SchemaSet)"
    )]
    Unregistered {
        /// The missing model.
        model: String,
        /// The model whose relation names it.
        referenced_by: String,
        /// The relation's accessor.
        relation: String,
    },
    /// A hook refused the operation (return this from a `before_` hook); nothing was written.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Anything else the model layer refuses, with the reason.
    #[error("{0}")]
    Invalid(String),
}

impl ModelError {
    pub(crate) fn missing(schema: &Schema, key: Value) -> Self {
        ModelError::Missing {
            model: schema.model.to_string(),
            table: schema.table.to_string(),
            key,
        }
    }

    pub(crate) fn not_saved(schema: &Schema, operation: &str) -> Self {
        ModelError::NotSaved {
            model: schema.model.to_string(),
            operation: operation.to_string(),
        }
    }
}
