//! A bounded least-recently-used map from a file's identity to its digests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::engine::Digest;

/// What identifies one version of one file, from `fstat` of the opened
/// file. `ctime` is included beyond the (device, inode, size, mtime) the
/// design asks for: `mtime` can be set back by anyone who can write the
/// file (`touch -r`), `ctime` cannot, so a same-size rewrite with a
/// forged `mtime` (or a reused inode) still misses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    /// Seconds and nanoseconds, as `fstat` gives them.
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
}

/// The LRU. Each use stamps the entry with a fresh sequence number; the
/// `order` map finds the oldest stamp in `O(log n)`.
#[derive(Debug)]
pub(crate) struct Lru {
    capacity: usize,
    next_stamp: u64,
    entries: HashMap<FileKey, (Arc<[Digest]>, u64)>,
    order: BTreeMap<u64, FileKey>,
}

impl Lru {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            next_stamp: 0,
            // Grows on demand: a large capacity costs nothing until used.
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// The digests for `key`, marking it most recently used.
    pub(crate) fn get(&mut self, key: &FileKey) -> Option<Arc<[Digest]>> {
        let stamp = self.stamp();
        let (digests, old) = self.entries.get_mut(key)?;
        self.order.remove(old);
        *old = stamp;
        self.order.insert(stamp, *key);
        Some(Arc::clone(digests))
    }

    /// Stores `digests` under `key`; returns how many entries were evicted
    /// to make room (0 or 1; 0 as well when the cache is off).
    pub(crate) fn insert(&mut self, key: FileKey, digests: Arc<[Digest]>) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        let stamp = self.stamp();
        if let Some((_, old)) = self.entries.insert(key, (digests, stamp)) {
            self.order.remove(&old);
            self.order.insert(stamp, key);
            return 0;
        }
        self.order.insert(stamp, key);
        let mut evicted = 0;
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            evicted += 1;
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use collector_core::HashAlgorithm;

    use super::*;

    fn key(ino: u64) -> FileKey {
        FileKey {
            dev: 1,
            ino,
            size: 10,
            mtime: (5, 6),
            ctime: (7, 8),
        }
    }

    fn digests(tag: &str) -> Arc<[Digest]> {
        Arc::from(vec![Digest {
            algorithm: HashAlgorithm::Sha256,
            hex: tag.into(),
        }])
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut lru = Lru::new(2);
        assert_eq!(lru.insert(key(1), digests("a")), 0);
        assert_eq!(lru.insert(key(2), digests("b")), 0);
        assert!(lru.get(&key(1)).is_some()); // 2 is now the oldest
        assert_eq!(lru.insert(key(3), digests("c")), 1);
        assert!(lru.get(&key(2)).is_none());
        assert_eq!(&*lru.get(&key(1)).unwrap()[0].hex, "a");
        assert_eq!(&*lru.get(&key(3)).unwrap()[0].hex, "c");
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.order.len(), 2);
    }

    #[test]
    fn reinsert_replaces_without_evicting() {
        let mut lru = Lru::new(1);
        assert_eq!(lru.insert(key(1), digests("a")), 0);
        assert_eq!(lru.insert(key(1), digests("b")), 0);
        assert_eq!(&*lru.get(&key(1)).unwrap()[0].hex, "b");
        assert_eq!((lru.len(), lru.order.len()), (1, 1));
    }

    #[test]
    fn any_identity_field_changes_the_key() {
        let mut lru = Lru::new(8);
        lru.insert(key(1), digests("a"));
        let with = |change: fn(&mut FileKey)| {
            let mut k = key(1);
            change(&mut k);
            k
        };
        let variants = [
            with(|k| k.dev = 2),
            with(|k| k.size = 11),
            with(|k| k.mtime.0 = 0),
            with(|k| k.mtime.1 = 0),
            with(|k| k.ctime.0 = 0),
            with(|k| k.ctime.1 = 0),
        ];
        for k in variants {
            assert!(lru.get(&k).is_none(), "{k:?}");
        }
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut lru = Lru::new(0);
        assert_eq!(lru.insert(key(1), digests("a")), 0);
        assert!(lru.get(&key(1)).is_none());
        assert_eq!(lru.len(), 0);
    }
}
