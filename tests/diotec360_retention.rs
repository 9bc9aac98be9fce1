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

/// Each transaction's last op, from the WAL's lines in order.
fn last_ops(bytes: &[u8]) -> std::collections::HashMap<String, String> {
    let mut last = std::collections::HashMap::new();
    for line in bytes.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if let (Some(op), Some(id)) = (v["op"].as_str(), v["tx_id"].as_str()) {
            last.insert(id.to_string(), op.to_string());
        }
    }
    last
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
    let before_bytes = std::fs::read(&wal).unwrap();
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
    // Old history: a transaction whose last line is its COMMIT is gone from the WAL; one in
    // flight, or with a PREPARE after its COMMIT (a retry reusing the id), stays as it was.
    let last_op = last_ops(&before_bytes);
    for id in b.as_object().unwrap().keys() {
        if id.starts_with("now-") {
            continue;
        }
        match last_op.get(id.as_str()).map(String::as_str) {
            Some("COMMIT") => assert!(
                a.get(id).is_none(),
                "{id} finished long ago should have expired"
            ),
            _ => assert_eq!(a[id], b[id], "{id} stays as the reader saw it"),
        }
    }
    // Legacy lines (no op) are not transactions to walcompactd: they stay.
    assert_eq!(after["legacy"], before["legacy"]);
    walcompactd().arg("verify").arg(&wal).assert().success();
}
