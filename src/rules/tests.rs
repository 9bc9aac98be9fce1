//! One test per compaction rule, on literal WALs; property tests live in `tests/rules_prop.rs`.

use crate::analyze::{Analysis, Want, analyze};
use crate::pipeline::compact::compact_bytes;

fn p(tx: &str, data: u32) -> String {
    format!("{{\"op\": \"PREPARE\", \"tx_id\": \"{tx}\", \"data\": {{\"v\": {data}}}}}\n")
}
fn c(tx: &str) -> String {
    format!("{{\"op\": \"COMMIT\", \"tx_id\": \"{tx}\"}}\n")
}
fn a(tx: &str) -> String {
    format!("{{\"op\": \"ABORT\", \"tx_id\": \"{tx}\", \"reason\": \"r\"}}\n")
}

/// Compacts the concatenation of `lines` and returns the surviving lines.
/// The rules' index of `input` (no replay).
fn indexed(input: &[u8]) -> Analysis {
    let want = Want::index(crate::rules::CorruptLines::Keep);
    analyze(input, want, &mut |_| {}).unwrap()
}

fn compact(lines: &[String]) -> String {
    String::from_utf8(compact_bytes(lines.concat().as_bytes()).unwrap()).unwrap()
}

#[test]
fn committed_keeps_last_prepare_before_commit_and_the_commit() {
    let got = compact(&[p("t", 1), p("t", 2), c("t")]);
    assert_eq!(got, p("t", 2) + &c("t"));
}

#[test]
fn redundant_finals_are_dropped_last_one_wins() {
    assert_eq!(compact(&[p("t", 1), c("t"), c("t")]), p("t", 1) + &c("t"));
    // The last final decides: COMMIT then ABORT is aborted.
    assert_eq!(compact(&[p("t", 1), c("t"), a("t")]), a("t"));
    // ABORT then COMMIT: committed with the last PREPARE before the COMMIT.
    assert_eq!(compact(&[p("t", 1), a("t"), c("t")]), p("t", 1) + &c("t"));
}

#[test]
fn aborted_drops_every_prepare_before_it() {
    assert_eq!(compact(&[p("t", 1), p("t", 2), a("t")]), a("t"));
}

#[test]
fn prepares_after_the_final_are_kept_as_anomalies() {
    assert_eq!(
        compact(&[p("t", 1), c("t"), p("t", 2)]),
        p("t", 1) + &c("t") + &p("t", 2)
    );
    assert_eq!(
        compact(&[a("t"), p("t", 1), p("t", 2)]),
        a("t") + &p("t", 1) + &p("t", 2)
    );
    // A later final turns earlier anomalies into ordinary superseded prepares.
    assert_eq!(
        compact(&[p("t", 1), c("t"), p("t", 2), c("t")]),
        p("t", 2) + &c("t")
    );
}

#[test]
fn in_flight_keeps_only_its_last_prepare() {
    assert_eq!(compact(&[p("t", 1), p("t", 2), p("t", 3)]), p("t", 3));
}

#[test]
fn commit_without_prepare_is_kept() {
    assert_eq!(compact(&[c("t")]), c("t"));
}

#[test]
fn survivors_keep_their_interleaved_order() {
    let input = [p("a", 1), p("b", 1), c("b"), p("a", 2), c("a"), p("c", 1)];
    // The old script regrouped by transaction; the order of commits must stay b, a.
    assert_eq!(
        compact(&input),
        p("b", 1) + &c("b") + &p("a", 2) + &c("a") + &p("c", 1)
    );
}

#[test]
fn blank_lines_dropped_unrecognized_kept_verbatim() {
    let odd = "{\"op\": \"CHECKPOINT\", \"seq\": 1}\n".to_string();
    let input = [
        "\n".to_string(),
        "  \t\r\n".into(),
        odd.clone(),
        p("t", 1),
        c("t"),
    ];
    assert_eq!(compact(&input), odd + &p("t", 1) + &c("t"));
}

#[test]
fn bytes_are_not_reserialized_and_cr_stays() {
    let weird =
        "{ \"tx_id\" :\"t\",\"op\":\"PREPARE\" , \"data\":{\"b\":2,\"a\":1.50}}\r\n".to_string();
    assert_eq!(compact(&[weird.clone(), c("t")]), weird + &c("t"));
}

#[test]
fn escaped_tx_ids_are_the_same_transaction() {
    let esc = "{\"op\": \"COMMIT\", \"tx_id\": \"t\\u0078\"}\n".to_string();
    assert_eq!(
        compact(&[p("tx", 1), p("tx", 2), esc.clone()]),
        p("tx", 2) + &esc
    );
}

#[test]
fn torn_tail_stays_last_and_untouched() {
    let input = [p("t", 1), p("t", 2), "{\"op\": \"COMM".to_string()];
    assert_eq!(compact(&input), p("t", 2) + "{\"op\": \"COMM");
}

#[test]
fn indexer_reclaimable_matches_the_plan_as_lines_arrive() {
    let lines = [
        p("a", 1),
        p("a", 2),
        c("a"),
        p("b", 1),
        a("b"),
        "\n".into(),
        c("a"),
        p("a", 3),
        c("a"),
    ];
    for n in 0..=lines.len() {
        let input = lines[..n].concat();
        let an = indexed(input.as_bytes());
        let plan = an.index.plan();
        let out = compact_bytes(input.as_bytes()).unwrap();
        assert_eq!(
            an.index.reclaimable_bytes(),
            plan.reclaimable_bytes(),
            "prefix {n}"
        );
        assert_eq!(
            input.len() - out.len(),
            plan.reclaimable_bytes() as usize,
            "prefix {n}"
        );
    }
}

#[test]
fn plan_keeps_reports_membership() {
    let input = [p("a", 1), p("a", 2), c("a")].concat();
    let an = indexed(input.as_bytes());
    let plan = an.index.plan();
    let second = p("a", 1).len() as u64;
    assert!(!plan.keeps(0));
    assert!(plan.keeps(second));
    assert!(plan.keeps(second + p("a", 2).len() as u64));
    assert_eq!(plan.ranges().count(), 1, "adjacent survivors coalesce");
}

#[test]
fn tracker_fed_in_pieces_matches_one_full_pass() {
    use crate::analyze::Tracker;
    let full = [
        p("a", 1),
        p("a", 2),
        c("a"),
        p("b", 1),
        "\n".into(),
        a("b"),
        c("a"),
        p("c", 1),
    ]
    .concat();
    let mut t = Tracker::default();
    // Feed in uneven chunks, including cuts in the middle of lines (torn tails).
    let mut fed = 0usize;
    for cut in [5, 40, 41, 90, 200, full.len()] {
        let cut = cut.min(full.len());
        let consumed = t.feed(&full.as_bytes()[t.offset() as usize..cut]).unwrap();
        fed += consumed as usize;
        assert_eq!(t.offset() as usize, fed);
        assert_eq!(t.torn_tail_bytes() as usize, cut - fed);
    }
    let one = indexed(full.as_bytes());
    assert_eq!(t.index().reclaimable_bytes(), one.index.reclaimable_bytes());
    assert_eq!(t.index().counts(), one.index.counts());
    assert_eq!(t.index().tx_counts(), one.index.tx_counts());
    assert_eq!(t.lines(), one.lines);
}

/// Lines of 8 MiB or more do not fit a packed length and are looked up aside: they must
/// be kept, dropped and measured like any other line, as PREPARE, final or unrecognized.
#[test]
fn lines_too_long_to_pack_follow_the_same_rules() {
    let big = "x".repeat(9 << 20);
    let big_p =
        |tx: &str| format!("{{\"op\": \"PREPARE\", \"tx_id\": \"{tx}\", \"data\": \"{big}\"}}\n");
    let big_c =
        |tx: &str| format!("{{\"op\": \"COMMIT\", \"tx_id\": \"{tx}\", \"pad\": \"{big}\"}}\n");
    let big_u = format!("{{\"op\": \"CHECKPOINT\", \"pad\": \"{big}\"}}\n");
    let input = [
        big_p("a"),
        p("a", 2),
        c("a"),
        big_p("b"),
        big_u.clone(),
        big_c("b"),
        big_c("b"),
        big_p("c"),
        a("c"),
        c("c"),
    ];
    let want = [
        p("a", 2),
        c("a"),
        big_p("b"),
        big_u,
        big_c("b"),
        big_p("c"),
        c("c"),
    ];
    assert_eq!(compact(&input), want.concat());
    let text = input.concat();
    let an = indexed(text.as_bytes());
    let kept = want.concat().len() as u64;
    assert_eq!(an.index.reclaimable_bytes(), text.len() as u64 - kept);
    assert_eq!(an.index.plan().survivor_bytes(), kept);
}
