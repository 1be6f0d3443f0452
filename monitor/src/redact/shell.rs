//! Shell words of a command string (`sh -c "…"`, `su -c`, `ssh host "…"`),
//! with where each came from, so that a secret found in a word is cut out
//! of the string as written. No crate gives the spans; this is the small
//! part of the POSIX lexer that redaction needs: quotes, escapes, and the
//! operators that end a command. It never fails: an unclosed quote runs to
//! the end.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Word(Word),
    /// `;`, `&`, `|`, `&&`, `||`, `(`, `)` or a newline: the next word
    /// starts a command.
    Separator,
    /// `<`, `>`, `>>`...: the next word is a file.
    Redirect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word as the shell passes it on: quotes removed, escapes applied.
    pub text: String,
    /// Where it is in the string.
    pub raw: Range<usize>,
    /// For each byte of `text`, the byte of the string it came from.
    map: Vec<usize>,
}

impl Word {
    /// The bytes of the string that `range` of `text` came from, through the
    /// end of the word when the range ends the text (a closing quote goes
    /// with it).
    pub fn raw_range(&self, range: Range<usize>) -> Range<usize> {
        let start = self.map.get(range.start).copied().unwrap_or(self.raw.end);
        let end = if range.end >= self.text.len() {
            self.raw.end
        } else {
            self.map[range.end]
        };
        start..end.max(start)
    }
}

/// The tokens of `s`.
pub fn lex(s: &str) -> Vec<Token> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\r' => i += 1,
            b'\n' | b';' | b'(' | b')' => {
                out.push(Token::Separator);
                i += 1;
            }
            b'&' | b'|' => {
                out.push(Token::Separator);
                i += if b.get(i + 1) == Some(&b[i]) { 2 } else { 1 };
            }
            b'<' | b'>' => {
                out.push(Token::Redirect);
                while i < b.len() && matches!(b[i], b'<' | b'>' | b'&') {
                    i += 1;
                }
            }
            _ => {
                let (word, next) = word_at(s, i);
                out.push(Token::Word(word));
                i = next;
            }
        }
    }
    out
}

/// The word starting at `start`, and where the next token may start.
fn word_at(s: &str, start: usize) -> (Word, usize) {
    let b = s.as_bytes();
    let mut text = Vec::new();
    let mut map = Vec::new();
    let mut push = |text: &mut Vec<u8>, at: usize| {
        text.push(b[at]);
        map.push(at);
    };
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' | b')' | b'&' | b'|' | b'<' | b'>' => break,
            b'\\' => {
                if i + 1 < b.len() {
                    push(&mut text, i + 1);
                }
                i += 2;
            }
            b'\'' => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    push(&mut text, i);
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && matches!(b.get(i + 1), Some(b'"' | b'\\' | b'$' | b'`')) {
                        i += 1;
                    }
                    push(&mut text, i);
                    i += 1;
                }
                i += 1;
            }
            _ => {
                push(&mut text, i);
                i += 1;
            }
        }
    }
    let end = i.min(b.len());
    let word = Word {
        text: String::from_utf8_lossy(&text).into_owned(),
        raw: start..end,
        map,
    };
    (word, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        lex(s)
            .into_iter()
            .map(|t| match t {
                Token::Word(w) => w.text,
                Token::Separator => ";".into(),
                Token::Redirect => "<>".into(),
            })
            .collect()
    }

    #[test]
    fn quotes_escapes_and_operators() {
        assert_eq!(
            words(r#"export A='x y'; mysql -p"s\"q" db&&echo ok >/dev/null"#),
            [
                "export",
                "A=x y",
                ";",
                "mysql",
                "-ps\"q",
                "db",
                ";",
                "echo",
                "ok",
                "<>",
                "/dev/null"
            ]
        );
        assert_eq!(words("a\\ b|c"), ["a b", ";", "c"]);
        assert_eq!(words("x 'unclosed"), ["x", "unclosed"]);
        assert_eq!(words(""), Vec::<String>::new());
    }

    #[test]
    fn spans_map_back_to_the_string() {
        let s = r#"env TOKEN="a b" x"#;
        let Token::Word(w) = &lex(s)[1] else { panic!() };
        assert_eq!(w.text, "TOKEN=a b");
        assert_eq!(&s[w.raw.clone()], r#"TOKEN="a b""#);
        // The value, to the end of the word: its closing quote goes too.
        assert_eq!(&s[w.raw_range(6..9)], "a b\"");
        assert_eq!(&s[w.raw_range(0..5)], "TOKEN");
    }
}
