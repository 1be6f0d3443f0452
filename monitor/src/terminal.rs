//! Text for a terminal. File names, identities, executables and hints come
//! from whoever made the file or the process: a name holding an escape
//! sequence could recolour, move or clear what a reader's terminal shows,
//! and a newline or a carriage return could forge a row of a table. The
//! tables print them with visible escapes instead (JSON escapes on its
//! own).

use std::{borrow::Cow, fmt::Write as _};

/// `text` with every control character (C0, DEL, C1), every character
/// that reorders text (bidirectional overrides and isolates), the line and
/// paragraph separators and the backslash itself written as a visible
/// escape: `\n`, `\r`, `\t`, `\x1b`, `\u{202e}`, `\\`.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            escape("/home/ana/.aws/credentials"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape("café ×2, last 2026-01-01"),
            "café ×2, last 2026-01-01"
        );
    }

    #[test]
    fn hostile_names_become_visible() {
        assert_eq!(escape("a\u{1b}[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape("fake\nrow\rover"), "fake\\nrow\\rover");
        assert_eq!(escape("tab\there"), "tab\\there");
        assert_eq!(escape("bell\u{7}del\u{7f}"), "bell\\x07del\\x7f");
        assert_eq!(escape("c1\u{9b}31m"), "c1\\u{9b}31m");
        assert_eq!(escape("evil\u{202e}txt.key"), "evil\\u{202e}txt.key");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("\u{2028}"), "\\u{2028}");
    }
}
