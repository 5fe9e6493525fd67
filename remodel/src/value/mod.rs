//! JSON values: their total order, their order-preserving byte encoding, and field paths.

mod depth;
mod encoding;
mod order;
mod path;

pub(crate) use depth::{admit, deeper_than, too_deep};
pub use depth::{check_depth, drop_deep, MAX_DEPTH};
pub use encoding::{decode_value, encode_key, encode_value, encode_value_into};
pub use order::{compare, type_rank};
pub use path::FieldPath;
