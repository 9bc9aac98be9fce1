//! kill -9 torture: `walcompactd compact` on a ~20 MB WAL, and separately the daemon in
//! online mode with a protocol writer running, are SIGKILLed at random moments (100 times
//! each by default; `WALCOMPACTD_TORTURE_KILLS` overrides). After every kill, recovery runs
//! and the invariants are checked: the WAL at its path replays to the original state plus
//! every line appended since, no temp file is left, every backup is a valid WAL, and the next
//! compaction succeeds.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use walcompactd::analyze::{Want, analyze};

/// ~20 MB of redundant history: about 220 bytes per transaction.
const TORTURE_TXS: u64 = 95_000;

fn kills() -> usize {
    std::env::var("WALCOMPACTD_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn rng() -> rand_chacha::ChaCha8Rng {
    let seed = std::env::var("WALCOMPACTD_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    eprintln!("torture seed {seed} (WALCOMPACTD_TORTURE_SEED={seed} reproduces the kill times)");
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

fn replay_digest(bytes: &[u8]) -> [u8; 32] {
    let an = analyze(
        bytes,
        Want::replay(walcompactd::rules::CorruptLines::Keep),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        an.corrupt_lines,
        0,
        "no torn or merged line: {:?}",
        an.corrupt.first()
    );
    an.replay.unwrap().digest
}

fn assert_clean(dir: &Path) {
    let left = names(dir);
    assert!(
        left.iter()
            .all(|n| !n.contains(".tmp") && !n.ends_with(".journal")),
        "leftovers: {left:?}"
    );
}

/// Every backup in `dir` parses completely (a valid WAL); returns how many.
fn check_backups(dir: &Path, original: Option<&[u8; 32]>) -> usize {
    let mut n = 0;
    for name in names(dir)
        .into_iter()
        .filter(|n| n.starts_with("wal_backup_"))
    {
        let bytes = fs::read(dir.join(&name)).unwrap();
        let d = replay_digest(&bytes);
        if let Some(o) = original {
            assert_eq!(&d, o, "backup {name} replays to the original state");
        }
        n += 1;
    }
    n
}

fn sigkill(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

/// Uninterrupted compactions timed before the kills.
const PROBE_RUNS: usize = 3;

#[test]
fn kill_9_during_cli_compaction() {
    let root = tempfile::tempdir().unwrap();
    let seed = redundant_wal(TORTURE_TXS);
    let original_digest = replay_digest(seed.as_bytes());
    // Uninterrupted runs give the time range the kills are drawn from: the fastest of a few,
    // since a noisy machine only ever makes a run slower, and kills timed by a slow probe
    // would mostly land after the run ended.
    let full = (0..PROBE_RUNS)
        .map(|i| {
            let probe = root.path().join(format!("probe{i}"));
            fs::create_dir(&probe).unwrap();
            let wal = write_wal(&probe, "wal.log", &seed);
            let t0 = Instant::now();
            walcompactd().arg("compact").arg(&wal).assert().success();
            t0.elapsed()
        })
        .min()
        .expect("at least one probe");
    eprintln!("{} MB WAL compacts in {full:?}", seed.len() / 1_000_000);
    let mut rng = rng();
    let mut outcomes = [0usize; 2]; // [killed mid-run, finished before the kill]
    let started = Instant::now();
    for i in 0..kills() {
        let dir = root.path().join(format!("run{i}"));
        fs::create_dir(&dir).unwrap();
        let wal = write_wal(&dir, "wal.log", &seed);
        let mut child = Command::new(bin())
            .arg("compact")
            .arg(&wal)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(rng.random_range(0.0..1.1)));
        let finished = child.try_wait().unwrap().is_some();
        sigkill(&mut child);
        outcomes[usize::from(finished)] += 1;
        walcompactd().arg("recover").arg(&wal).assert().success();
        assert_clean(&dir);
        let now = fs::read(&wal).unwrap();
        if now != seed.as_bytes() {
            assert_eq!(
                replay_digest(&now),
                original_digest,
                "kill {i}: the WAL replays to the original state"
            );
        }
        check_backups(&dir, Some(&original_digest));
        if i % 10 == 0 {
            walcompactd().arg("compact").arg(&wal).assert().success();
            assert_eq!(replay_digest(&fs::read(&wal).unwrap()), original_digest);
            assert_clean(&dir);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "{} kills in {:?}: {} mid-run, {} after the run ended",
        kills(),
        started.elapsed(),
        outcomes[0],
        outcomes[1]
    );
    assert!(
        outcomes[0] >= kills() / 2,
        "most kills must land mid-run: {outcomes:?}"
    );
}

/// Holds the writers' lock so the WAL and the audit copy are read at the same instant.
fn under_writer_lock<T>(wal: &Path, f: impl FnOnce() -> T) -> T {
    let lock = hold_writer_lock(wal);
    let out = f();
    lock.unlock().unwrap();
    out
}

#[test]
fn kill_9_during_online_daemon_compaction_with_a_writer() {
    let d = tempfile::tempdir().unwrap();
    let seed = wal_text(TORTURE_TXS);
    let wal = write_wal(d.path(), "wal.log", &seed);
    let audit = write_wal(d.path(), "audit.log", &seed);
    let policy = test_policy(
        "[[wal]]\nname = \"w\"\npath = \"wal.log\"\nmode = \"online\"\npoll_interval_secs = 1\n\
         [wal.triggers]\nmax_size_mb = 1.0\nmin_reclaimable_bytes = 4096\nmin_interval_secs = 1\n",
    );
    fs::write(d.path().join("policy.toml"), policy).unwrap();
    let mut writer = Command::new(stress_writer())
        .args([
            "--writer-id",
            "w",
            "--count",
            "100000000",
            "--rate",
            "2000",
            "--wal",
        ])
        .arg(&wal)
        .arg("--mirror")
        .arg(&audit)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut rng = rng();
    let started = Instant::now();
    let mut runs_seen = 0;
    for i in 0..kills() {
        let daemon = Daemon::start(d.path(), "policy.toml");
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
        runs_seen += daemon.count(|v| v["event"] == "run" && v["outcome"] == "success");
        drop(daemon); // SIGKILL
        assert!(
            writer.try_wait().unwrap().is_none(),
            "the writer keeps running through every kill"
        );
        walcompactd().arg("recover").arg(&wal).assert().success();
        assert_clean(d.path());
        if i % 10 == 9 {
            let (now, stream) = under_writer_lock(&wal, || {
                (fs::read(&wal).unwrap(), fs::read(&audit).unwrap())
            });
            assert_eq!(
                replay_digest(&now),
                replay_digest(&stream),
                "kill {i}: original state plus every appended line"
            );
            check_backups(d.path(), None);
        }
    }
    sigkill(&mut writer);
    walcompactd()
        .args(["compact", "--online"])
        .arg(&wal)
        .assert()
        .success();
    let (now, stream) = under_writer_lock(&wal, || {
        (fs::read(&wal).unwrap(), fs::read(&audit).unwrap())
    });
    assert_eq!(replay_digest(&now), replay_digest(&stream));
    assert_eq!(
        now,
        walcompactd::pipeline::compact::compact_bytes(&stream).unwrap(),
        "exactly the compaction of the stream"
    );
    eprintln!(
        "{} daemon kills in {:?}; {runs_seen} compactions completed between kills",
        kills(),
        started.elapsed()
    );
    assert!(
        runs_seen > 0,
        "some compactions must complete between kills"
    );
}
