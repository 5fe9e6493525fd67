//! Attributes → checked model, as serde_derive does it: [`attr`] parses what was written,
//! [`check`] applies the rules and builds the [`ast::Model`] that code generation reads.

pub mod ast;
pub mod attr;
pub mod check;
