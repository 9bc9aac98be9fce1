//! Transaction ids stored once in one arena, referred to by a 4-byte index.
//!
//! Compaction memory grows with the number of transactions, so each one costs its id's bytes
//! plus 10 to 15 bytes (4 for its end; a 4-byte table slot and its control byte at a table
//! load of 45-87%): no per-id heap allocation, no `String` headers.

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Index of an interned transaction id; dense from 0 in order of first appearance.
pub type TxIdx = u32;

/// Interned ids without their lookup table: what a finished pass keeps (the table is
/// about half of the interner's memory).
#[derive(Default)]
pub struct Ids {
    /// End offset in `arena` of each id; id `i` spans `ends[i-1]..ends[i]`.
    ends: Vec<u32>,
    /// Concatenated ids; only whole decoded strings are appended, so every span is UTF-8.
    arena: Vec<u8>,
}

impl Ids {
    /// The id behind an index.
    pub fn get(&self, idx: TxIdx) -> &str {
        std::str::from_utf8(self.get_bytes(idx)).expect("ids are decoded JSON strings")
    }

    /// The bytes of the id behind an index (valid UTF-8; no check).
    pub fn get_bytes(&self, idx: TxIdx) -> &[u8] {
        let i = idx as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    /// Number of distinct ids.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True before the first id.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// An append-only set of transaction ids.
#[derive(Default)]
pub struct Interner {
    /// Indexes only, 4 bytes a slot: when the table grows, hashes are recomputed from the
    /// ids, and hashbrown's control bytes already reject most failed probes.
    table: HashTable<TxIdx>,
    ids: Ids,
    hasher: DefaultHashBuilder,
}

impl Interner {
    /// [`Interner::intern_hashed`], hashing `id` here: the passes hash ids while decoding
    /// (on decoding threads in parallel), so only tests intern this way.
    #[cfg(test)]
    pub fn intern(&mut self, id: &[u8]) -> Option<TxIdx> {
        let hash = hash_id(&self.hasher, id);
        self.intern_hashed(id, hash)
    }

    /// An interner with room for `n` ids: when the count is known (verification), the table
    /// never grows, and growing re-reads every id.
    pub fn with_capacity(n: usize) -> Interner {
        Interner {
            table: HashTable::with_capacity(n),
            ids: Ids {
                ends: Vec::with_capacity(n),
                arena: Vec::new(),
            },
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// The hasher [`Interner::intern_hashed`] expects hashes from (through [`hash_id`]), so
    /// other threads can hash ids ahead of interning.
    pub fn hasher(&self) -> DefaultHashBuilder {
        self.hasher
    }

    /// The index of `bytes` (a decoded JSON string's bytes, so valid UTF-8), adding it if
    /// new; `hash` must be `hash_id(&self.hasher(), bytes)`, computed by the caller (on a
    /// decoding thread in the parallel pass). Returns `None` past `u32::MAX` ids or 4 GiB of
    /// id bytes.
    pub fn intern_hashed(&mut self, bytes: &[u8], hash: u64) -> Option<TxIdx> {
        let Interner { table, ids, hasher } = self;
        if let Some(&i) = table.find(hash, |&i| ids.get_bytes(i) == bytes) {
            return Some(i);
        }
        let idx = TxIdx::try_from(ids.len()).ok()?;
        let end = u32::try_from(ids.arena.len() + bytes.len()).ok()?;
        ids.arena.extend_from_slice(bytes);
        ids.ends.push(end);
        table.insert_unique(hash, idx, |&i| hash_id(hasher, ids.get_bytes(i)));
        Some(idx)
    }

    /// The ids so far, by index.
    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// Ends interning: frees the lookup table and keeps the ids.
    pub fn into_ids(self) -> Ids {
        self.ids
    }
}

/// The hash the interner files an id under.
pub fn hash_id(hasher: &DefaultHashBuilder, id: &[u8]) -> u64 {
    hasher.hash_one(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_same_index_and_round_trips() {
        let mut i = Interner::default();
        let a = i.intern(b"tx_1").unwrap();
        let b = i.intern(b"tx_2").unwrap();
        let e = i.intern(b"").unwrap();
        assert_eq!(i.intern(b"tx_1"), Some(a));
        assert_eq!((a, b, e), (0, 1, 2));
        assert_eq!(
            (i.ids().get(a), i.ids().get(b), i.ids().get(e)),
            ("tx_1", "tx_2", "")
        );
        assert_eq!(i.ids().len(), 3);
    }

    #[test]
    fn many_ids_survive_table_growth() {
        let mut i = Interner::default();
        for n in 0..10_000 {
            assert_eq!(i.intern(format!("t{n}").as_bytes()), Some(n));
        }
        let h = i.hasher();
        for n in 0..10_000 {
            assert_eq!(i.ids().get(n), format!("t{n}"));
            let id = format!("t{n}");
            assert_eq!(
                i.intern_hashed(id.as_bytes(), hash_id(&h, id.as_bytes())),
                Some(n)
            );
            assert_eq!(i.intern(format!("t{n}").as_bytes()), Some(n));
        }
    }
}
