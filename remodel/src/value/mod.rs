//! JSON values: their total order ([`compare`]), the depth limit, and field paths.
//!
//! The order-preserving byte encoding of values and keys is how indexes are stored; it is
//! exported for tests and tools (it is hidden from the docs) and is **not** part of the
//! stable API: it may change with the storage format.

mod depth;
mod encoding;
mod order;
mod path;

pub(crate) use depth::{admit, deeper_than, too_deep};
pub use depth::{check_depth, drop_deep, MAX_DEPTH};
#[doc(hidden)]
pub use encoding::{decode_value, encode_key, encode_value, encode_value_into, MAX_KEY_BYTES};
pub use order::{compare, type_rank};
pub(crate) use order::{identical, identical_rows};
pub use path::FieldPath;
