//! Headless Chromium driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands in on fd 3, answers out on fd 4,
//! each a JSON text ended by a NUL byte). Uses the system browser (Debian's
//! `chromium`); nothing is downloaded and no driver crate is needed.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub struct Browser {
    child: Child,
    input: ChildStdin,
    answers: Receiver<Value>,
    next_id: u64,
    session: String,
    profile: PathBuf,
    /// Screenshots go here (target/web-screenshots).
    pub shots: PathBuf,
}

/// The browser binary, or None (with the reason) when it is not installed.
pub fn chromium() -> Result<PathBuf, String> {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    Err("chromium is not installed (apt-get install chromium)".into())
}

/// Skips (printing why) outside CI; fails under CI=true.
pub fn need_chromium() -> Option<PathBuf> {
    match chromium() {
        Ok(p) => Some(p),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

impl Browser {
    pub fn launch(bin: &Path, tag: &str) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "tinyscale-chromium-{tag}-{}-{}",
            std::process::id(),
            tinyscale::keys::to_hex(&tinyscale::keys::random32()[..4])
        ));
        std::fs::create_dir_all(&profile).unwrap();
        // sh moves the pipes to the fds Chromium expects (3 in, 4 out), so
        // no unsafe pre_exec is needed.
        let script = format!(
            "exec '{}' --headless --no-sandbox --disable-gpu --disable-background-networking \
             --disable-component-update --disable-sync --no-first-run --disable-dev-shm-usage \
             --user-data-dir='{}' --remote-debugging-pipe --window-size=1100,900 about:blank \
             3<&0 4>&1 0</dev/null 1>&2",
            bin.display(),
            profile.display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let input = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            loop {
                let mut msg = Vec::new();
                match r.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                msg.pop();
                if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let mut b = Browser {
            child,
            input,
            answers,
            next_id: 0,
            session: String::new(),
            profile,
            shots,
        };
        let t = b.call_browser("Target.createTarget", json!({"url": "about:blank"}));
        let target = t["targetId"].as_str().unwrap().to_string();
        let a = b.call_browser(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = a["sessionId"].as_str().unwrap().to_string();
        b.call("Page.enable", json!({}));
        b.call("Network.enable", json!({}));
        b
    }

    fn send(&mut self, method: &str, params: Value, session: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if session {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.input.write_all(&bytes).unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let v = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, false)
    }

    /// A DevTools command in the page's session.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, true)
    }

    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait("document.readyState === 'complete'", "page load");
    }

    /// Evaluates `js` in the page (promises awaited); its JSON value.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("script failed: {js}\n{e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits (up to 30 s) until `js` is true in the page.
    pub fn wait(&mut self, js: &str, what: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(&format!(
                "(() => {{ try {{ return !!({js}); }} catch (e) {{ return false; }} }})()"
            ));
            if v == json!(true) {
                return;
            }
            if Instant::now() > end {
                let body = self.eval("document.body ? document.body.innerText : ''");
                panic!("timed out waiting for {what} ({js}); page text:\n{body}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Text of the first element matching a CSS selector.
    pub fn text(&mut self, sel: &str) -> String {
        let v = self.eval(&format!(
            "(document.querySelector({}) || {{}}).textContent || ''",
            json!(sel)
        ));
        v.as_str().unwrap_or("").to_string()
    }

    pub fn click(&mut self, sel: &str) {
        let ok = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
            json!(sel)
        ));
        assert_eq!(ok, json!(true), "no element {sel}");
    }

    /// Sets an input's value as if typed (fires `input`).
    pub fn fill(&mut self, sel: &str, value: &str) {
        let ok = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.value = {}; e.dispatchEvent(new Event('input')); return true; }})()",
            json!(sel),
            json!(value)
        ));
        assert_eq!(ok, json!(true), "no element {sel}");
    }

    /// Writes a PNG of the viewport to target/web-screenshots/NAME.png.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64_decode(r["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let p = self.shots.join(format!("{name}.png"));
        std::fs::write(&p, png).unwrap();
        p
    }

    /// The browser's cookies for the page's origin.
    pub fn cookies(&mut self) -> Vec<Value> {
        let r = self.call("Network.getCookies", json!({}));
        r["cookies"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Standard base64 (what DevTools sends screenshots in).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut n) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = acc << 6 | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
    }
    out
}
