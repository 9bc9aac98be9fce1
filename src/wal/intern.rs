//! Transaction ids stored once in one arena, referred to by a 4-byte index.
//!
//! Compaction memory grows with the number of transactions, so each one costs its id's bytes
//! plus a few words: no per-id heap allocation, no `String` headers.

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Index of an interned transaction id; dense from 0 in order of first appearance.
pub type TxIdx = u32;

/// An append-only set of transaction ids.
#[derive(Default)]
pub struct Interner {
    /// (index, 32 bits of the id's hash): keeping the hash means growing the table never
    /// re-reads ids, and most failed probes are rejected without comparing bytes.
    table: HashTable<(TxIdx, u32)>,
    /// End offset in `arena` of each id; id `i` spans `ends[i-1]..ends[i]`.
    ends: Vec<usize>,
    /// Concatenated ids; only whole `&str`s are appended, so every span is valid UTF-8.
    arena: Vec<u8>,
    hasher: DefaultHashBuilder,
}

/// The table hash of an entry, rebuilt from its stored 32 bits (enough for 2^32 buckets).
fn table_hash(h32: u32) -> u64 {
    (u64::from(h32) << 32) | u64::from(h32)
}

impl Interner {
    /// The index of `id`, adding it if new. Returns `None` only past `u32::MAX` ids.
    pub fn intern(&mut self, id: &str) -> Option<TxIdx> {
        let hash = self.hasher.hash_one(id);
        self.intern_hashed(id, hash)
    }

    /// The hasher [`Interner::intern_hashed`] expects hashes from (`hash_one(id)`), so other
    /// threads can hash ids ahead of interning.
    pub fn hasher(&self) -> DefaultHashBuilder {
        self.hasher
    }

    /// [`Interner::intern`] with `hash == self.hasher().hash_one(id)` computed by the caller.
    pub fn intern_hashed(&mut self, id: &str, hash: u64) -> Option<TxIdx> {
        let h32 = (hash >> 32) as u32;
        let Interner {
            table, ends, arena, ..
        } = self;
        let bytes = id.as_bytes();
        let found = table.find(table_hash(h32), |&(i, h)| {
            h == h32 && span(ends, arena, i) == bytes
        });
        if let Some(&(i, _)) = found {
            return Some(i);
        }
        let idx = TxIdx::try_from(ends.len()).ok()?;
        arena.extend_from_slice(bytes);
        ends.push(arena.len());
        table.insert_unique(table_hash(h32), (idx, h32), |&(_, h)| table_hash(h));
        Some(idx)
    }

    /// The id behind an index.
    pub fn get(&self, idx: TxIdx) -> &str {
        std::str::from_utf8(span(&self.ends, &self.arena, idx))
            .expect("the arena holds whole str values")
    }

    /// The bytes of the id behind an index (valid UTF-8; no check).
    pub fn get_bytes(&self, idx: TxIdx) -> &[u8] {
        span(&self.ends, &self.arena, idx)
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

fn span<'a>(ends: &[usize], arena: &'a [u8], idx: TxIdx) -> &'a [u8] {
    let i = idx as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] };
    &arena[start..ends[i]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_same_index_and_round_trips() {
        let mut i = Interner::default();
        let a = i.intern("tx_1").unwrap();
        let b = i.intern("tx_2").unwrap();
        let e = i.intern("").unwrap();
        assert_eq!(i.intern("tx_1"), Some(a));
        assert_eq!((a, b, e), (0, 1, 2));
        assert_eq!((i.get(a), i.get(b), i.get(e)), ("tx_1", "tx_2", ""));
        assert_eq!(i.len(), 3);
    }

    #[test]
    fn many_ids_survive_table_growth() {
        let mut i = Interner::default();
        for n in 0..10_000 {
            assert_eq!(i.intern(&format!("t{n}")), Some(n));
        }
        let h = i.hasher();
        for n in 0..10_000 {
            assert_eq!(i.get(n), format!("t{n}"));
            let id = format!("t{n}");
            assert_eq!(i.intern_hashed(&id, h.hash_one(id.as_str())), Some(n));
            assert_eq!(i.intern(&format!("t{n}")), Some(n));
        }
    }
}
