//! The fallback for a credential in no context: a long run of base64,
//! base64url or similar characters that reads like noise, not like words,
//! numbers or hashes.
//!
//! A run of `[A-Za-z0-9+/=_.~-]` is cut into pieces at its punctuation.
//! Pieces of digits only, or of one-case hex only (git and docker hashes,
//! UUIDs, cargo's `-C metadata=`), are readable and set aside: hex has too
//! little entropy per character to tell a digest from a hex key, and digests
//! are what command lines are full of (hex keys are caught by their context:
//! an option, a variable, a header). What remains must be long enough,
//! high in entropy, and made mostly of short atoms: random text switches
//! between upper case, lower case and digits every character or two, where
//! words (`ThreadPoolForeground`, `x86_64-linux-gnu`) run for several.

use std::ops::Range;

/// Characters of a run: base64, base64url, and the `.`/`~` of some tokens.
fn in_run(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'.' | b'~' | b'-')
}

/// Shannon entropy per character a random run has at least, well below
/// what 16 random base64 characters show (about 3.7 bits).
const MIN_ENTROPY: f64 = 3.0;
/// Share of the characters in atoms of one or two characters.
const MIN_SHORT_ATOMS: f64 = 0.4;

/// The runs of `text` that look like credentials, of at least `min_len`
/// characters that are neither digits nor hex.
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

/// Whether `run` (ASCII run characters only) reads like a credential.
pub fn looks_like_credential(run: &str, min_len: usize) -> bool {
    let residual: Vec<&str> = run
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty() && !is_digits_or_hex(p))
        .collect();
    let n: usize = residual.iter().map(|p| p.len()).sum();
    if n < min_len {
        return false;
    }
    let short: usize = residual.iter().map(|p| short_atom_chars(p)).sum();
    short as f64 / n as f64 >= MIN_SHORT_ATOMS
        && entropy(residual.iter().flat_map(|p| p.bytes())) >= MIN_ENTROPY
}

fn is_digits_or_hex(piece: &str) -> bool {
    let b = piece.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        || b.iter()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
}

/// Characters of `piece` in atoms (a capitalised or lower-case word, a run
/// of capitals, a run of digits) of one or two characters.
fn short_atom_chars(piece: &str) -> usize {
    let b = piece.as_bytes();
    let mut short = 0;
    let mut start = 0;
    for i in 1..=b.len() {
        let boundary = i == b.len() || {
            let (prev, c) = (b[i - 1], b[i]);
            let next = b.get(i + 1).copied();
            (prev.is_ascii_lowercase() && c.is_ascii_uppercase())
                || (prev.is_ascii_uppercase()
                    && c.is_ascii_uppercase()
                    && next.is_some_and(|n| n.is_ascii_lowercase()))
                || (prev.is_ascii_digit() != c.is_ascii_digit())
        };
        if boundary {
            if i - start <= 2 {
                short += i - start;
            }
            start = i;
        }
    }
    short
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
