//! A small, read-only SQLite reader: file header, the schema table, table
//! b-trees, overflow chains and records — just enough to read another
//! server's database (Headscale's) without a C library in the binary.
//!
//! Why not a crate: rusqlite links the C SQLite (~600 KB on aarch64); the
//! pure-Rust readers pull in far more than this file. We only walk table
//! b-trees front to back; indexes, WAL frames, free lists and writing are
//! out of scope (a non-empty `-wal` file is refused by the caller).
//!
//! Hostile input: every page number is checked against the page count, every
//! offset against the page, every length against what is left; a b-tree page
//! seen twice (a loop) or nested deeper than [`MAX_DEPTH`] is an error, an
//! overflow chain is followed for exactly as many pages as the payload needs,
//! and a payload larger than [`MAX_PAYLOAD`] or a table larger than
//! [`MAX_TABLE_BYTES`] is refused before anything is allocated for it.
//! Errors name the page. No panics: no indexing without a check.
//!
//! This file is std-only so the fuzz target can include it by path.

use std::collections::HashSet;
use std::fmt;

/// Largest single record (row) accepted.
pub const MAX_PAYLOAD: u64 = 16 << 20;
/// Most payload bytes one table scan may hold in memory.
pub const MAX_TABLE_BYTES: u64 = 512 << 20;
/// Deepest b-tree accepted (SQLite's own trees are ~20 at most).
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sqlite: {}", self.0)
    }
}
impl std::error::Error for Error {}

fn bad<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error(msg.into()))
}

/// Where pages come from: a file (read page by page) or a buffer.
pub trait Source {
    /// Total length in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the caller has checked the range.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error>;
}

impl Source for &[u8] {
    fn size(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let start = usize::try_from(offset).map_err(|_| Error("offset too large".into()))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| Error("read past the end".into()))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(unix)]
impl Source for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        self.read_exact_at(buf, offset)
            .map_err(|e| Error(format!("reading at {offset}: {e}")))
    }
}

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
    /// Bytes of a blob or a text.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(b) => Some(b),
            Value::Text(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
    /// SQLite's truthiness for `numeric` boolean columns (Go writes 0/1;
    /// some tools write "true"/"false").
    pub fn truthy(&self) -> bool {
        match self {
            Value::Int(i) => *i != 0,
            Value::Real(r) => *r != 0.0,
            Value::Text(s) => matches!(s.trim(), "1" | "true" | "TRUE" | "t"),
            _ => false,
        }
    }
}

/// A table read whole: its column names (from its CREATE TABLE) and rows.
#[derive(Debug)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

#[derive(Debug)]
pub struct Row {
    pub rowid: i64,
    values: Vec<Value>,
}

impl Table {
    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.eq_ignore_ascii_case(name))
    }
    /// Column `name` of `row` (NULL if the table has no such column, or the
    /// row predates an `ALTER TABLE ADD COLUMN`).
    pub fn get<'a>(&self, row: &'a Row, name: &str) -> &'a Value {
        const NULL: &Value = &Value::Null;
        match self
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
        {
            Some(i) => row.values.get(i).unwrap_or(NULL),
            None => NULL,
        }
    }
}

/// An open database.
pub struct Db<S: Source> {
    src: S,
    page_size: u32,
    usable: u32,
    page_count: u32,
}

struct SchemaEntry {
    kind: String,
    name: String,
    rootpage: i64,
    sql: String,
}

impl<S: Source> Db<S> {
    /// Checks the header. Only UTF-8 databases are read.
    pub fn open(src: S) -> Result<Self, Error> {
        let len = src.size();
        if len < 100 {
            return bad("not an SQLite database (shorter than its 100-byte header)");
        }
        let mut h = [0u8; 100];
        src.read_at(0, &mut h)?;
        if &h[..16] != b"SQLite format 3\0" {
            return bad("not an SQLite database (bad magic)");
        }
        let page_size = match u16::from_be_bytes([h[16], h[17]]) {
            1 => 65536u32,
            n if n >= 512 && n.is_power_of_two() => u32::from(n),
            n => return bad(format!("invalid page size {n}")),
        };
        let reserved = u32::from(h[20]);
        let usable = page_size - reserved;
        if usable < 480 {
            return bad(format!("usable page size {usable} is below 480"));
        }
        let enc = u32::from_be_bytes([h[56], h[57], h[58], h[59]]);
        if enc > 1 {
            return bad(format!(
                "text encoding {enc} is not UTF-8 (only UTF-8 is read)"
            ));
        }
        // The header's page count is valid only when its "version valid
        // for" matches the change counter; else the file size decides.
        let from_file = len / u64::from(page_size);
        let in_header = u32::from_be_bytes([h[28], h[29], h[30], h[31]]);
        let valid = h[24..28] == h[92..96] && in_header != 0;
        let count = if valid {
            u64::from(in_header).min(from_file)
        } else {
            from_file
        };
        let page_count = u32::try_from(count).map_err(|_| Error("file too large".into()))?;
        if page_count == 0 {
            return bad("database has no pages");
        }
        Ok(Db {
            src,
            page_size,
            usable,
            page_count,
        })
    }

    fn page(&self, n: u32) -> Result<Vec<u8>, Error> {
        if n == 0 || n > self.page_count {
            return bad(format!(
                "page number {n} out of range (1..={})",
                self.page_count
            ));
        }
        let mut buf = vec![0u8; self.page_size as usize];
        self.src
            .read_at(u64::from(n - 1) * u64::from(self.page_size), &mut buf)?;
        Ok(buf)
    }

    /// Names of the tables in the schema.
    pub fn table_names(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .schema()?
            .into_iter()
            .filter(|e| e.kind == "table")
            .map(|e| e.name)
            .collect())
    }

    fn schema(&self) -> Result<Vec<SchemaEntry>, Error> {
        let mut out = Vec::new();
        let mut budget = MAX_TABLE_BYTES;
        self.scan(1, &mut budget, &mut |_, vals| {
            let s = |i: usize| match vals.get(i) {
                Some(Value::Text(t)) => t.clone(),
                _ => String::new(),
            };
            out.push(SchemaEntry {
                kind: s(0),
                name: s(1),
                rootpage: vals.get(3).and_then(Value::as_int).unwrap_or(0),
                sql: s(4),
            });
        })?;
        Ok(out)
    }

    /// Reads table `name` whole; `None` if there is no such table.
    pub fn table(&self, name: &str) -> Result<Option<Table>, Error> {
        let Some(e) = self
            .schema()?
            .into_iter()
            .find(|e| e.kind == "table" && e.name.eq_ignore_ascii_case(name))
        else {
            return Ok(None);
        };
        let root = u32::try_from(e.rootpage)
            .map_err(|_| Error(format!("table {name}: bad root page {}", e.rootpage)))?;
        let (columns, rowid_col) = parse_columns(&e.sql)
            .ok_or_else(|| Error(format!("table {name}: cannot read its CREATE TABLE")))?;
        let mut rows = Vec::new();
        let mut budget = MAX_TABLE_BYTES;
        self.scan(root, &mut budget, &mut |rowid, mut values| {
            // An INTEGER PRIMARY KEY column is the rowid, stored as NULL.
            if let Some(i) = rowid_col {
                if let Some(v @ Value::Null) = values.get_mut(i) {
                    *v = Value::Int(rowid);
                }
            }
            rows.push(Row { rowid, values });
        })?;
        Ok(Some(Table {
            name: e.name,
            columns,
            rows,
        }))
    }

    /// Walks the table b-tree at `root` in key order, calling `f` per row.
    fn scan(
        &self,
        root: u32,
        budget: &mut u64,
        f: &mut dyn FnMut(i64, Vec<Value>),
    ) -> Result<(), Error> {
        let mut seen = HashSet::new();
        // Explicit stack of (page, depth): no recursion on hostile input.
        let mut stack = vec![(root, 0usize)];
        while let Some((n, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return bad(format!("b-tree deeper than {MAX_DEPTH} at page {n}"));
            }
            if !seen.insert(n) {
                return bad(format!("b-tree loop: page {n} reached twice"));
            }
            let page = self.page(n)?;
            let hdr = if n == 1 { 100 } else { 0 };
            let kind = *page.get(hdr).ok_or_else(|| Error("short page".into()))?;
            let ncells = usize::from(be16(&page, hdr + 3)?);
            match kind {
                0x0d => {
                    let ptrs = hdr + 8;
                    for i in 0..ncells {
                        let off = usize::from(be16(&page, ptrs + 2 * i)?);
                        let (rowid, payload) = self
                            .leaf_cell(&page, off, budget)
                            .map_err(|e| Error(format!("page {n} cell {i}: {}", e.0)))?;
                        let values = parse_record(&payload)
                            .map_err(|e| Error(format!("page {n} cell {i}: {}", e.0)))?;
                        f(rowid, values);
                    }
                }
                0x05 => {
                    let ptrs = hdr + 12;
                    // Children pushed right-most first so pops go left to right.
                    stack.push((be32(&page, hdr + 8)?, depth + 1));
                    for i in (0..ncells).rev() {
                        let off = usize::from(be16(&page, ptrs + 2 * i)?);
                        stack.push((be32(&page, off)?, depth + 1));
                    }
                }
                other => {
                    return bad(format!(
                        "page {n}: type {other:#04x} is not a table b-tree page"
                    ))
                }
            }
        }
        Ok(())
    }

    /// A table-leaf cell: rowid and the whole payload (following overflow).
    fn leaf_cell(
        &self,
        page: &[u8],
        off: usize,
        budget: &mut u64,
    ) -> Result<(i64, Vec<u8>), Error> {
        let (psize, a) = varint(page, off)?;
        let (rowid, b) = varint(page, off + a)?;
        if psize > MAX_PAYLOAD {
            return bad(format!(
                "record of {psize} bytes is over the {MAX_PAYLOAD}-byte limit"
            ));
        }
        if psize > *budget {
            return bad(format!("table larger than {MAX_TABLE_BYTES} bytes"));
        }
        *budget -= psize;
        let start = off + a + b;
        let u = u64::from(self.usable);
        let x = u - 35;
        let local = if psize <= x {
            psize
        } else {
            let m = ((u - 12) * 32 / 255) - 23;
            let k = m + ((psize - m) % (u - 4));
            if k <= x {
                k
            } else {
                m
            }
        } as usize;
        let mut out = Vec::with_capacity(psize as usize);
        out.extend_from_slice(
            page.get(start..start + local)
                .ok_or_else(|| Error("cell runs past its page".into()))?,
        );
        if (local as u64) < psize {
            let mut next = be32(page, start + local)?;
            let per = (self.usable - 4) as usize;
            // Exactly as many pages as the payload needs: a loop in the
            // chain cannot make this run longer.
            while (out.len() as u64) < psize {
                let ov = self.page(next)?;
                let want = per.min(psize as usize - out.len());
                out.extend_from_slice(
                    ov.get(4..4 + want)
                        .ok_or_else(|| Error("short overflow page".into()))?,
                );
                next = be32(&ov, 0)?;
            }
        }
        Ok((rowid as i64, out))
    }
}

fn be16(b: &[u8], at: usize) -> Result<u16, Error> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => bad(format!("offset {at} past the page")),
    }
}

fn be32(b: &[u8], at: usize) -> Result<u32, Error> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        None => bad(format!("offset {at} past the page")),
    }
}

/// SQLite's big-endian varint (1–9 bytes); returns the value and its length.
pub fn varint(b: &[u8], at: usize) -> Result<(u64, usize), Error> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b
            .get(at + i)
            .ok_or_else(|| Error(format!("varint at {at} runs past its buffer")))?;
        if i == 8 {
            return Ok(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    unreachable!("the loop returns by its ninth byte")
}

/// Decodes a record (header of serial types, then the values).
pub fn parse_record(p: &[u8]) -> Result<Vec<Value>, Error> {
    let (hlen, mut pos) = varint(p, 0)?;
    let hlen = usize::try_from(hlen)
        .ok()
        .filter(|&h| h >= pos && h <= p.len())
        .ok_or_else(|| Error("record header length out of range".into()))?;
    let mut data = hlen;
    let mut out = Vec::new();
    while pos < hlen {
        let (t, n) = varint(&p[..hlen], pos)?;
        pos += n;
        let size = match t {
            0 | 8 | 9 => 0,
            1 => 1,
            2 => 2,
            3 => 3,
            4 => 4,
            5 => 6,
            6 | 7 => 8,
            10 | 11 => return bad(format!("reserved serial type {t}")),
            n => usize::try_from((n - 12) / 2)
                .map_err(|_| Error(format!("serial type {n} too large")))?,
        };
        let v = p
            .get(data..data.saturating_add(size))
            .ok_or_else(|| Error("record value runs past its payload".into()))?;
        data += size;
        out.push(match t {
            0 => Value::Null,
            8 => Value::Int(0),
            9 => Value::Int(1),
            1..=6 => {
                // Sign-extend a big-endian integer of 1..8 bytes.
                let mut x: i64 = if v[0] & 0x80 != 0 { -1 } else { 0 };
                for &byte in v {
                    x = (x << 8) | i64::from(byte);
                }
                Value::Int(x)
            }
            7 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(v);
                Value::Real(f64::from_be_bytes(a))
            }
            n if n % 2 == 0 => Value::Blob(v.to_vec()),
            _ => Value::Text(String::from_utf8_lossy(v).into_owned()),
        });
    }
    Ok(out)
}

/// Column names of a `CREATE TABLE` statement, in order, and which one (if
/// any) is an `INTEGER PRIMARY KEY` (the rowid). Table constraints are
/// skipped. `None` if the statement has no column list.
pub fn parse_columns(sql: &str) -> Option<(Vec<String>, Option<usize>)> {
    let open = sql.find('(')?;
    let body = &sql[open + 1..];
    let mut items = Vec::new();
    let (mut depth, mut start, mut quote) = (0usize, 0usize, None::<char>);
    let mut end = None;
    for (i, c) in body.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '`' | '\'') => quote = Some(c),
            (None, '[') => quote = Some(']'),
            (None, '(') => depth += 1,
            (None, ')') if depth == 0 => {
                items.push(&body[start..i]);
                end = Some(i);
                break;
            }
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                items.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    end?;
    let mut cols = Vec::new();
    let mut rowid = None;
    let mut types = Vec::new();
    let mut table_pk = None;
    for item in items {
        let item = item.trim();
        let first = item.split_whitespace().next().unwrap_or("");
        let upper = first.to_ascii_uppercase();
        if upper.starts_with("PRIMARY") {
            // `PRIMARY KEY (id)` on one INTEGER column makes it the rowid too.
            let inner = item.split_once('(').and_then(|(_, r)| r.split_once(')'));
            if let Some((list, _)) = inner.filter(|(l, _)| !l.contains(',')) {
                table_pk = Some(unquote(list.trim()).0);
            }
            continue;
        }
        if matches!(
            upper.as_str(),
            "CONSTRAINT" | "UNIQUE" | "CHECK" | "FOREIGN"
        ) {
            continue;
        }
        let name = unquote(item);
        let rest = item[name.1..].to_ascii_lowercase();
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.first() == Some(&"integer") && words.windows(2).any(|w| w == ["primary", "key"]) {
            rowid = Some(cols.len());
        }
        types.push(words.first() == Some(&"integer"));
        cols.push(name.0);
    }
    if let Some(pk) = table_pk {
        if let Some(i) = cols.iter().position(|c| c.eq_ignore_ascii_case(&pk)) {
            if types.get(i) == Some(&true) {
                rowid = rowid.or(Some(i));
            }
        }
    }
    Some((cols, rowid))
}

/// The leading identifier of `s` without its quotes, and how many bytes it took.
fn unquote(s: &str) -> (String, usize) {
    let close = match s.chars().next() {
        Some('"') => '"',
        Some('`') => '`',
        Some('[') => ']',
        Some('\'') => '\'',
        _ => {
            let n = s.find(char::is_whitespace).unwrap_or(s.len());
            return (s[..n].to_string(), n);
        }
    };
    match s[1..].find(close) {
        Some(i) => (s[1..1 + i].to_string(), i + 2),
        None => (s[1..].to_string(), s.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(varint(&[0x05], 0).unwrap(), (5, 1));
        assert_eq!(varint(&[0x81, 0x00], 0).unwrap(), (128, 2));
        assert_eq!(varint(&[0xff; 9], 0).unwrap(), (u64::MAX, 9));
        assert!(varint(&[0x81], 0).is_err());
    }

    #[test]
    fn columns() {
        let (c, r) = parse_columns(
            "CREATE TABLE `nodes` (`id` integer PRIMARY KEY AUTOINCREMENT,`machine_key` text,\
             `given_name` varchar(63),CONSTRAINT `fk` FOREIGN KEY (`user_id`) REFERENCES `users`(`id`))",
        )
        .unwrap();
        assert_eq!(c, ["id", "machine_key", "given_name"]);
        assert_eq!(r, Some(0));
        let (c, r) = parse_columns("CREATE TABLE migrations(id text,PRIMARY KEY(id))").unwrap();
        assert_eq!((c, r), (vec!["id".to_string()], None));
        let (c, r) = parse_columns(
            "CREATE TABLE \"users\" (`id` integer,`name` text UNIQUE,PRIMARY KEY (`id`))",
        )
        .unwrap();
        assert_eq!((c.len(), r), (2, Some(0)));
        assert!(parse_columns("CREATE TABLE x").is_none());
    }

    #[test]
    fn records() {
        // header 4: types NULL, int8, text(2); values: 0xff, "hi"
        let r = parse_record(&[4, 0, 1, 17, 0xff, b'h', b'i']).unwrap();
        assert_eq!(
            r,
            vec![Value::Null, Value::Int(-1), Value::Text("hi".into())]
        );
        assert!(parse_record(&[4, 0, 1, 19, 0xff, b'h']).is_err());
        assert!(parse_record(&[9, 0]).is_err());
        assert!(parse_record(&[2, 10]).is_err());
    }

    #[test]
    fn rejects_garbage() {
        let e = |b: &[u8]| Db::open(b).err().unwrap().0;
        assert!(e(b"hello").contains("shorter"));
        assert!(e(&[0u8; 200]).contains("magic"));
        let mut h = b"SQLite format 3\0".to_vec();
        h.extend_from_slice(&[0x03, 0x00]);
        h.resize(512, 0);
        assert!(e(&h).contains("page size"));
    }
}
