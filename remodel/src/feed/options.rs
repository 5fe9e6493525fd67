//! Feed options: what `include_*`, `squash` and `queue_size` mean, and their JSON form.

use crate::{Error, Result};
use serde_json::Value;
use std::time::Duration;

/// The longest wait a squash window is given: about 30 years, as far as a timer is set
/// into the future. Any longer window (RethinkDB takes any non-negative number of seconds)
/// means the same in practice: a batch is handed over early (the first one, or a queue more
/// than half full), never because its time came. Capping also keeps the clock arithmetic
/// from overflowing.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// How a feed squashes changes.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[non_exhaustive]
pub enum Squash {
    /// Every change is delivered (the default).
    #[default]
    Off,
    /// Changes that pile up while the consumer is not reading are merged per row.
    Merge,
    /// Like `Merge`, and a batch is handed over at most this many seconds after its first
    /// change arrived (the first batch is not delayed; a queue more than half full is handed
    /// over early). Any finite non-negative number of seconds; a window longer than about
    /// 30 years waits as long as one of 30 years.
    Window(f64),
}

/// The options of a changefeed. They can also be read from RethinkDB-style JSON
/// (`{"include_initial": true, "squash": 0.05, "queue_size": 1000}`) with
/// [`FeedOptions::from_json`].
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct FeedOptions {
    /// First deliver the current result as `initial` items.
    pub include_initial: bool,
    /// Deliver `initializing` / `ready` state items.
    pub include_states: bool,
    /// Include `type` in [`crate::Change::to_json`].
    pub include_types: bool,
    /// Deliver `old_offset` / `new_offset` (top-N feeds only).
    pub include_offsets: bool,
    /// Squash changes (see [`Squash`]).
    pub squash: Squash,
    /// The feed's buffer (default: the database's `feed_queue_size`, 100,000).
    pub queue_size: Option<usize>,
}

impl FeedOptions {
    /// Reads options from JSON, rejecting unknown options and values of the wrong type
    /// (for example a negative or non-number `squash`).
    ///
    /// ```
    /// use remodel::feed::{FeedOptions, Squash};
    /// use serde_json::json;
    /// let o = FeedOptions::from_json(&json!({"squash": 0.5, "include_initial": true})).unwrap();
    /// assert_eq!(o.squash, Squash::Window(0.5));
    /// assert!(FeedOptions::from_json(&json!({"squash": -1})).is_err());
    /// assert!(FeedOptions::from_json(&json!({"squash": "soon"})).is_err());
    /// ```
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| {
            Error::feed_option(format!("feed options must be an object, got {v}"))
        })?;
        let mut o = FeedOptions::default();
        for (k, v) in obj {
            let flag = || {
                v.as_bool().ok_or_else(|| {
                    Error::feed_option(format!("feed option `{k}` must be a boolean, got {v}"))
                })
            };
            match k.as_str() {
                "include_initial" => o.include_initial = flag()?,
                "include_states" => o.include_states = flag()?,
                "include_types" => o.include_types = flag()?,
                "include_offsets" => o.include_offsets = flag()?,
                "squash" => {
                    o.squash = match v {
                        Value::Bool(true) => Squash::Merge,
                        Value::Bool(false) => Squash::Off,
                        Value::Number(n) => Squash::Window(n.as_f64().unwrap_or(-1.0)),
                        other => {
                            return Err(Error::feed_option(format!(
                                "squash must be true, false or a number of seconds, got {other}"
                            )))
                        }
                    }
                }
                "queue_size" => {
                    o.queue_size = Some(v.as_u64().ok_or_else(|| {
                        Error::feed_option(format!(
                            "queue_size must be a positive integer, got {v}"
                        ))
                    })? as usize)
                }
                other => return Err(Error::feed_option(format!("unknown feed option `{other}`"))),
            }
        }
        o.validate()?;
        Ok(o)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Squash::Window(s) = self.squash {
            if !(s.is_finite() && s >= 0.0) {
                return Err(Error::feed_option(format!(
                    "squash must be a finite non-negative number of seconds, got {s}"
                )));
            }
        }
        if self.queue_size == Some(0) {
            return Err(Error::feed_option("queue_size must be at least 1"));
        }
        Ok(())
    }

    /// The squash window as a wait (`None`: no window, or a zero one), capped at
    /// [`FAR_FUTURE`]. Call after [`FeedOptions::validate`] (a negative or non-finite
    /// window gives `None` here, never a panic).
    pub(crate) fn window(&self) -> Option<Duration> {
        match self.squash {
            Squash::Window(s) if s > 0.0 && s.is_finite() => Some(
                Duration::try_from_secs_f64(s)
                    .unwrap_or(FAR_FUTURE)
                    .min(FAR_FUTURE),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_finite_non_negative_window_is_a_wait_that_cannot_overflow() {
        for s in [0.05, 86_400.0 * 2.0, 1e6, 1e12, 1e18, 1e19, f64::MAX] {
            let o = FeedOptions {
                squash: Squash::Window(s),
                ..FeedOptions::default()
            };
            o.validate().unwrap();
            let w = o.window().unwrap();
            assert!(w <= FAR_FUTURE && w > Duration::ZERO, "{s}: {w:?}");
            // The deadline a feed computes from it.
            assert!(std::time::Instant::now().checked_add(w).is_some(), "{s}");
        }
        for s in [0.0, -0.0] {
            let o = FeedOptions {
                squash: Squash::Window(s),
                ..FeedOptions::default()
            };
            o.validate().unwrap();
            assert_eq!(o.window(), None);
        }
        for s in [-1.0, -1e-300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let o = FeedOptions {
                squash: Squash::Window(s),
                ..FeedOptions::default()
            };
            assert!(
                matches!(o.validate(), Err(Error::InvalidFeedOption(_))),
                "{s}"
            );
            assert_eq!(o.window(), None);
        }
    }
}
