//! Shared models for the end-to-end tests of the model layer.
