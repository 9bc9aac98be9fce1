//! Fuzzing support for walcompactd: the checked properties live in [`checks`]; the
//! targets in `fuzz_targets/` feed them from libFuzzer (`cargo fuzz`, nightly) or, on
//! stable, replay a corpus directory. See `fuzz/README.md`.

pub mod checks;

use std::path::Path;

/// Stable-toolchain driver: runs `check` on every file under the given paths (files or
/// directories, recursively), or on `fuzz/corpus/<target>` when none are given.
/// Returns how many inputs were run.
pub fn replay_corpus(target: &str, check: fn(&[u8])) -> usize {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let roots = if args.is_empty() {
        vec![
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("corpus")
                .join(target),
        ]
    } else {
        args.iter().map(Into::into).collect()
    };
    let mut files = Vec::new();
    for root in &roots {
        collect(root, &mut files);
    }
    files.sort();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        eprintln!("{target}: {}", f.display());
        check(&data);
    }
    eprintln!("{target}: {} inputs OK", files.len());
    files.len()
}

fn collect(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        let entries = std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for e in entries {
            collect(&e.expect("directory entry").path(), out);
        }
    } else {
        out.push(path.to_path_buf());
    }
}
