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
    table: HashTable<TxIdx>,
    /// End offset in `arena` of each id; id `i` spans `ends[i-1]..ends[i]`.
    ends: Vec<usize>,
    arena: String,
    hasher: DefaultHashBuilder,
}

impl Interner {
    /// The index of `id`, adding it if new. Returns `None` only past `u32::MAX` ids.
    pub fn intern(&mut self, id: &str) -> Option<TxIdx> {
        let hash = self.hasher.hash_one(id);
        let Interner {
            table,
            ends,
            arena,
            hasher,
        } = self;
        let slice = |i: TxIdx| id_at(ends, arena, i);
        if let Some(&i) = table.find(hash, |&i| slice(i) == id) {
            return Some(i);
        }
        let idx = TxIdx::try_from(ends.len()).ok()?;
        arena.push_str(id);
        ends.push(arena.len());
        table.insert_unique(hash, idx, |&i| hasher.hash_one(id_at(ends, arena, i)));
        Some(idx)
    }

    /// The id behind an index.
    pub fn get(&self, idx: TxIdx) -> &str {
        id_at(&self.ends, &self.arena, idx)
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

fn id_at<'a>(ends: &[usize], arena: &'a str, idx: TxIdx) -> &'a str {
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
        for n in 0..10_000 {
            assert_eq!(i.get(n), format!("t{n}"));
            assert_eq!(i.intern(&format!("t{n}")), Some(n));
        }
    }
}
