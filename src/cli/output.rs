//! Output: `-o json` / `json-line` / `yaml` as Headscale's CLI prints them
//! (see [`super::goshape`]), or a human table.

use super::goshape;
use serde::Serialize;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    JsonLine,
    Yaml,
}

/// `-o`/`--output` given anywhere on the command line (taken out before
/// argh parses, as Headscale's persistent flag allows).
static GLOBAL: OnceLock<String> = OnceLock::new();

pub fn set_global(s: String) {
    let _ = GLOBAL.set(s);
}

impl Format {
    /// A command's own `-o` value, else the global one.
    pub fn parse(s: &str) -> Result<Format, String> {
        let s = if s.is_empty() {
            GLOBAL.get().map_or("", String::as_str)
        } else {
            s
        };
        match s {
            "" | "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "json-line" => Ok(Format::JsonLine),
            "yaml" => Ok(Format::Yaml),
            other => Err(format!(
                "unsupported output format {other:?} (use json, json-line or yaml)"
            )),
        }
    }
}

/// Prints `v` (REST API JSON) in Headscale's CLI shape in the machine
/// formats; returns false for `Table` so the caller prints its human form.
pub fn machine<T: Serialize + ?Sized>(f: Format, v: &T) -> bool {
    let v = serde_json::to_value(v).unwrap_or_default();
    let g = |yaml| goshape::top_level(goshape::from_api(&v, yaml));
    match f {
        Format::Table => return false,
        Format::Json => outln!("{}", goshape::json(&g(false), true)),
        Format::JsonLine => outln!("{}", goshape::json(&g(false), false)),
        Format::Yaml => out!("{}", goshape::yaml(&g(true))),
    }
    true
}

/// An error as Headscale prints it under a machine format (on stderr);
/// None for the table format.
pub fn machine_error(msg: &str) -> Option<String> {
    let g = goshape::G::Obj(vec![(
        "error".into(),
        goshape::G::Scalar(serde_json::Value::String(msg.into())),
    )]);
    match Format::parse("").ok()? {
        Format::Table => None,
        Format::Json => Some(goshape::json(&g, true)),
        Format::JsonLine => Some(goshape::json(&g, false)),
        Format::Yaml => Some(goshape::yaml(&g).trim_end().to_string()),
    }
}

/// Writes to stdout; a closed pipe ends the process with status 0 (the
/// reader has what it wanted), other errors with status 1.
pub fn write_stdout(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("Error: writing output: {e}");
        std::process::exit(1);
    }
}

/// Renders rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(w[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// Shortens an RFC 3339 time for tables: `2026-01-02 03:04:05`, `-` for
/// unset (empty or Go's zero time).
pub fn short_time(t: &str) -> String {
    if t.is_empty() || t.starts_with("0001-01-01") {
        return "-".into();
    }
    let t = t.trim_end_matches('Z');
    let t = t.split('.').next().unwrap_or(t);
    t.replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        let t = table(
            &["ID", "Name"],
            &[
                vec!["1".into(), "alice".into()],
                vec!["10".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID  Name\n1   alice\n10  b\n");
        assert_eq!(short_time("2026-01-02T03:04:05Z"), "2026-01-02 03:04:05");
        assert_eq!(short_time("0001-01-01T00:00:00Z"), "-");
        assert!(Format::parse("xml").is_err());
    }
}
