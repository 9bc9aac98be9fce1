//! A validating JSON scanner for the common case, which gives up (`None`) on anything
//! unusual rather than reporting errors.

use std::borrow::Cow;

use super::{NO_STAMP, Op, RawEntry, Stamp, stamp_of};

/// Deeper nesting is left to serde_json (whose limit is higher).
const MAX_DEPTH: u32 = 64;

struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek() == Some(b)).then(|| self.i += 1)
    }

    /// A string without escapes or control characters, at its opening quote: its
    /// contents' span. Contents with non-ASCII bytes must be valid UTF-8.
    fn string(&mut self) -> Option<(usize, usize)> {
        self.eat(b'"')?;
        let start = self.i;
        let (n, non_ascii) = plain_string_len(&self.s[start..])?;
        let end = start + n;
        if non_ascii {
            std::str::from_utf8(&self.s[start..end]).ok()?;
        }
        self.i = end + 1;
        Some((start, end))
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// JSON's number grammar, nothing more.
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return None;
                }
            }
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// A `timestamp` value: a number's [`Stamp`], anything else [`NO_STAMP`].
    fn stamp(&mut self) -> Option<Stamp> {
        let start = self.i;
        match self.peek()? {
            b'-' | b'0'..=b'9' => {
                self.number()?;
                Some(number_stamp(&self.s[start..self.i]))
            }
            _ => self.value(1).map(|()| NO_STAMP),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.s[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// Any value, at its first byte.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.container(depth, b'}', true),
            b'[' => self.container(depth, b']', false),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object or array, at its opening bracket.
    fn container(&mut self, depth: u32, close: u8, object: bool) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.i += 1;
        self.ws();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            if object {
                self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
            }
            self.value(depth + 1)?;
            self.ws();
            if self.eat(close).is_some() {
                return Some(());
            }
            self.eat(b',')?;
            self.ws();
        }
    }
}

/// The [`Stamp`] of a JSON number's bytes (already validated): whole seconds are the digits
/// before a `.` when there is no exponent (the usual `time.time()` shape, parsed without
/// floating point: it ran for every line); anything else goes through `f64`.
fn number_stamp(num: &[u8]) -> Stamp {
    let int = num.split(|&b| b == b'.').next().unwrap_or(num);
    let plain = !num.iter().any(|&b| matches!(b, b'e' | b'E' | b'-')) && int.len() <= 10;
    if plain {
        let secs = int.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        return Stamp::try_from(secs)
            .ok()
            .filter(|&s| s != NO_STAMP)
            .unwrap_or(NO_STAMP);
    }
    std::str::from_utf8(num)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .map_or(NO_STAMP, stamp_of)
}

/// Bytes per SWAR word: strings are scanned a `u64` at a time.
const WORD: usize = 8;
const ONES: u64 = u64::from_le_bytes([0x01; WORD]);
const HIGHS: u64 = u64::from_le_bytes([0x80; WORD]);

/// The high bit of each zero byte of `x`. Exact up to the first zero byte: a borrow
/// only moves upward, so a false hit always has a true one below it.
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The bytes of `x` that end or complicate a plain string: `"`, `\\` and control
/// characters (below 0x20). Exact up to the first such byte, as [`zero_bytes`].
fn specials(x: u64) -> u64 {
    let controls = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
    zero_bytes(x ^ (ONES * u64::from(b'"'))) | zero_bytes(x ^ (ONES * u64::from(b'\\'))) | controls
}

/// The length of a string's contents up to its closing quote, and whether they have a
/// non-ASCII byte; `None` at an escape, a control character or the end of input.
fn plain_string_len(s: &[u8]) -> Option<(usize, bool)> {
    let (at, high) = match sse2::plain_prefix(s) {
        Scan16::Found(len, high) => return Some((len, high)),
        Scan16::Refused => return None,
        Scan16::Rest(at, high) => (at, high),
    };
    let (len, rest_high) = plain_string_len_swar(&s[at..])?;
    Some((at + len, high | rest_high))
}

/// What a 16-bytes-at-a-time scan of a string's start found.
enum Scan16 {
    /// The closing quote at this offset; whether non-ASCII came before it.
    Found(usize, bool),
    /// An escape or a control character.
    Refused,
    /// No special byte in the first `.0` bytes (fewer than 16 are left after them).
    Rest(usize, bool),
}

/// SSE2 (part of every x86_64 CPU): 16 bytes per step, where strings spend their time.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::Scan16;
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8,
    };

    pub(super) fn plain_prefix(s: &[u8]) -> Scan16 {
        let mut high = false;
        let mut blocks = s.chunks_exact(16);
        for (k, block) in (&mut blocks).enumerate() {
            let block: &[u8; 16] = block.try_into().expect("a whole block");
            // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has it.
            let (hits, highs) = unsafe { masks(block) };
            if hits != 0 {
                let j = hits.trailing_zeros() as usize;
                high |= highs & ((1 << j) - 1) != 0;
                return match block[j] {
                    b'"' => Scan16::Found(16 * k + j, high),
                    _ => Scan16::Refused,
                };
            }
            high |= highs != 0;
        }
        Scan16::Rest(s.len() - blocks.remainder().len(), high)
    }

    /// Bit `i` of the first mask: byte `i` is `"`, `\\` or below 0x20; of the second:
    /// byte `i` is not ASCII.
    #[target_feature(enable = "sse2")]
    fn masks(block: &[u8; 16]) -> (u32, u32) {
        let lo = i64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        let hi = i64::from_le_bytes(block[8..].try_into().expect("8 bytes"));
        let x = _mm_set_epi64x(hi, lo);
        let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
        let control = _mm_cmpeq_epi8(_mm_max_epu8(x, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
        let hits = _mm_or_si128(_mm_or_si128(quote, backslash), control);
        (_mm_movemask_epi8(hits) as u32, _mm_movemask_epi8(x) as u32)
    }
}

/// Elsewhere the word-at-a-time scan does all of it.
#[cfg(not(target_arch = "x86_64"))]
mod sse2 {
    use super::Scan16;

    pub(super) fn plain_prefix(_: &[u8]) -> Scan16 {
        Scan16::Rest(0, false)
    }
}

/// [`plain_string_len`] a `u64` at a time.
fn plain_string_len_swar(s: &[u8]) -> Option<(usize, bool)> {
    let mut high = 0;
    let mut words = s.chunks_exact(WORD);
    let mut at = 0;
    for word in &mut words {
        let x = u64::from_le_bytes(word.try_into().expect("a whole word"));
        let hits = specials(x);
        if hits != 0 {
            let j = (hits.trailing_zeros() / 8) as usize;
            // Only the bytes before the hit are contents.
            high |= x & HIGHS & ((1u64 << (8 * j)) - 1);
            return (word[j] == b'"').then_some((at + j, high != 0));
        }
        high |= x & HIGHS;
        at += WORD;
    }
    for (j, &b) in words.remainder().iter().enumerate() {
        match b {
            b'"' => return Some((at + j, high != 0)),
            b'\\' | 0..=0x1f => return None,
            0x80.. => high = HIGHS,
            _ => {}
        }
    }
    None
}

/// The whole line as one object, or `None` to leave it to serde_json. Bytes outside
/// strings must be ASCII grammar and strings are checked, so `Some` means the whole
/// line is valid UTF-8.
pub(super) fn object(line: &[u8]) -> Option<RawEntry<'_>> {
    let mut p = Scan { s: line, i: 0 };
    let mut op = None;
    let mut tx_id = None;
    let mut stamp = NO_STAMP;
    p.ws();
    p.eat(b'{')?;
    p.ws();
    if p.eat(b'}').is_none() {
        loop {
            let (ks, ke) = p.string()?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            // Duplicate keys keep the last value, as in `decode`.
            match &p.s[ks..ke] {
                b"op" => op = Some(p.string()?),
                b"tx_id" => tx_id = Some(p.string()?),
                b"timestamp" => stamp = p.stamp()?,
                _ => p.value(1)?,
            }
            p.ws();
            if p.eat(b'}').is_some() {
                break;
            }
            p.eat(b',')?;
            p.ws();
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return None;
    }
    let op = op.and_then(|(a, b)| Op::from_wire_bytes(&line[a..b]));
    Some(match (op, tx_id) {
        (Some(op), Some((a, b))) => RawEntry::Tx {
            op,
            // UTF-8 checked by `string` already.
            tx_id: Cow::Borrowed(&line[a..b]),
            stamp,
        },
        _ => RawEntry::Unrecognized,
    })
}
