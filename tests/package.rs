//! The Debian package (issue 17). The man pages and completions under `packaging/` are
//! regenerated through the real binary and compared with the committed copies the package
//! ships; the packaged policy documents every key of `config/policy.toml`; and, as root with
//! cargo-deb and dpkg at hand, the package is built from the release binary, checked with
//! `dpkg-deb`, installed for real into `/usr` and `/etc`, tried, removed, purged and
//! reinstalled over an edited policy. Under `CI=true` a missing tool fails the test;
//! elsewhere it is skipped with a loud message.

mod common;

#[path = "package/debian.rs"]
mod debian;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use debian::*;

/// The one command that brings `packaging/` in line with the binary.
const REGENERATE: &str = "scripts/regen-packaging.sh";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every file of `dir` by name with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    names(dir)
        .into_iter()
        .map(|n| {
            let bytes = fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}

/// Fails naming the files that differ and the command that regenerates them.
fn assert_same_files(what: &str, fresh: &[(String, Vec<u8>)], shipped: &[(String, Vec<u8>)]) {
    let differing: Vec<&str> = fresh
        .iter()
        .filter(|f| !shipped.contains(f))
        .map(|(n, _)| n.as_str())
        .chain(
            shipped
                .iter()
                .filter(|s| !fresh.iter().any(|f| f.0 == s.0))
                .map(|(n, _)| n.as_str()),
        )
        .collect();
    assert!(
        differing.is_empty(),
        "{what} differ from what the binary generates: {differing:?}\nregenerate them with: {REGENERATE}"
    );
}

/// `walcompactd man --dir` and `walcompactd completions SHELL` through `bin` into `dir`,
/// named as `packaging/completions/` names them.
fn regenerate(bin: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    run_ok(
        std::process::Command::new(bin)
            .arg("man")
            .arg("--dir")
            .arg(&man),
    );
    fs::create_dir_all(&completions).unwrap();
    for (shell, file, _) in walcompactd::manual::COMPLETION_FILES {
        let out = run_ok(std::process::Command::new(bin).args(["completions", &shell.to_string()]));
        fs::write(completions.join(file), out.stdout).unwrap();
    }
    (man, completions)
}

#[test]
fn man_pages_and_completions_match_the_binary() {
    let d = tempfile::tempdir().unwrap();
    let (man, completions) = regenerate(&bin(), d.path());
    assert!(man.join("walcompactd.1").exists());
    assert!(man.join("walcompactd-run.1").exists());
    assert_same_files(
        "packaging/man/",
        &files(&man),
        &files(&repo("packaging/man")),
    );
    assert_same_files(
        "packaging/completions/",
        &files(&completions),
        &files(&repo("packaging/completions")),
    );
    let page = fs::read_to_string(man.join("walcompactd.1")).unwrap();
    assert!(
        !page.contains("(commit "),
        "the man pages must not change with every commit"
    );
}

/// `key =` and `[table]` names at the start of a line, commented out or not.
fn keys(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            let end = l
                .find(" =")
                .or_else(|| l.starts_with('[').then_some(l.len()))?;
            let key = &l[..end];
            key.chars()
                .all(|c| c.is_ascii_lowercase() || "_[].".contains(c))
                .then(|| key.to_string())
        })
        .collect()
}

#[test]
fn the_packaged_policy_documents_every_key_and_its_example_parses() {
    let packaged = fs::read_to_string(repo("packaging/policy.toml")).unwrap();
    let reference = fs::read_to_string(repo("config/policy.toml")).unwrap();
    let missing: Vec<_> = keys(&reference)
        .difference(&keys(&packaged))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "packaging/policy.toml lacks {missing:?}"
    );

    let d = tempfile::tempdir().unwrap();
    let as_shipped = d.path().join("shipped.toml");
    fs::write(&as_shipped, &packaged).unwrap();
    let out = run_ok(
        std::process::Command::new(bin())
            .arg("check-policy")
            .arg(&as_shipped),
    );
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("no [[wal]] entries"), "{effective}");

    // The example, uncommented ("#" and no space marks its lines), is a valid absolute WAL.
    let example: String = packaged
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_lowercase()) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let uncommented = d.path().join("example.toml");
    fs::write(&uncommented, example).unwrap();
    let out = run_ok(
        std::process::Command::new(bin())
            .arg("check-policy")
            .arg(&uncommented),
    );
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(
        effective.contains("path = \"/var/lib/diotec360/.diotec360_wal/wal.log\""),
        "{effective}"
    );
}

#[test]
fn the_package_installs_removes_purges_and_keeps_an_edited_policy() {
    let Some(_system) = prerequisites() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let deb = build_package(work.path());
    check_contents(&deb);
    check_packaged_docs(&deb, work.path());

    let installed = Installed::install(&deb);
    check_installed(work.path());

    dpkg(&["-r", PACKAGE]);
    assert!(!Path::new(BINARY).exists(), "dpkg -r left {BINARY}");
    assert!(Path::new(POLICY).exists(), "dpkg -r removed the conffile");
    dpkg(&["-P", PACKAGE]);
    assert!(!Path::new(POLICY).exists(), "dpkg -P left {POLICY}");
    assert!(
        !Path::new("/etc/walcompactd").exists(),
        "dpkg -P left /etc/walcompactd"
    );

    // An operator's edit survives removal, reinstallation and reinstallation over itself.
    dpkg(&["-i", deb.to_str().unwrap()]);
    let edited = format!(
        "{}\n# edited by the operator\n",
        fs::read_to_string(POLICY).unwrap()
    );
    fs::write(POLICY, &edited).unwrap();
    dpkg(&["-r", PACKAGE]);
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(POLICY).unwrap(),
        edited,
        "dpkg -i replaced the edit"
    );
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(POLICY).unwrap(),
        edited,
        "reinstalling replaced the edit"
    );
    run_ok(std::process::Command::new(BINARY).args(["check-policy", POLICY]));

    drop(installed);
    assert!(!Path::new(POLICY).exists() && !Path::new(BINARY).exists());
}

#[test]
fn man_and_completions_into_a_closed_pipe_are_not_an_error() {
    // `walcompactd man | head`: the reader is gone before the page is written.
    for args in [&["man"][..], &["completions", "bash"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(bin())
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
