//! The corrupt-lines policy the rules apply (`corrupt_lines`), and what a plan sets aside.

use super::Slot;

/// What compaction does with corrupt complete lines (policy `corrupt_lines`). Whatever the
/// mode, every corrupt line is reported; the torn tail is never one of them.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CorruptLines {
    /// Kept verbatim in place, part of the replay state like an unrecognized line: the
    /// application's reader, which skips what it cannot parse, sees the same WAL.
    #[default]
    Keep,
    /// Moved out of the WAL into a quarantine file beside the backups (with their line
    /// number and offset), written and verified before the swap.
    Quarantine,
    /// The WAL is refused (exit 3) and nothing changes.
    Refuse,
}

impl CorruptLines {
    /// Every mode, in the order the docs list them.
    pub const ALL: [CorruptLines; 3] = [
        CorruptLines::Keep,
        CorruptLines::Quarantine,
        CorruptLines::Refuse,
    ];

    /// The spelling in the policy and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CorruptLines::Keep => "keep",
            CorruptLines::Quarantine => "quarantine",
            CorruptLines::Refuse => "refuse",
        }
    }

    /// True when corrupt lines leave the WAL (and the replay state) for the quarantine file.
    pub fn sets_aside(self) -> bool {
        self == CorruptLines::Quarantine
    }
}

impl std::str::FromStr for CorruptLines {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CorruptLines::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("expected one of keep, quarantine, refuse; got {s:?}"))
    }
}

impl std::fmt::Display for CorruptLines {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A corrupt line the plan moves to the quarantine file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetAside {
    /// 1-based line number in the original WAL.
    pub line: u64,
    pub slot: Slot,
}
