//! HuJSON ("human JSON") standardiser.
//!
//! HuJSON is JSON plus `//` line comments, `/* */` block comments and
//! trailing commas before `]` / `}`. [`standardize`] blanks those out *in
//! place* (every removed byte becomes a space, newlines inside block
//! comments are kept) so byte offsets and line:column positions of the
//! result are identical to the input; the output is then plain JSON for
//! `serde_json`. String contents are never touched (`"http://x"` keeps its
//! `//`).

use std::fmt;

/// Largest policy we accept (bytes).
pub const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

/// A syntax error with a 1-based line and column (column counted in
/// characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for SyntaxError {}

/// 1-based (line, column) of byte offset `off` in `text`.
pub fn line_col(text: &str, off: usize) -> (usize, usize) {
    let off = off.min(text.len());
    let mut line = 1;
    let mut col = 1;
    for (i, ch) in text.char_indices() {
        if i >= off {
            break;
        }
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

fn err_at(text: &str, off: usize, msg: &str) -> SyntaxError {
    let (line, column) = line_col(text, off);
    SyntaxError {
        line,
        column,
        message: msg.to_string(),
    }
}

/// Replace comments and trailing commas by spaces; the result has the same
/// length and line structure as `text` and is standard JSON if `text` was
/// valid HuJSON.
pub fn standardize(text: &str) -> Result<String, SyntaxError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(SyntaxError {
            line: 1,
            column: 1,
            message: format!(
                "policy too large: {} bytes (limit {})",
                text.len(),
                MAX_POLICY_BYTES
            ),
        });
    }
    let mut out: Vec<u8> = text.as_bytes().to_vec();
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    // A UTF-8 byte-order mark is blanked like a comment.
    if b.starts_with(&[0xEF, 0xBB, 0xBF]) {
        out[..3].copy_from_slice(b"   ");
        i = 3;
    }
    // Position of the last comma seen outside strings/comments, if only
    // whitespace/comments followed it so far.
    let mut pending_comma: Option<usize> = None;
    while i < n {
        let c = b[i];
        match c {
            b'"' => {
                pending_comma = None;
                let start = i;
                i += 1;
                loop {
                    if i >= n {
                        return Err(err_at(text, start, "unterminated string"));
                    }
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\n' => return Err(err_at(text, i, "newline in string")),
                        _ => i += 1,
                    }
                }
            }
            b'/' if i + 1 < n && b[i + 1] == b'/' => {
                while i < n && b[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            b'/' if i + 1 < n && b[i + 1] == b'*' => {
                let start = i;
                out[i] = b' ';
                out[i + 1] = b' ';
                i += 2;
                loop {
                    if i + 1 >= n {
                        return Err(err_at(text, start, "unterminated block comment"));
                    }
                    if b[i] == b'*' && b[i + 1] == b'/' {
                        out[i] = b' ';
                        out[i + 1] = b' ';
                        i += 2;
                        break;
                    }
                    if b[i] != b'\n' && b[i] != b'\r' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
            }
            b',' => {
                pending_comma = Some(i);
                i += 1;
            }
            b']' | b'}' => {
                if let Some(p) = pending_comma.take() {
                    out[p] = b' ';
                }
                i += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            _ => {
                pending_comma = None;
                i += 1;
            }
        }
    }
    // Only ASCII bytes outside strings were replaced by ASCII spaces, so the
    // result is still valid UTF-8.
    String::from_utf8(out).map_err(|_| err_at(text, 0, "invalid UTF-8"))
}

/// Standardise and parse into a `serde_json::Value`. Syntax errors carry the
/// line:column of the original text.
pub fn parse(text: &str) -> Result<serde_json::Value, SyntaxError> {
    let std = standardize(text)?;
    serde_json::from_str(&std).map_err(|e| {
        let msg = e.to_string();
        // serde_json appends " at line X column Y"; strip it, we add our own.
        let msg = match msg.rfind(" at line ") {
            Some(p) => msg[..p].to_string(),
            None => msg,
        };
        SyntaxError {
            line: e.line(),
            column: e.column(),
            message: msg,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_comments_keeping_offsets() {
        let src = "{\n // c\n \"a\": 1, /* x\n y */ \"b\": \"http://z\",\n}";
        let out = standardize(src).unwrap();
        assert_eq!(out.len(), src.len());
        assert_eq!(out.lines().count(), src.lines().count());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"], "http://z");
    }

    #[test]
    fn trailing_commas() {
        let v = parse("[1, 2, /* c */ ]").unwrap();
        assert_eq!(v, serde_json::json!([1, 2]));
        let v = parse("{\"a\": [\"x\",],\n}").unwrap();
        assert_eq!(v, serde_json::json!({"a": ["x"]}));
        // A comma inside a string is not a trailing comma.
        let v = parse("[\",\"]").unwrap();
        assert_eq!(v, serde_json::json!([","]));
    }

    #[test]
    fn error_positions() {
        let e = parse("{\n  \"a\": 1\n  \"b\": 2\n}").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("3:"));
        let e = parse("{\"a\": \"x}").unwrap_err();
        assert_eq!((e.line, e.column), (1, 7));
        let e = parse("/* open").unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
    }

    #[test]
    fn byte_order_mark() {
        assert_eq!(
            parse("\u{feff}{\"a\": 1}").unwrap(),
            serde_json::json!({"a": 1})
        );
    }

    #[test]
    fn size_limit() {
        let big = " ".repeat(MAX_POLICY_BYTES + 1);
        assert!(standardize(&big).is_err());
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }
}
