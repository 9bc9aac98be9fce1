//! Checks `systemd/walcompactd.service` with `systemd-analyze verify`, so a
//! typo in a directive (which systemd only warns about, then ignores) fails
//! CI instead of silently dropping a hardening option in production.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Name the unit must keep in the copy: systemd derives the unit name from it.
const UNIT_NAME: &str = "walcompactd.service";

/// Where the unit expects the installed binary; the test points it at the one
/// cargo just built, since `verify` checks that every Exec*= command exists.
const INSTALLED_BINARY: &str = "/usr/bin/walcompactd";

fn unit_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(UNIT_NAME)
}

/// Copies the unit into `dir` with the Exec*= paths pointing at the built binary.
fn copy_unit_with_built_binary(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit_source()).expect("read the unit file");
    assert!(
        text.contains(INSTALLED_BINARY),
        "the unit no longer runs {INSTALLED_BINARY}; update this test"
    );
    let copy = dir.join(UNIT_NAME);
    let rewritten = text.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_walcompactd"));
    std::fs::write(&copy, rewritten).expect("write the unit copy");
    copy
}

/// Runs `systemd-analyze verify`, or returns None when it is not installed.
///
/// The environment is pinned so the outcome does not depend on the caller's:
/// an inherited SYSTEMD_LOG_LEVEL=debug would flood stderr with lines naming
/// the unit, and colour codes would break the line matching below.
fn verify(unit: &Path) -> Option<Output> {
    let result = Command::new("systemd-analyze")
        .arg("verify")
        // Only our unit is under test: warnings in the distribution's own
        // units (multi-user.target and what it pulls in) are not ours to fix.
        .arg("--recursive-errors=no")
        // Man pages are not part of the unit and CI installs systemd without man-db.
        .arg("--man=no")
        .arg(unit)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_LOG_LOCATION", "0")
        .env("SYSTEMD_LOG_TIME", "0")
        .env("SYSTEMD_PAGER", "cat")
        .output();
    match result {
        Ok(output) => Some(output),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("could not run systemd-analyze: {e}"),
    }
}

/// Lines of stderr that are about our unit: systemd prefixes parser
/// warnings with the file path and load/exec problems with the unit name.
fn lines_about_unit<'a>(stderr: &'a str, unit: &Path) -> Vec<&'a str> {
    let path = unit.to_string_lossy();
    stderr
        .lines()
        .filter(|line| line.contains(UNIT_NAME) || line.contains(path.as_ref()))
        .collect()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let unit = copy_unit_with_built_binary(dir.path());
    let Some(output) = verify(&unit) else {
        println!("SKIPPED: systemd-analyze not installed");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "status: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        output.status.success(),
        "systemd-analyze verify failed\n{report}"
    );
    let about_unit = lines_about_unit(&stderr, &unit);
    assert!(
        about_unit.is_empty(),
        "systemd-analyze warned about the unit: {about_unit:#?}\n{report}"
    );
    if !stderr.trim().is_empty() {
        // Not about our unit (e.g. a distribution unit): shown, not failed on.
        eprintln!("systemd-analyze printed, about other units:\n{stderr}");
    }
}

/// Keeps the check honest: a misspelt directive must make the test's
/// criteria fail, or the test above proves nothing.
#[test]
fn verify_catches_a_misspelt_directive() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let unit = copy_unit_with_built_binary(dir.path());
    let text = std::fs::read_to_string(&unit).expect("read the copy");
    std::fs::write(&unit, text.replace("ProtectSystem=", "ProtectSytem=")).expect("write");
    let Some(output) = verify(&unit) else {
        println!("SKIPPED: systemd-analyze not installed");
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let about_unit = lines_about_unit(&stderr, &unit);
    assert!(
        about_unit.iter().any(|line| line.contains("ProtectSytem")),
        "a misspelt directive went unnoticed; stderr:\n{stderr}"
    );
}

/// Lease mode needs `CAP_LEASE` for WALs the daemon does not own: a unit that restricts
/// capabilities must keep it (and one that drops it by `~CAP_LEASE` is refused here).
#[test]
fn the_unit_keeps_cap_lease() {
    let text = std::fs::read_to_string(unit_source()).expect("read the unit file");
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "CapabilityBoundingSet" {
            let drops = value.trim_start().starts_with('~');
            assert_eq!(
                value.contains("CAP_LEASE"),
                !drops,
                "{line}: lease mode needs CAP_LEASE"
            );
        }
    }
}
