//! Fuzz the read-only SQLite reader (src/migrate/sqlite.rs, included by
//! path: it is std-only): any file must give rows or a clear error, never a
//! panic, a hang (loops in b-tree and overflow chains) or a huge allocation.
//! The input is a whole database file; seeds are small real databases.
#![no_main]

#[path = "../../src/migrate/sqlite.rs"]
#[allow(dead_code)]
mod sqlite;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(db) = sqlite::Db::open(data) {
        if let Ok(names) = db.table_names() {
            for name in names.iter().take(16) {
                if let Ok(Some(t)) = db.table(name) {
                    for r in &t.rows {
                        for c in &t.columns {
                            let _ = t.get(r, c).as_str();
                        }
                    }
                }
            }
        }
    }
    let _ = sqlite::parse_record(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = sqlite::parse_columns(s);
    }
});
