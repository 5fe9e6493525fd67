//! Atomic multi-key batches without sled transactions.
//!
//! A sled transaction (or batch) rolls the log buffer and hands it to sled's I/O thread pool,
//! waking every thread of the pool: it costs tens of microseconds. A single-key write does
//! not. So a batch is made atomic with an intent record instead:
//!
//! 1. the whole batch is written as one value under a fresh key of the journal tree (one
//!    single-key write: atomic);
//! 2. its writes are applied one by one;
//! 3. the journal entry is removed.
//!
//! sled recovers a prefix of its log. A crash before step 1 completes leaves none of the
//! batch; a crash after it leaves the journal entry, and opening the database applies the
//! entry again (its writes set final values, so applying them twice is harmless) before
//! anything reads. Commits are serialised, so the entry left is always the last batch:
//! nothing written after it can be in the recovered prefix.

use crate::{Error, Result};

/// One write of a batch: tree name, key, new value (`None`: remove).
pub(crate) type Op<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// Encodes a batch as a journal entry.
pub(crate) fn encode<'a>(ops: impl ExactSizeIterator<Item = Op<'a>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&(ops.len() as u32).to_be_bytes());
    for (tree, key, value) in ops {
        put(&mut out, tree.as_bytes());
        put(&mut out, key);
        match value {
            Some(v) => {
                out.push(1);
                put(&mut out, v);
            }
            None => out.push(0),
        }
    }
    out
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A decoded journal entry: (tree, key, value) writes.
pub(crate) type Decoded = Vec<(String, Vec<u8>, Option<Vec<u8>>)>;

/// Decodes a journal entry written by [`encode`].
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded> {
    let corrupt = || Error::storage("corrupt journal entry");
    let mut pos = 0;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = bytes.get(pos..pos + n).ok_or_else(corrupt)?;
        pos += n;
        Ok(s)
    };
    let len = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])) as usize;
    let n = len(take(4)?);
    let mut ops = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let l = len(take(4)?);
        let tree = String::from_utf8(take(l)?.to_vec()).map_err(|_| corrupt())?;
        let l = len(take(4)?);
        let key = take(l)?.to_vec();
        let value = match take(1)?[0] {
            0 => None,
            1 => {
                let l = len(take(4)?);
                Some(take(l)?.to_vec())
            }
            _ => return Err(corrupt()),
        };
        ops.push((tree, key, value));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ops: Vec<Op> = vec![
            ("t/a", b"k1", Some(b"v1")),
            ("i/a/x", b"k2", None),
            ("t/a", b"", Some(b"")),
        ];
        let bytes = encode(ops.iter().copied());
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(
            back[0],
            ("t/a".to_string(), b"k1".to_vec(), Some(b"v1".to_vec()))
        );
        assert_eq!(back[1], ("i/a/x".to_string(), b"k2".to_vec(), None));
        assert_eq!(back[2], ("t/a".to_string(), Vec::new(), Some(Vec::new())));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
