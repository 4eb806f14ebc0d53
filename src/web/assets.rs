//! The page's files, compiled in as they are in `src/web/assets/` (no build
//! step: they are small enough raw, see size-budget.md "Web page"). The
//! script and stylesheet are separate files because the
//! Content-Security-Policy allows only `'self'` scripts and styles, never
//! inline ones.

const INDEX: &[u8] = include_bytes!("assets/index.html");
const CSS: &[u8] = include_bytes!("assets/app.css");
const JS: &[u8] = include_bytes!("assets/app.js");
const QR: &[u8] = include_bytes!("assets/qr.js");

/// Every asset: (path, content type, bytes).
pub const ALL: [(&str, &str, &[u8]); 4] = [
    ("/admin/", "text/html; charset=utf-8", INDEX),
    ("/admin/app.css", "text/css; charset=utf-8", CSS),
    ("/admin/app.js", "text/javascript; charset=utf-8", JS),
    ("/admin/qr.js", "text/javascript; charset=utf-8", QR),
];

/// The asset at `path`: (content type, bytes).
pub fn find(path: &str) -> Option<(&'static str, &'static [u8])> {
    ALL.iter().find(|a| a.0 == path).map(|a| (a.1, a.2))
}

/// Bytes the page adds to the binary (the status page and tests report it).
pub fn total_bytes() -> usize {
    ALL.iter().map(|a| a.2.len()).sum()
}
