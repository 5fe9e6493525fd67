//! The changefeed core (see the changefeed issue): for now the hub the write path publishes to.

use crate::db::write::Committed;
use crate::db::TableState;
use std::sync::Arc;

/// Receives every committed change, in commit order, from the write path.
#[derive(Default)]
pub(crate) struct Hub {}

impl Hub {
    pub(crate) fn publish(&self, _table: &Arc<TableState>, _changes: &[Committed]) {}
    pub(crate) fn abort_table(&self, _table: &str, _why: &str) {}
    pub(crate) fn abort_index(&self, _table: &str, _index: &str, _why: &str) {}
    pub(crate) fn abort_all(&self, _why: &str) {}
    pub(crate) fn feed_count(&self, _table: Option<&str>) -> usize {
        0
    }
}
