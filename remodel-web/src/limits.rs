//! What one connection may cost the server.

use std::time::Duration;

/// Limits that protect the server from any one connection. Every refusal they cause is a
/// typed message to that client ([`crate::ErrorCode`]).
///
/// ```
/// use remodel_web::Limits;
/// use std::time::Duration;
/// let limits = Limits {
///     subscriptions: 50,
///     ..Limits::default()
/// };
/// assert_eq!(limits.idle_timeout, Duration::from_secs(30));
/// ```
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest frame (and message) a client may send, in bytes (default 64 KiB). A larger
    /// one closes the connection with [`crate::ErrorCode::FrameTooLarge`].
    pub max_frame_bytes: usize,
    /// Open subscriptions per connection (default 100).
    pub subscriptions: usize,
    /// Method calls per second per connection, with bursts of as many (default 20).
    pub calls_per_second: u32,
    /// Subscriptions opened per second per connection (default 50), with bursts of as many
    /// or of [`Limits::subscriptions`], whichever is more (a page that reconnects opens all
    /// its subscriptions again at once): each runs its publication and reads its whole
    /// result, so churning through them (subscribe, unsubscribe, again) costs as much as
    /// holding many.
    pub subscribes_per_second: u32,
    /// A connection from which nothing came for this long is closed (default 30 s; the
    /// JavaScript client pings at a third of it).
    pub idle_timeout: Duration,
    /// A client that takes longer than this to accept a batch of frames is disconnected
    /// (default 10 s). Until then a client that does not read holds at most a queue of frames
    /// (1 MiB) and one initial result being read, never a growing backlog.
    pub write_timeout: Duration,
    /// The most changes a subscription's feed holds for a client that does not keep up
    /// (default 1,024). Beyond it, the subscription resynchronises: the client gets the whole
    /// current result again once it reads. Writers never wait for a client.
    pub feed_queue: usize,
    /// The most changes a subscription resumed from a client's cursor reads from the change
    /// log, for its feed and for each of its guards (default 10,000, counted over every table:
    /// see `remodel::Changes::replay_at_most`): further behind, the client gets the whole
    /// current result again instead (a replay reads that stretch of the change log, a reset
    /// reads the result once).
    pub resume_changes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            subscriptions: 100,
            calls_per_second: 20,
            subscribes_per_second: 50,
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            feed_queue: 1024,
            resume_changes: 10_000,
        }
    }
}
