//! JSON values: their total order, their order-preserving byte encoding, and field paths.

mod encoding;
mod order;
mod path;

pub use encoding::{decode_value, encode_key, encode_value, encode_value_into};
pub use order::{compare, type_rank};
pub use path::FieldPath;
