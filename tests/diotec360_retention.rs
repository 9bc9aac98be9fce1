//! Retention on a WAL written the way the Diotec360 application writes it
//! (`tests/fixtures/diotec360_wal.py`): its scripted history (retries, crashes, rollbacks,
//! legacy lines), stamped two years ago, then recent commits at today's time. Expiring a
//! week removes the old finished transactions into an archive; the reader's view of the
//! recent transactions is unchanged, and what the old history had in flight stays.

mod common;

use serde_json::Value;

use common::app::{FIXTURE, seeded_wal};
use common::*;

fn view(wal: &std::path::Path) -> Value {
    serde_json::from_str(&python_fixture(
        FIXTURE,
        &["view".as_ref(), wal.as_os_str()],
    ))
    .unwrap()
}

#[test]
fn a_month_of_history_expires_and_the_readers_view_of_the_recent_is_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 400);
    let wal_dir = wal.parent().unwrap().display().to_string();
    let state = d.path().join("recent").display().to_string();
    python_fixture(
        FIXTURE,
        &["run", &wal_dir, &state, "--writer", "now", "--count", "30"],
    );
    let before = view(&wal);
    let out = walcompactd()
        .args(["compact", "--json", "--expire-after", "604800"])
        .arg(&wal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = stdout_json(&out);
    assert!(r["expired"]["transactions"].as_u64().unwrap() > 0, "{r}");
    let archive = std::path::PathBuf::from(r["archive"].as_str().expect("an archive"));
    assert!(archive.exists());
    let after = view(&wal);
    let (b, a) = (&before["transactions"], &after["transactions"]);
    let recent: Vec<&String> = b
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("now-"))
        .collect();
    assert_eq!(recent.len(), 30);
    for id in recent {
        assert_eq!(
            a[id], b[id],
            "recent transaction {id} as the reader sees it"
        );
    }
    // Old history: committed transactions are gone from the WAL, what was in flight stays.
    for (id, tx) in b.as_object().unwrap() {
        if id.starts_with("now-") {
            continue;
        }
        match tx["committed"].as_bool().unwrap() {
            true => assert!(
                a.get(id).is_none(),
                "{id} committed long ago should have expired"
            ),
            false => assert_eq!(a[id], b[id], "{id} in flight stays"),
        }
    }
    // Legacy lines (no op) are not transactions to walcompactd: they stay.
    assert_eq!(after["legacy"], before["legacy"]);
    walcompactd().arg("verify").arg(&wal).assert().success();
}
