//! Reading a WAL: line scanning with offsets and the torn tail, entry decoding, and the
//! transaction-id interner. Nothing here writes files.

mod entry;
mod intern;
mod scan;

pub use entry::{DecodeError, Entry, Op, RawEntry, TxEntry, decode, decode_raw};
pub use intern::{Ids, Interner, TxIdx, hash_id};
pub use scan::{Item, LineScanner, RawLine, SCAN_BUFFER_BYTES};
