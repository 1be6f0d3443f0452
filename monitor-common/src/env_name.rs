//! The environment scan's name arithmetic, eight bytes at a time: the
//! kernel side loads an entry's first words and folds each into a
//! [`NameScan`]. Plain integer arithmetic without branches, so that it runs
//! in a BPF program without leaving the verifier paths to explore, and is
//! tested here on the host against a byte-by-byte reading.

use crate::ENV_NAME_LEN;

const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;
/// Marks a position as absent.
const NONE: u64 = ENV_NAME_LEN as u64;

/// Words of an entry that can hold a name.
pub const NAME_WORDS: usize = ENV_NAME_LEN / 8;

/// What the words of an entry folded so far say about its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct NameScan {
    /// Length of the name: bytes before the first `=` or NUL;
    /// `ENV_NAME_LEN` while no end has been seen.
    pub len: u64,
    /// 1 once the name's end has been seen.
    pub found: u64,
    /// 1 when a `=` ended the name (an entry without one names nothing).
    pub has_eq: u64,
    /// Position of the name's last `_`, `ENV_NAME_LEN` for none.
    pub last_us: u64,
    /// Position of the `_` before that one, `ENV_NAME_LEN` for none.
    pub prev_us: u64,
}

impl NameScan {
    pub const START: Self = Self {
        len: NONE,
        found: 0,
        has_eq: 0,
        last_us: NONE,
        prev_us: NONE,
    };

    /// Fold in word `w` of the entry (bytes `8w..8w + 8`, little-endian);
    /// returns that word's bytes of the name, the others zeroed (all zero
    /// once the name has ended in an earlier word).
    #[inline(always)]
    pub fn fold(&mut self, w: u64, word: u64) -> u64 {
        let live = 1 - self.found;
        let eqs = zero_bytes(word ^ (ONES * u64::from(b'=')));
        let ends = eqs | zero_bytes(word);
        // The first end's high bit, and every byte before it (all of them
        // when the word has no end).
        let first = ends.isolate_lowest_one();
        let before = (first >> 7).wrapping_sub(1);
        let ended = nonzero(first) & live;
        let at = w * 8;
        self.len = select(ended, at + count(before & HIGH), self.len);
        self.has_eq |= ended & nonzero(eqs & first);
        self.found |= ended;

        let unders = zero_bytes(word ^ (ONES * u64::from(b'_'))) & before;
        let last = highest(unders);
        let prev = highest(unders ^ top(unders));
        let any = nonzero(last) & live;
        self.prev_us = select(
            any,
            select(
                nonzero(prev),
                at.wrapping_add(prev).wrapping_sub(1),
                self.last_us,
            ),
            self.prev_us,
        );
        self.last_us = select(any, at.wrapping_add(last).wrapping_sub(1), self.last_us);
        word & before & live.wrapping_neg()
    }
}

/// A pre-test of the names the scan finds, before the hash lookups of
/// `WATCHED_ENV` and `WATCHED_ENV_SUFFIX`: the lengths and first bytes of
/// the watched names and suffixes. Most names of an ordinary environment
/// (`PATH`, `HOME`, `XDG_RUNTIME_DIR`) fail it. The agent adds each name
/// it watches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnvFilter {
    /// Bit `n`: some watched name is `n` bytes long.
    pub exact_lens: u64,
    /// Bit `b % 64` of word `b / 64`: some watched name starts with `b`.
    pub exact_first: [u64; 4],
    /// Bit `n`: some watched suffix, its `_` included, is `n` bytes long.
    pub suffix_lens: u64,
    /// Bit `b % 64` of word `b / 64`: some watched suffix's byte after its
    /// `_` is `b`.
    pub suffix_first: [u64; 4],
}

impl EnvFilter {
    pub const EMPTY: Self = Self {
        exact_lens: 0,
        exact_first: [0; 4],
        suffix_lens: 0,
        suffix_first: [0; 4],
    };

    /// Watch the exact name `name` (not empty, shorter than 64 bytes).
    pub fn add_name(&mut self, name: &[u8]) {
        self.exact_lens |= 1 << (name.len() & 63);
        set(&mut self.exact_first, name.first().copied().unwrap_or(0));
    }

    /// Watch names ending in `suffix` (`_TOKEN`).
    pub fn add_suffix(&mut self, suffix: &[u8]) {
        self.suffix_lens |= 1 << (suffix.len() & 63);
        set(&mut self.suffix_first, suffix.get(1).copied().unwrap_or(0));
    }

    /// Whether a name `len` bytes long starting with `first` may be watched.
    #[inline(always)]
    pub fn may_be_name(&self, first: u8, len: u64) -> bool {
        self.exact_lens >> (len & 63) & 1 != 0 && has(&self.exact_first, first)
    }

    /// Whether a name's part from one of its `_` on, `len` bytes long and
    /// `first` after the `_`, may be a watched suffix.
    #[inline(always)]
    pub fn may_be_suffix(&self, first: u8, len: u64) -> bool {
        self.suffix_lens >> (len & 63) & 1 != 0 && has(&self.suffix_first, first)
    }
}

fn set(bits: &mut [u64; 4], b: u8) {
    bits[usize::from(b >> 6)] |= 1 << (b & 63);
}

#[inline(always)]
fn has(bits: &[u64; 4], b: u8) -> bool {
    bits[usize::from(b >> 6)] >> (b & 63) & 1 != 0
}

/// 0x80 in every byte of `v` that is zero, 0 elsewhere.
#[inline(always)]
fn zero_bytes(v: u64) -> u64 {
    !((v & LOW7).wrapping_add(LOW7) | v | LOW7)
}

/// How many bytes of `m` (high bits only) are set.
#[inline(always)]
fn count(m: u64) -> u64 {
    (m >> 7).wrapping_mul(ONES) >> 56
}

/// Every byte's high bit at and below the highest set in `m`.
#[inline(always)]
fn smear(m: u64) -> u64 {
    let m = m | m >> 8;
    let m = m | m >> 16;
    m | m >> 32
}

/// The highest set byte of `m` (high bits only), alone.
#[inline(always)]
fn top(m: u64) -> u64 {
    let s = smear(m);
    s ^ (s >> 8)
}

/// 1 + the index of the highest set byte of `m`, 0 when none.
#[inline(always)]
fn highest(m: u64) -> u64 {
    count(smear(m))
}

/// 1 when `v != 0`.
#[inline(always)]
fn nonzero(v: u64) -> u64 {
    (v | v.wrapping_neg()) >> 63
}

/// `a` when `c == 1`, `b` when `c == 0`.
#[inline(always)]
fn select(c: u64, a: u64, b: u64) -> u64 {
    b.wrapping_add(c.wrapping_mul(a.wrapping_sub(b)))
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    /// The same facts, byte by byte.
    fn reference(entry: &[u8; ENV_NAME_LEN]) -> (NameScan, [u8; ENV_NAME_LEN]) {
        let mut scan = NameScan::START;
        let mut name = [0; ENV_NAME_LEN];
        for (j, &b) in entry.iter().enumerate() {
            if b == b'=' || b == 0 {
                scan.len = j as u64;
                scan.found = 1;
                scan.has_eq = u64::from(b == b'=');
                break;
            }
            name[j] = b;
            if b == b'_' {
                scan.prev_us = scan.last_us;
                scan.last_us = j as u64;
            }
        }
        (scan, name)
    }

    fn folded(entry: &[u8; ENV_NAME_LEN]) -> (NameScan, [u8; ENV_NAME_LEN]) {
        let mut scan = NameScan::START;
        let mut name = [0; ENV_NAME_LEN];
        for w in 0..NAME_WORDS {
            let word = u64::from_le_bytes(entry[w * 8..w * 8 + 8].try_into().unwrap());
            let kept = scan.fold(w as u64, word);
            name[w * 8..w * 8 + 8].copy_from_slice(&kept.to_le_bytes());
        }
        (scan, name)
    }

    fn entry(text: &[u8]) -> [u8; ENV_NAME_LEN] {
        let mut e = [0xAA; ENV_NAME_LEN];
        let n = text.len().min(ENV_NAME_LEN);
        e[..n].copy_from_slice(&text[..n]);
        e
    }

    #[test]
    fn real_names() {
        for text in [
            &b"AWS_SECRET_ACCESS_KEY=abc\0"[..],
            b"PGPASSWORD=x\0",
            b"GITHUB_TOKEN=ghp_x\0",
            b"PATH=/usr/bin\0",
            b"_=/usr/bin/env\0",
            b"A=\0",
            b"=value\0",
            b"NO_EQUALS_SIGN\0",
            b"EXACTLY_EIGHT_B=\0",
            b"A_NAME_OF_THIRTY_TWO_CHARACTERS_=x\0",
            b"A_NAME_LONGER_THAN_THIRTY_TWO_CHARACTERS=x\0",
            b"\0",
            b"__=\0",
            "CAF\u{e9}_KEY=1\0".as_bytes(),
        ] {
            let e = entry(text);
            assert_eq!(
                folded(&e),
                reference(&e),
                "{:?}",
                core::str::from_utf8(text)
            );
        }
        let (scan, name) = folded(&entry(b"AWS_SECRET_ACCESS_KEY=abc\0"));
        assert_eq!(
            (scan.len, scan.has_eq, scan.last_us, scan.prev_us),
            (21, 1, 17, 10)
        );
        assert_eq!(&name[..22], b"AWS_SECRET_ACCESS_KEY\0");
    }

    #[test]
    fn the_filter_passes_every_watched_name_and_few_others() {
        let mut filter = EnvFilter::EMPTY;
        for name in ["PGPASSWORD", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY"] {
            filter.add_name(name.as_bytes());
        }
        for suffix in ["_TOKEN", "_API_KEY", "_PRIVATE_KEY"] {
            filter.add_suffix(suffix.as_bytes());
        }
        let name = |n: &str| filter.may_be_name(n.as_bytes()[0], n.len() as u64);
        let suffix = |s: &str| filter.may_be_suffix(s.as_bytes()[1], s.len() as u64);
        assert!(name("PGPASSWORD") && name("GITHUB_TOKEN") && name("AWS_SECRET_ACCESS_KEY"));
        assert!(suffix("_TOKEN") && suffix("_API_KEY") && suffix("_PRIVATE_KEY"));
        for unwatched in ["PATH", "HOME", "SHELL", "XDG_RUNTIME_DIR", "LS_COLORS"] {
            assert!(!name(unwatched), "{unwatched}");
        }
        for unwatched in ["_DIR", "_RUNTIME_DIR", "_COLORS", "_CONNECTION", "_ID"] {
            assert!(!suffix(unwatched), "{unwatched}");
        }
        // High bytes and lengths past 63 stay within the bitmaps.
        assert!(!filter.may_be_name(0xff, 200));
        assert!(!EnvFilter::EMPTY.may_be_suffix(b'T', 6));
    }

    /// Random entries over the bytes that matter, the high ones included.
    #[test]
    fn agrees_with_the_reference() {
        let alphabet = [
            b'A', b'Z', b'_', b'=', 0, b'9', 0x7f, 0x80, 0xbd, 0xdf, 0xff, 0x01,
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200_000 {
            let len = (next() % (ENV_NAME_LEN as u64 + 1)) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    // Mostly name bytes, so that ends fall anywhere.
                    if r % 4 == 0 {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    } else {
                        b'A' + (r >> 16) as u8 % 26
                    }
                })
                .collect();
            let e = entry(&text);
            assert_eq!(folded(&e), reference(&e), "{e:?}");
        }
    }
}
