//! The hub is the database's change sink: the one way committed changes reach feeds.

use super::Hub;
use crate::db::write::Committed;
use crate::db::{ChangeSink, TableState};
use std::any::Any;
use std::sync::Arc;
use std::task::Waker;

impl ChangeSink for Hub {
    fn is_idle(&self) -> bool {
        Hub::is_idle(self)
    }

    fn publish(&self, committed: &[(Arc<TableState>, Vec<Committed>)], wakes: &mut Vec<Waker>) {
        Hub::publish(self, committed, wakes);
    }

    fn remember(&self, committed: &[(Arc<TableState>, Vec<Committed>)]) {
        Hub::remember(self, committed);
    }

    fn table_dropped(&self, table: &str, why: &str) {
        self.abort_table(table, why);
    }

    fn index_dropped(&self, table: &str, index: &str, why: &str) {
        self.abort_index(table, index, why);
    }

    fn closed(&self, why: &str) {
        self.abort_all(why);
    }

    fn open_feeds(&self, table: Option<&str>) -> usize {
        self.feed_count(table)
    }

    fn open_groups(&self, table: Option<&str>) -> usize {
        self.group_count(table)
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}
