//! Enforces the module map at the top of `lib.rs`: each checked room may
//! not import the rooms above it. Reads the sources as text (`crate::x`,
//! `use crate::{x, y}` and `super::super::x`, comments left out), so it
//! costs nothing at run time and fails as soon as an edit adds an import
//! against the flow.

use std::path::{Path, PathBuf};

/// Room (a file or directory under src/) and the top-level modules it must
/// not import.
const RULES: &[(&str, &[&str])] = &[
    ("wire", &[UP_FROM_WIRE]),
    ("noise.rs", TRANSPORT_MAY_NOT),
    ("http", TRANSPORT_MAY_NOT),
    ("derp", TRANSPORT_MAY_NOT),
    ("metrics.rs", LEAF_MAY_NOT),
    ("session.rs", LEAF_MAY_NOT),
    ("procfs.rs", LEAF_MAY_NOT),
    ("logging.rs", LEAF_MAY_NOT),
    ("secretfile.rs", LEAF_MAY_NOT),
    ("bcrypt", LEAF_MAY_NOT),
    ("state", LEAF_MAY_NOT),
    ("control", CONTROL_MAY_NOT),
    ("api", API_MAY_NOT),
];

/// Marker: wire imports nothing outside itself (checked separately).
const UP_FROM_WIRE: &str = "*";

/// The API room serves the page's routes itself; the page, OIDC and ACME
/// sit above it.
const API_MAY_NOT: &[&str] = &["web", "oidc", "acme", "cli", "app", "client", "debug"];

const CONTROL_MAY_NOT: &[&str] = &[
    "api", "web", "oidc", "acme", "cli", "app", "client", "debug", "migrate",
];

/// Leaves the transport and the control plane use (counters, sessions,
/// the store and its tables: `state::apikey` included, so the store's
/// schema upgrades never reach up into the API room).
const LEAF_MAY_NOT: &[&str] = &[
    "http", "noise", "derp", "control", "api", "web", "oidc", "acme", "cli", "app", "client",
    "debug", "migrate",
];

const TRANSPORT_MAY_NOT: &[&str] = &[
    "control", "api", "web", "oidc", "acme", "cli", "app", "client", "debug", "migrate", "state",
    "policy", "session",
];

/// The top-level modules a source text names through `crate::` (or
/// `super::super::` from a file one directory down).
fn imports(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    for pat in ["crate::", "super::super::"] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(pat) {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + pat.len()..];
            // `$crate::` in a macro names this crate from outside.
            if pat == "crate::" && matches!(before, Some('$' | '_') | Some('a'..='z')) {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c, d}`: the first segment of each item.
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.push(first_segment(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                out.push(first_segment(&item));
            } else {
                out.push(first_segment(rest));
            }
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn first_segment(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn sources(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            sources(&e.unwrap().path(), out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

#[test]
fn imports_follow_the_module_map() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (room, forbidden) in RULES {
        let mut files = Vec::new();
        sources(&src.join(room), &mut files);
        assert!(!files.is_empty(), "no sources for {room}");
        let own = room.trim_end_matches(".rs");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for m in imports(&text) {
                let against = if forbidden == &[UP_FROM_WIRE] {
                    m != own
                } else {
                    forbidden.contains(&m.as_str())
                };
                if against {
                    bad.push(format!("{} imports crate::{m}", f.display()));
                }
            }
        }
    }
    // Only the entry point (cli) may start the top level.
    let mut all = Vec::new();
    sources(&src, &mut all);
    for f in all {
        let exempt = ["app", "cli", "layers.rs"];
        if exempt.iter().any(|e| f.starts_with(src.join(e))) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        if imports(&text).iter().any(|m| m == "app") {
            bad.push(format!("{} imports crate::app", f.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the module map in lib.rs:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scanner_sees_every_form() {
    let t = "use crate::wire::h2;\nuse crate::{control::Server, http::{self, head}};\n\
             // crate::api in a comment\nlet x = crate::oidc::from_config(c);\n\
             $crate::cli::output::write_stdout(s);\nuse super::super::web::Page;\n";
    let mut m = imports(t);
    m.sort();
    assert_eq!(m, ["control", "http", "oidc", "web", "wire"]);
}
