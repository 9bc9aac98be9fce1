//! Arbitrary text as a policy: parse, validate, render, re-parse.
//! Under `cargo fuzz` (nightly, `--cfg fuzzing`) this is a libFuzzer target; on stable it
//! is a plain binary replaying a corpus: `cargo run --bin policy [-- FILE|DIR...]`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| walcompactd_fuzz::checks::policy(data));

#[cfg(not(fuzzing))]
fn main() {
    walcompactd_fuzz::replay_corpus("policy", walcompactd_fuzz::checks::policy);
}
