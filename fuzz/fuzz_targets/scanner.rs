//! Arbitrary bytes as a WAL: scanner, decoder, rules, replay and in-memory compaction.
//! Under `cargo fuzz` (nightly, `--cfg fuzzing`) this is a libFuzzer target; on stable it
//! is a plain binary replaying a corpus: `cargo run --bin scanner [-- FILE|DIR...]`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| walcompactd_fuzz::checks::scanner(data));

#[cfg(not(fuzzing))]
fn main() {
    walcompactd_fuzz::replay_corpus("scanner", walcompactd_fuzz::checks::scanner);
}
