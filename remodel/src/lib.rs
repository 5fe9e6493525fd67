//! # Remodel
//!
//! An embedded document store on [`sled`] whose queries can be turned into live feeds.
//!
//! - [`Database`]: open a database (or a temporary one), create tables and indexes.
//! - [`Table`] and [`Query`]: reads and writes in the spirit of RethinkDB's ReQL: `get`,
//!   `get_all`, `between`, `filter`, `order_by`, `limit`, `pluck`, `count`, `group`,
//!   `eq_join`, `insert`, `update`, `delete`.
//! - [`value`]: the total order of JSON values and its order-preserving key encoding.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use remodel::{Database, IndexSpec, Order};
//! use serde_json::json;
//!
//! let db = Database::temporary().await?;
//! db.create_table("players").await?;
//! let players = db.table("players");
//! players.create_index("score", IndexSpec::field("score")).await?;
//! players.insert_many(vec![
//!     json!({"id": "ana", "score": 30}),
//!     json!({"id": "bo", "score": 70}),
//!     json!({"id": "cy", "score": 50}),
//! ]).await?;
//! let top2 = players.order_by(Order::index("score").desc()).limit(2).run().await?;
//! assert_eq!(top2[0]["id"], "bo");
//! assert_eq!(top2[1]["id"], "cy");
//! # Ok::<(), remodel::Error>(())
//! # }).unwrap();
//! ```

#![warn(missing_docs)]

mod db;
mod error;
pub mod feed;
pub mod model;
#[cfg(feature = "postgres")]
pub mod postgres;
mod query;
mod storage;
pub mod value;

#[cfg(test)]
mod layers;

pub use db::{
    ChangeLogRetention, ChangePair, Config, Conflict, Database, Durability, IndexSpec, IndexStatus,
    Patch, WriteResult, MAX_MULTI_ELEMENTS,
};
pub use error::{Error, ModelError, Result, Source};
pub use feed::{Change, ChangeKind, Changes, Cursor, Feed, FeedOptions, FeedState, Squash};
pub use model::Model;
pub use query::{
    asc, desc, field, has_fields, Aggregate, AggregateOutput, Batch, Field, Get, Group, Grouped,
    Insert, Join, Order, PointQuery, Predicate, Query, ReferenceAction, References, Table, Write,
};
/// `#[derive(Model)]`: see [`model`] and the `remodel-derive` crate.
pub use remodel_derive::Model;

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}

/// Re-exported so that callers can build documents with `json!` without another dependency.
pub use serde_json::{json, Value};
