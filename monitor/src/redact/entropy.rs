//! The fallback for a credential in no context: a long run of base64,
//! base64url or similar characters that reads like noise, not like words,
//! numbers or hashes.
//!
//! A run of `[A-Za-z0-9+/=_.~-]` is cut into pieces at its punctuation. A
//! piece counts only if it has both upper and lower case: one-case hex
//! (git and docker hashes, UUIDs, cargo's `-C metadata=`) has too little
//! entropy per character to tell a digest from a hex key, and digests are
//! what command lines are full of; lower-case-and-digit noise is what build
//! tools name their objects with (rustc's `a1z4yh5yy5op15tj65b9m45dv`).
//! Hex and lower-case keys are caught by their context: an option, a
//! variable, a header. Pieces of up to three characters (`ld`, `x86`) are
//! words. A piece must also read as noise: random text switches between
//! upper case, lower case and digits every character or two and holds few
//! words, where identifiers (`ThreadPoolForeground`) run for several. The
//! noisy pieces of a run must add up to a minimum length and be high in
//! entropy.

use std::ops::Range;

/// Characters of a run: base64, base64url, and the `.`/`~` of some tokens.
fn in_run(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'.' | b'~' | b'-')
}

/// Shannon entropy per character a random run has at least, well below
/// what 16 random base64 characters show (about 3.7 bits).
const MIN_ENTROPY: f64 = 3.0;
/// Pieces this short are read as words (`ld`, `x86`, `so`): random text
/// has few separators, so its pieces are longer.
const MAX_WORDLIKE_PIECE: usize = 3;
/// How far from words a piece must be ([`noise`]). Random base62 of 24
/// characters scores 1.4 on the median and above 0.77 in 99% of cases;
/// identifiers score 0.2 to 0.7 (`ThreadPoolForeground` 0.26,
/// `MyApplicationKtMainKt` 0.74).
const MIN_NOISE: f64 = 0.75;

/// The runs of `text` that look like credentials, of at least `min_len`
/// characters in pieces that are neither short, digits nor hex.
pub fn credential_runs(text: &str, min_len: usize) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !in_run(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && in_run(b[i]) {
            i += 1;
        }
        if looks_like_credential(&text[start..i], min_len) {
            out.push(start..i);
        }
    }
    out
}

/// Whether `run` (ASCII run characters only) reads like a credential: its
/// noisy pieces together are long enough, of mixed case and high entropy.
pub fn looks_like_credential(run: &str, min_len: usize) -> bool {
    let noisy: Vec<&str> = run
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| p.len() > MAX_WORDLIKE_PIECE && mixed_case(p) && noise(p) >= MIN_NOISE)
        .collect();
    let n: usize = noisy.iter().map(|p| p.len()).sum();
    n >= min_len && entropy(noisy.iter().flat_map(|p| p.bytes())) >= MIN_ENTROPY
}

/// Upper and lower case: not a one-case hex digest, nor the lower-case
/// noise build tools name objects with.
fn mixed_case(piece: &str) -> bool {
    piece.bytes().any(|b| b.is_ascii_uppercase()) && piece.bytes().any(|b| b.is_ascii_lowercase())
}

/// How far from words a piece is: the share of neighbouring characters
/// that change between upper case, lower case and digit, plus the share of
/// characters outside words.
fn noise(piece: &str) -> f64 {
    let n = piece.len() as f64;
    class_changes(piece) as f64 / (n - 1.0) + (1.0 - word_chars(piece) as f64 / n)
}

/// 0 upper case, 1 lower case, 2 digit.
fn class(b: u8) -> u8 {
    if b.is_ascii_uppercase() {
        0
    } else if b.is_ascii_lowercase() {
        1
    } else {
        2
    }
}

fn class_changes(piece: &str) -> usize {
    piece
        .as_bytes()
        .windows(2)
        .filter(|w| class(w[0]) != class(w[1]))
        .count()
}

/// Characters of `piece` in words: a capitalised or lower-case run of
/// three letters or more with a vowel in it.
fn word_chars(piece: &str) -> usize {
    let b = piece.as_bytes();
    let mut total = 0;
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i].is_ascii_uppercase() {
            i += 1;
        }
        while i < b.len() && b[i].is_ascii_lowercase() {
            i += 1;
        }
        if i == start {
            i += 1;
            continue;
        }
        let atom = &b[start..i];
        let vowel = atom.iter().any(|c| {
            matches!(
                c.to_ascii_lowercase(),
                b'a' | b'e' | b'i' | b'o' | b'u' | b'y'
            )
        });
        if atom.len() >= 3 && vowel {
            total += atom.len();
        }
    }
    total
}

/// Shannon entropy, bits per byte.
pub fn entropy(bytes: impl Iterator<Item = u8>) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in bytes {
        counts[usize::from(b)] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n = f64::from(n);
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}
