//! The trust rule against a fake filesystem: owners, modes, sticky directories, symlinks,
//! the `PATH` search, and which policies are checked at all.

use std::collections::HashMap;

use chrono::DateTime;

use super::*;
use crate::policy::{ParseEnv, parse};

/// An in-memory tree of entries with owners and modes; symlinks carry their target.
#[derive(Default)]
struct FakeFs(HashMap<PathBuf, (Meta, Option<PathBuf>)>);

impl FakeFs {
    /// A root-owned system: `/`, `/usr/bin/dash` with `/usr/bin/sh -> dash`, `/bin ->
    /// usr/bin`, a sticky `/tmp` and the test policy `/tmp/t/policy.toml` (root, 0700 dir,
    /// 0644 file), laid out as `tempfile::tempdir()` leaves it.
    fn system() -> Self {
        FakeFs::default()
            .dir("/", 0, 0o755)
            .dir("/usr", 0, 0o755)
            .dir("/usr/bin", 0, 0o755)
            .file("/usr/bin/dash", 0, 0o755)
            .link("/usr/bin/sh", "dash")
            .link("/bin", "usr/bin")
            .dir("/usr/local", 0, 0o755)
            .dir("/usr/local/bin", 0, 0o755)
            .dir("/tmp", 0, 0o1777)
            .dir("/tmp/t", 0, 0o700)
            .file("/tmp/t/policy.toml", 0, 0o644)
    }

    fn entry(mut self, path: &str, kind: Kind, uid: u32, mode: u32) -> Self {
        let meta = Meta { kind, uid, mode };
        self.0.insert(PathBuf::from(path), (meta, None));
        self
    }

    fn dir(self, path: &str, uid: u32, mode: u32) -> Self {
        self.entry(path, Kind::Dir, uid, mode)
    }

    fn file(self, path: &str, uid: u32, mode: u32) -> Self {
        self.entry(path, Kind::File, uid, mode)
    }

    fn link(self, path: &str, target: &str) -> Self {
        self.link_owned(path, target, 0)
    }

    fn link_owned(mut self, path: &str, target: &str, uid: u32) -> Self {
        let meta = Meta {
            kind: Kind::Symlink,
            uid,
            mode: 0o777,
        };
        let target = Some(PathBuf::from(target));
        self.0.insert(PathBuf::from(path), (meta, target));
        self
    }
}

impl Fs for FakeFs {
    fn lstat(&self, path: &Path) -> io::Result<Meta> {
        self.0
            .get(path)
            .map(|(meta, _)| *meta)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.0
            .get(path)
            .and_then(|(_, target)| target.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
    }
}

fn env(euid: u32) -> TrustEnv {
    TrustEnv {
        euid,
        base_dir: PathBuf::from("/tmp/t"),
        path: Some("/usr/local/bin:/usr/bin".into()),
        insecure: false,
    }
}

fn policy(text: &str) -> Policy {
    let parse_env = ParseEnv::bare("/tmp/t", DateTime::UNIX_EPOCH);
    parse(text, "policy.toml", &parse_env).unwrap_or_else(|e| panic!("{e}"))
}

/// A policy with one WAL whose `pre_compact` hook is `argv0`.
fn with_hook(argv0: &str) -> Policy {
    policy(&format!(
        "[[wal]]\nname = \"a\"\npath = \"a.log\"\n[wal.hooks]\npre_compact = [{argv0:?}, \"x\"]\n"
    ))
}

fn file_source() -> PolicySource {
    PolicySource::File(PathBuf::from("/tmp/t/policy.toml"))
}

/// The errors as `key: message` lines.
fn refused(result: Result<Trust, Vec<KeyError>>) -> Vec<String> {
    match result {
        Ok(trust) => panic!("expected a refusal, got {trust:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_root_owned_policy_in_a_private_dir_under_sticky_tmp_is_trusted() {
    let fs = FakeFs::system();
    let p = with_hook("sh");
    assert_eq!(check(&p, &file_source(), &env(0), &fs), Ok(Trust::Checked));
}

#[test]
fn a_file_writable_by_others_is_refused_with_its_mode_and_the_fix() {
    let fs = FakeFs::system().file("/tmp/t/policy.toml", 0, 0o666);
    let errors = refused(check(&policy(""), &file_source(), &env(0), &fs));
    assert_eq!(
        errors,
        [
            "mode 0666 is writable by group or others; refusing a policy whose hooks run as \
          root (chmod go-w /tmp/t/policy.toml)"
        ]
    );
}

#[test]
fn group_writable_file_and_directory_are_refused() {
    let fs = FakeFs::system()
        .dir("/tmp/t", 0, 0o770)
        .file("/tmp/t/policy.toml", 0, 0o664);
    let errors = refused(check(&policy(""), &file_source(), &env(0), &fs));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0]
            .starts_with("/tmp/t: mode 0770 is writable by group or others without the sticky bit"),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("mode 0664 "), "{errors:?}");
}

#[test]
fn a_world_writable_directory_is_trusted_only_with_the_sticky_bit() {
    let open = FakeFs::system().dir("/tmp/t", 0, 0o777);
    let errors = refused(check(&policy(""), &file_source(), &env(0), &open));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("/tmp/t: mode 0777"), "{errors:?}");
    let sticky = FakeFs::system().dir("/tmp/t", 0, 0o1777);
    assert_eq!(
        check(&policy(""), &file_source(), &env(0), &sticky),
        Ok(Trust::Checked)
    );
}

#[test]
fn a_foreign_owner_is_refused_even_in_a_sticky_directory() {
    let fs = FakeFs::system().file("/tmp/t/policy.toml", 1000, 0o644);
    let errors = refused(check(&policy(""), &file_source(), &env(0), &fs));
    assert_eq!(
        errors,
        [
            "owned by uid 1000, not root; refusing a policy whose hooks run as root \
          (chown root /tmp/t/policy.toml)"
        ]
    );
    let dir = FakeFs::system().dir("/tmp/t", 1000, 0o700);
    let errors = refused(check(&policy(""), &file_source(), &env(0), &dir));
    assert!(
        errors[0].starts_with("/tmp/t: owned by uid 1000"),
        "{errors:?}"
    );
}

#[test]
fn root_or_the_daemon_user_may_own_the_policy() {
    // Not root, the file is the daemon user's own: nothing to protect.
    let own = FakeFs::system()
        .dir("/tmp/t", 1000, 0o777)
        .file("/tmp/t/policy.toml", 1000, 0o666);
    let p = with_hook("/tmp/t/hook");
    assert_eq!(
        check(&p, &file_source(), &env(1000), &own),
        Ok(Trust::NotNeeded)
    );
    // Not root, a root-owned policy: checked, root and the daemon's uid are trusted.
    let mixed =
        FakeFs::system()
            .dir("/tmp/t/hooks", 1000, 0o755)
            .file("/tmp/t/hooks/h", 1000, 0o755);
    let p = with_hook("/tmp/t/hooks/h");
    assert_eq!(
        check(&p, &file_source(), &env(1000), &mixed),
        Ok(Trust::Checked)
    );
    // Root: the same hook owned by uid 1000 is refused.
    let errors = refused(check(&p, &file_source(), &env(0), &mixed));
    assert_eq!(errors.len(), 2, "{errors:?}");
    // Not root, a third user's file is refused naming both trusted owners.
    let foreign = FakeFs::system().file("/tmp/t/policy.toml", 1001, 0o644);
    let errors = refused(check(&policy(""), &file_source(), &env(1000), &foreign));
    assert!(
        errors[0].starts_with(
            "owned by uid 1001, not root or uid 1000; refusing a policy whose hooks run as uid 1000"
        ),
        "{errors:?}"
    );
}

#[test]
fn a_writable_hook_executable_is_refused_under_its_key() {
    let fs = FakeFs::system()
        .dir("/srv", 0, 0o755)
        .file("/srv/hook.sh", 0, 0o777);
    let errors = refused(check(
        &with_hook("/srv/hook.sh"),
        &file_source(),
        &env(0),
        &fs,
    ));
    assert_eq!(
        errors,
        [
            "wal[0].hooks.pre_compact[0]: /srv/hook.sh: mode 0777 is writable by group or others; \
          refusing to run it as root (chmod go-w /srv/hook.sh)"
        ]
    );
}

#[test]
fn a_relative_hook_resolves_against_the_working_directory() {
    let fs = FakeFs::system().file("/tmp/t/hook.sh", 0, 0o757);
    let errors = refused(check(&with_hook("./hook.sh"), &file_source(), &env(0), &fs));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(": /tmp/t/hook.sh: mode 0757"),
        "{errors:?}"
    );
}

#[test]
fn a_trusted_target_behind_a_symlink_in_a_writable_directory_is_refused() {
    // Canonically /usr/bin/dash, but whoever can write /srv/open can repoint the link.
    let fs = FakeFs::system()
        .dir("/srv", 0, 0o755)
        .dir("/srv/open", 0, 0o777)
        .link("/srv/open/run", "/usr/bin/sh");
    let errors = refused(check(
        &with_hook("/srv/open/run"),
        &file_source(),
        &env(0),
        &fs,
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(": /srv/open: mode 0777"), "{errors:?}");
    // A link its owner can replace in a sticky directory: refused by its owner.
    let sticky = FakeFs::system().link_owned("/tmp/run", "/usr/bin/dash", 1000);
    let errors = refused(check(
        &with_hook("/tmp/run"),
        &file_source(),
        &env(0),
        &sticky,
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(": /tmp/run: owned by uid 1000"),
        "{errors:?}"
    );
}

#[test]
fn path_is_searched_as_execvp_does_and_earlier_directories_count() {
    // Found in /usr/bin (through /usr/bin/sh -> dash): trusted.
    let fs = FakeFs::system();
    assert_eq!(
        check(&with_hook("sh"), &file_source(), &env(0), &fs),
        Ok(Trust::Checked)
    );
    // A writable directory searched first: anyone could plant `sh` there.
    let planted = FakeFs::system().dir("/usr/local/bin", 0, 0o777);
    let errors = refused(check(&with_hook("sh"), &file_source(), &env(0), &planted));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("wal[0].hooks.pre_compact[0]: /usr/local/bin: mode 0777"),
        "{errors:?}"
    );
    // A non-executable file first is passed over, as execvp does; a writable executable
    // first is the one that runs.
    let skipped = FakeFs::system().file("/usr/local/bin/sh", 0, 0o666);
    assert_eq!(
        check(&with_hook("sh"), &file_source(), &env(0), &skipped),
        Ok(Trust::Checked)
    );
    let first = FakeFs::system().file("/usr/local/bin/sh", 0, 0o777);
    let errors = refused(check(&with_hook("sh"), &file_source(), &env(0), &first));
    assert!(
        errors[0].contains("/usr/local/bin/sh: mode 0777"),
        "{errors:?}"
    );
}

#[test]
fn a_command_not_found_is_left_to_the_runner() {
    let fs = FakeFs::system();
    let p = with_hook("no-such-command");
    assert_eq!(check(&p, &file_source(), &env(0), &fs), Ok(Trust::Checked));
    let p = with_hook("/nonexistent/dir/cmd");
    assert_eq!(check(&p, &file_source(), &env(0), &fs), Ok(Trust::Checked));
}

#[test]
fn alert_commands_are_checked_and_every_problem_is_collected() {
    let fs = FakeFs::system()
        .file("/tmp/t/policy.toml", 0, 0o666)
        .dir("/srv", 0, 0o755)
        .file("/srv/page", 2000, 0o755);
    let p = policy(
        "[[alert]]\nname = \"x\"\nmetric = \"wal_size_mb\"\nabove = 1.0\n\
         actions = [\"command\"]\ncommand = [\"/srv/page\"]\n",
    );
    let errors = refused(check(&p, &file_source(), &env(0), &fs));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("mode 0666"), "{errors:?}");
    assert!(
        errors[1].starts_with("alert[0].command[0]: /srv/page: owned by uid 2000"),
        "{errors:?}"
    );
}

#[test]
fn a_relative_policy_path_is_named_by_its_resolved_path() {
    let fs = FakeFs::system().file("/tmp/t/policy.toml", 0, 0o646);
    let source = PolicySource::File(PathBuf::from("policy.toml"));
    let errors = refused(check(&policy(""), &source, &env(0), &fs));
    assert!(
        errors[0].starts_with("/tmp/t/policy.toml: mode 0646"),
        "{errors:?}"
    );
}

#[test]
fn the_embedded_default_is_trusted_but_its_commands_are_not() {
    let fs = FakeFs::system()
        .dir("/srv", 0, 0o755)
        .file("/srv/hook.sh", 0, 0o777);
    let clean = policy("");
    assert_eq!(
        check(&clean, &PolicySource::Embedded, &env(0), &fs),
        Ok(Trust::Checked)
    );
    let hooked = with_hook("/srv/hook.sh");
    let errors = refused(check(&hooked, &PolicySource::Embedded, &env(0), &fs));
    assert!(
        errors[0].starts_with("wal[0].hooks.pre_compact[0]: /srv/hook.sh"),
        "{errors:?}"
    );
    // Not root: the embedded policy's commands run as their author could anyway.
    assert_eq!(
        check(&hooked, &PolicySource::Embedded, &env(1000), &fs),
        Ok(Trust::NotNeeded)
    );
}

#[test]
fn the_escape_hatch_skips_every_check() {
    let fs = FakeFs::system().file("/tmp/t/policy.toml", 1000, 0o666);
    let mut env = env(0);
    env.insecure = true;
    assert_eq!(
        check(&policy(""), &file_source(), &env, &fs),
        Ok(Trust::Skipped)
    );
}

#[test]
fn a_symlink_loop_is_an_error_not_a_hang() {
    let fs = FakeFs::system()
        .link("/tmp/t/a", "/tmp/t/b")
        .link("/tmp/t/b", "/tmp/t/a");
    let errors = refused(check(&with_hook("/tmp/t/a"), &file_source(), &env(0), &fs));
    assert!(errors[0].contains("cannot check /tmp/t/a"), "{errors:?}");
}

#[test]
fn the_real_filesystem_agrees_with_the_fake_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let meta = RealFs.lstat(&file).unwrap();
    assert_eq!((meta.kind, meta.mode), (Kind::File, 0o666));
    assert_eq!(meta.uid, unsafe { libc::geteuid() });
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("policy.toml", &link).unwrap();
    assert_eq!(RealFs.lstat(&link).unwrap().kind, Kind::Symlink);
    assert_eq!(
        RealFs.read_link(&link).unwrap(),
        PathBuf::from("policy.toml")
    );
    let tmp = RealFs.lstat(Path::new("/tmp")).unwrap();
    assert_eq!(tmp.kind, Kind::Dir);
}
