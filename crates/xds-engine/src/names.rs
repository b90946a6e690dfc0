//! Subscribed resource names: one set per subscription, shared by every stream of a server
//! that subscribes to the same names ([`NameSets`]), and laid end to end for the SotW ACK
//! check ([`FlatNames`]).

use std::sync::Arc;

use parking_lot::Mutex;

/// A subscription's names. Streams that subscribe to the same names (every Envoy of a fleet
/// asks for the same EDS clusters) share one set.
pub type NameSet = Arc<Names>;

/// The names of a subscription, in order, and (made on first use, for the SotW ACK check)
/// laid end to end in one buffer: comparing an ACK's names with them reads one small block of
/// memory instead of following a pointer per name. Reads as the set it holds.
#[derive(Default)]
pub struct Names {
    set: std::collections::BTreeSet<Arc<str>>,
    flat: std::sync::OnceLock<Option<FlatNames>>,
}

/// The names of a set end to end, in the set's order.
pub(crate) struct FlatNames {
    bytes: Box<[u8]>,
    /// Where each name ends in `bytes`.
    ends: Box<[u32]>,
}

impl FlatNames {
    /// The `i`-th name's bytes.
    pub(crate) fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => *self.ends.get(i - 1)? as usize,
        };
        self.bytes.get(start..end)
    }
}

impl Names {
    /// Names from a set.
    pub(crate) fn new(set: std::collections::BTreeSet<Arc<str>>) -> Names {
        Names {
            set,
            flat: std::sync::OnceLock::new(),
        }
    }

    /// The set of names.
    pub(crate) fn into_set(self) -> std::collections::BTreeSet<Arc<str>> {
        self.set
    }

    /// The names end to end (`None` past 4 GiB of names, which no request can carry).
    pub(crate) fn flat(&self) -> Option<&FlatNames> {
        self.flat
            .get_or_init(|| {
                let mut bytes = Vec::new();
                let mut ends = Vec::with_capacity(self.set.len());
                for n in &self.set {
                    bytes.extend_from_slice(n.as_bytes());
                    ends.push(u32::try_from(bytes.len()).ok()?);
                }
                Some(FlatNames {
                    bytes: bytes.into_boxed_slice(),
                    ends: ends.into_boxed_slice(),
                })
            })
            .as_ref()
    }
}

impl std::ops::Deref for Names {
    type Target = std::collections::BTreeSet<Arc<str>>;
    fn deref(&self) -> &Self::Target {
        &self.set
    }
}

impl PartialEq for Names {
    fn eq(&self, other: &Names) -> bool {
        self.set == other.set
    }
}

impl PartialEq<std::collections::BTreeSet<Arc<str>>> for Names {
    fn eq(&self, other: &std::collections::BTreeSet<Arc<str>>) -> bool {
        self.set == *other
    }
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.set.fmt(f)
    }
}

/// The name sets the streams of one server share, by a hash of their content. Entries are
/// weak: a set lives as long as some stream holds it. One per server, handed to each stream's
/// state machine when it starts; the lock is held only while a set is looked up.
#[derive(Default)]
pub struct NameSets {
    inner: Mutex<SetsByHash>,
}

#[derive(Default)]
struct SetsByHash {
    by_hash: std::collections::HashMap<u64, Vec<std::sync::Weak<Names>>>,
    inserts: usize,
}

impl std::fmt::Debug for NameSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameSets").finish_non_exhaustive()
    }
}

impl NameSets {
    /// The shared copy of `set` (the one another stream already holds, or `set` itself).
    pub fn share(&self, set: std::collections::BTreeSet<Arc<str>>) -> NameSet {
        use std::hash::{Hash, Hasher};
        if set.is_empty() {
            return Arc::new(Names::new(set));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for n in &set {
            n.hash(&mut h);
        }
        let key = h.finish();
        let mut sets = self.inner.lock();
        let bucket = sets.by_hash.entry(key).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        if let Some(shared) = bucket.iter().filter_map(|w| w.upgrade()).find(|s| **s == set) {
            return shared;
        }
        let shared = Arc::new(Names::new(set));
        bucket.push(Arc::downgrade(&shared));
        sets.inserts += 1;
        if sets.inserts.is_multiple_of(1024) {
            sets.by_hash.retain(|_, b| {
                b.retain(|w| w.strong_count() > 0);
                !b.is_empty()
            });
        }
        shared
    }
}
