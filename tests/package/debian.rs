//! The Debian side of `tests/package.rs`: the tools it needs, building the `.deb` from the
//! release binary, `dpkg-deb` checks, `dpkg` with its lock, and a guard that purges what it
//! installed whatever happens.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::common::system_paths_lock;

pub const PACKAGE: &str = "walcompactd";
pub const BINARY: &str = "/usr/bin/walcompactd";
pub const POLICY: &str = "/etc/walcompactd/policy.toml";
pub const UNIT: &str = "/usr/lib/systemd/system/walcompactd.service";

/// What the round trip runs, and how CI (`.ci/run`) gets it.
const TOOLS: [(&str, &str); 7] = [
    (
        "cargo-deb",
        "cargo install cargo-deb --version 3.8.0 --locked",
    ),
    ("dpkg", "Debian's dpkg"),
    ("dpkg-deb", "Debian's dpkg"),
    ("gzip", "apt-get install gzip"),
    ("man", "apt-get install man-db"),
    ("systemd-analyze", "apt-get install systemd"),
    ("bash", "apt-get install bash"),
];

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `tool` can be run: on `PATH`, or for cargo-deb, found by cargo (which also
/// looks in `$CARGO_HOME/bin`).
fn available(tool: &str) -> bool {
    if tool == "cargo-deb" {
        return cargo(Path::new(env!("CARGO_MANIFEST_DIR")))
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|out| out.status.success());
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Fails under CI, else prints a message nobody can miss; `None` either way.
fn skip(why: &str) -> Option<fs::File> {
    assert!(
        !under_ci(),
        "CI=true and the package test cannot run: {why}"
    );
    // Straight to the stderr handle: libtest captures eprintln! of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "\n***** SKIPPED the Debian package round trip: {why} *****\n"
    );
    None
}

/// The machine can build, install and remove the package: root, every tool, walcompactd
/// not installed already (the test would replace and purge it). Returns the lock that keeps
/// other tests off `/usr` and `/etc` meanwhile.
pub fn prerequisites() -> Option<fs::File> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root (it installs into /usr and /etc)");
    }
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| !available(tool))
        .map(|(tool, how)| format!("{tool} ({how})"))
        .collect();
    if !missing.is_empty() {
        return skip(&format!("missing {}", missing.join(", ")));
    }
    let lock = system_paths_lock();
    if is_installed() {
        return skip("walcompactd is installed on this machine; the test would purge it");
    }
    Some(lock)
}

fn is_installed() -> bool {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("installed")
}

/// Runs `cmd`; panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap()
}

/// Cargo as a shell would run it. `cargo test` hands the test the build script's variables
/// (`WALCOMPACTD_GIT_COMMIT` of the commit the test was built at) and its `OUT_DIR`: passed
/// on, the first would stamp that commit into the release binary and, differing from a
/// shell's environment, make every other build rebuild it.
fn cargo(manifest_dir: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(manifest_dir)
        .env_remove("WALCOMPACTD_GIT_COMMIT")
        .env_remove("OUT_DIR");
    c
}

/// Builds the release binary (nothing to do when it is current) and packages it with
/// `cargo deb --no-build` into `out`; returns the `.deb`.
pub fn build_package(out: &Path) -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    run_ok(cargo(manifest_dir).args(["build", "--release", "--locked", "--bin", PACKAGE]));
    let dir = format!("{}/", out.display());
    run_ok(cargo(manifest_dir).args(["deb", "--no-build", "--fast", "--output", &dir]));
    let debs: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "cargo deb made {debs:?}");
    debs.into_iter().next().unwrap()
}

/// Where each committed file under `packaging/` lands, with the man pages gzipped.
fn shipped_copies() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let mut all: Vec<(PathBuf, String)> = super::common::names(&root.join("man"))
        .into_iter()
        .map(|n| {
            (
                root.join("man").join(&n),
                format!("/usr/share/man/man1/{n}.gz"),
            )
        })
        .collect();
    for (_, file, dest) in walcompactd::manual::COMPLETION_FILES {
        all.push((root.join("completions").join(file), format!("/{dest}")));
    }
    all
}

/// `dpkg-deb` agrees: every file where the issue puts it, the binary executable, the policy
/// the only conffile, and the maintainer scripts doing systemd's steps.
pub fn check_contents(deb: &Path) {
    let listing = stdout_of(Command::new("dpkg-deb").arg("-c").arg(deb));
    let has = |path: &str| {
        listing
            .lines()
            .any(|l| l.starts_with('-') && l.ends_with(&format!(".{path}")))
    };
    let mut expected: Vec<String> = [
        BINARY,
        UNIT,
        POLICY,
        "/usr/share/doc/walcompactd/README.md",
        "/usr/share/doc/walcompactd/docs/ARCHITECTURE.md",
        "/usr/share/doc/walcompactd/docs/PROTOCOL.md",
        "/usr/share/doc/walcompactd/grafana-dashboard.json",
    ]
    .map(String::from)
    .to_vec();
    expected.extend(shipped_copies().into_iter().map(|(_, dest)| dest));
    let absent: Vec<&String> = expected.iter().filter(|p| !has(p)).collect();
    assert!(
        absent.is_empty(),
        "not in the package: {absent:?}\n{listing}"
    );
    let binary = listing.lines().find(|l| l.ends_with(&format!(".{BINARY}")));
    assert!(
        binary.is_some_and(|l| l.starts_with("-rwxr-xr-x")),
        "{binary:?}"
    );

    let info = |member: &str| stdout_of(Command::new("dpkg-deb").arg("-I").arg(deb).arg(member));
    assert_eq!(info("conffiles").trim(), POLICY);
    let postinst = info("postinst");
    for step in [
        "daemon-reload",
        "deb-systemd-helper enable",
        "deb-systemd-invoke",
    ] {
        assert!(
            postinst.contains(step),
            "postinst lacks {step}:\n{postinst}"
        );
    }
    let postrm = info("postrm");
    for step in ["deb-systemd-helper purge", "rm -rf /var/lib/walcompactd"] {
        assert!(postrm.contains(step), "postrm lacks {step}:\n{postrm}");
    }
}

/// `gzip -dc`.
fn gunzip(path: &Path) -> Vec<u8> {
    run_ok(Command::new("gzip").arg("-dc").arg(path)).stdout
}

/// The package's man pages and completions, unpacked, are the committed copies.
pub fn check_packaged_docs(deb: &Path, work: &Path) {
    let root = work.join("unpacked");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    check_against_committed(&root);
}

/// Files under `root` (an unpacked package or `/`) equal the committed copies.
fn check_against_committed(root: &Path) {
    for (committed, dest) in shipped_copies() {
        let at = root.join(dest.trim_start_matches('/'));
        let bytes = if dest.ends_with(".gz") {
            gunzip(&at)
        } else {
            fs::read(&at).unwrap()
        };
        assert!(
            bytes == fs::read(&committed).unwrap(),
            "{} differs from {}",
            at.display(),
            committed.display()
        );
    }
}

/// `dpkg ARGS`, waiting for dpkg's lock if someone else holds it; must succeed.
pub fn dpkg(args: &[&str]) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return;
        }
        assert!(
            stderr.contains("lock") && Instant::now() < end,
            "dpkg {args:?}: {}\nstdout:\n{}\nstderr:\n{stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The package, installed for the guard's lifetime: purged on drop, on failure too.
pub struct Installed;

impl Installed {
    pub fn install(deb: &Path) -> Installed {
        let guard = Installed;
        dpkg(&["-i", deb.to_str().unwrap()]);
        guard
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["-P", PACKAGE])
            .stdin(Stdio::null())
            .output();
    }
}

/// The installed package as an operator meets it.
pub fn check_installed(work: &Path) {
    let version = stdout_of(Command::new(BINARY).arg("--version"));
    let want = format!("walcompactd {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&want), "{version}");
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        && out.status.success()
    {
        let head = String::from_utf8_lossy(&out.stdout);
        assert!(
            version.contains(head.trim()),
            "{version} is not HEAD {head}"
        );
    }

    let policy = stdout_of(Command::new(BINARY).args(["check-policy", POLICY]));
    assert!(policy.contains(&format!("# source: {POLICY}")), "{policy}");

    verify_unit();
    let page = stdout_of(Command::new("man").args(["-w", "walcompactd"]));
    assert_eq!(page.trim(), "/usr/share/man/man1/walcompactd.1.gz");
    run_ok(Command::new("bash").args(["-n", "/usr/share/bash-completion/completions/walcompactd"]));

    // What is installed is what the installed binary generates.
    let (man, completions) = super::regenerate(Path::new(BINARY), work);
    for (page, bytes) in super::files(&man) {
        let installed = gunzip(&Path::new("/usr/share/man/man1").join(format!("{page}.gz")));
        assert!(
            installed == bytes,
            "installed {page} differs from `walcompactd man --dir`"
        );
    }
    for (shell, file, dest) in walcompactd::manual::COMPLETION_FILES {
        let installed = fs::read(Path::new("/").join(dest)).unwrap();
        let fresh = fs::read(completions.join(file)).unwrap();
        assert!(
            installed == fresh,
            "installed {dest} differs from `walcompactd completions {shell}`"
        );
    }
    check_against_committed(Path::new("/"));
}

/// `systemd-analyze verify` on the installed unit, its man pages (Documentation=) checked.
fn verify_unit() {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--recursive-errors=no", UNIT])
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_PAGER", "cat")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("walcompactd"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {UNIT}: {}\n{stderr}",
        out.status
    );
}
