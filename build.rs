//! Records the git commit the binary is built from, for `walcompactd --version`
//! (`WALCOMPACTD_GIT_COMMIT`): `git rev-parse` when the source is a git checkout, the
//! variable of the same name when a packager sets it (a tarball build), else "unknown".
//! Reruns when HEAD moves: HEAD itself (a checkout) and the ref it names (a commit).

use std::path::PathBuf;
use std::process::Command;

const VAR: &str = "WALCOMPACTD_GIT_COMMIT";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={VAR}");
    let commit = std::env::var(VAR)
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(commit_from_git)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env={VAR}={commit}");
}

/// The short commit of HEAD, registering the files that change when HEAD moves; `None`
/// without git or outside a repository.
fn commit_from_git() -> Option<String> {
    watch(git(&["rev-parse", "--git-path", "HEAD"])?);
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        // A worktree's branch ref lives in the common directory; --git-path knows where.
        if let Some(path) = git(&["rev-parse", "--git-path", &reference]) {
            watch(path);
        }
        // A ref may be packed (after `git gc`): then packed-refs changes instead. Only an
        // existing one: its directory is the whole git directory (the index included).
        if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"])
            .filter(|p| manifest_dir().join(p).exists())
        {
            watch(packed);
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

/// Reruns the build script when `path` changes. A path that does not exist would make
/// cargo rerun it on every build, so a missing ref is watched through its directory (a
/// packed ref, written loose again by the next commit, appears there).
fn watch(path: String) {
    // git prints paths inside the repository relative to where it ran: the package's
    // directory, which is also where cargo runs build scripts and resolves these paths.
    let path = manifest_dir().join(path);
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    } else if let Some(dir) = path.parent().filter(|d| d.is_dir()) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
}

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(PathBuf::new, PathBuf::from)
}

/// `git ARGS` in the package's directory: its trimmed stdout when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}
