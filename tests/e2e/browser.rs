//! Debian's Chromium, headless, driven over the DevTools protocol (JSON
//! commands on a WebSocket): enough to open a page, press keys, read the
//! page and take a screenshot. Each browser has its own profile directory
//! in the test's scratch directory and is stopped (by PID) when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::common::Scratch;

pub(crate) struct Browser {
    // Held for its Drop: the browser stops with this value.
    _child: Chromium,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Browser {
    /// A headless Chromium with a 1366×768 window, on a blank page.
    pub(crate) fn start(scratch: &Scratch) -> Self {
        let profile = scratch.path("chromium-profile");
        let mut child = Command::new("/usr/bin/chromium")
            // Its own process group: every process it starts is stopped
            // with it.
            .process_group(0)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1366,768",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                // The node's ICE-lite candidate is on 127.0.0.1 in tests;
                // WebRTC leaves loopback out unless told.
                "--allow-loopback-in-peer-connection",
                "--autoplay-policy=no-user-gesture-required",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (scripts/test installs Debian's chromium)");
        let stderr = child.stderr.take().expect("stderr");
        // Stopped from here on, whatever fails next.
        let child = Chromium(child);
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium's DevTools endpoint");
        let port: u16 = url
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("DevTools port");
        let page_url = page_target(port);
        let (page, _) = tungstenite::connect(page_url.as_str()).expect("DevTools page socket");
        // A command the browser never answers fails the test, not hangs it.
        if let MaybeTlsStream::Plain(s) = page.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("read timeout");
        }
        let mut b = Self {
            _child: child,
            page,
            next: 0,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Sends a command and returns its result (events met meanwhile are
    /// dropped); panics on a protocol error.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::text(msg.to_string()))
            .expect("send to chromium");
        loop {
            let m = self
                .page
                .read()
                .unwrap_or_else(|e| panic!("{method}: no answer from chromium: {e}"));
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` and waits until its document has loaded.
    pub(crate) fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for("document.readyState === 'complete'", "the page loaded");
    }

    /// The value of JavaScript `expr` in the page (promises awaited).
    pub(crate) fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page (15 s at most).
    pub(crate) fn wait_for(&mut self, expr: &str, what: &str) {
        let start = Instant::now();
        while self.eval(&format!("Boolean({expr})")) != json!(true) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{what}: {expr}\npage: {}",
                self.eval("document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Presses a key as a keyboard would (`Tab`, `Enter`, `Space`,
    /// `ArrowDown`), with `shift` for Shift+Tab.
    pub(crate) fn key(&mut self, key: &str, shift: bool) {
        let (code, vk, text) = match key {
            "Tab" => ("Tab", 9, ""),
            "Enter" => ("Enter", 13, "\r"),
            "Space" => ("Space", 32, " "),
            "ArrowDown" => ("ArrowDown", 40, ""),
            other => panic!("no key {other}"),
        };
        let key_name = if key == "Space" { " " } else { key };
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({
                "type": kind,
                "key": key_name,
                "code": code,
                "windowsVirtualKeyCode": vk,
                "nativeVirtualKeyCode": vk,
                "modifiers": if shift { 8 } else { 0 },
            });
            if kind == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }

    /// Types `text` into the focused field.
    pub(crate) fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
    }

    /// The id of the focused element.
    pub(crate) fn focused(&mut self) -> String {
        self.eval("document.activeElement ? document.activeElement.id : ''")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Tabs until the element `id` has the focus (at most 30 presses):
    /// the page can be driven by a keyboard alone.
    pub(crate) fn tab_to(&mut self, id: &str) {
        for _ in 0..30 {
            if self.focused() == id {
                return;
            }
            self.key("Tab", false);
        }
        panic!("#{id} is not reachable with Tab");
    }

    /// axe-core's serious and critical WCAG 2 A/AA violations on the page
    /// as it is now (`id: how many elements`): the script comes from
    /// `CENTRALINO_AXE` (scripts/test fetches it) or the build directory.
    pub(crate) fn accessibility_violations(&mut self) -> Vec<String> {
        let path = std::env::var("CENTRALINO_AXE").unwrap_or_else(|_| {
            format!(
                "{}/target/node/node_modules/axe-core/axe.min.js",
                env!("CARGO_MANIFEST_DIR")
            )
        });
        let axe = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("axe-core at {path} (scripts/test fetches it): {e}"));
        self.eval(&format!("{axe}\n;true"));
        let found = self.eval(
            "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}})
               .then(r => r.violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ': ' + v.nodes.length))",
        );
        found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_else(|| panic!("axe-core did not answer: {found}"))
    }

    /// The node's session cookie as the browser keeps it (DevTools sees
    /// HttpOnly cookies; the page's script does not).
    pub(crate) fn session_cookie(&mut self) -> Option<Value> {
        let r = self.call("Network.getAllCookies", json!({}));
        r["cookies"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "centralino_session")
            .cloned()
    }

    /// A PNG of the page as it is now, `name` in the test's scratch
    /// directory, and in `CENTRALINO_SCREENSHOTS` when set (for a note).
    pub(crate) fn screenshot(&mut self, scratch: &Scratch, name: &str) {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64");
        std::fs::write(scratch.path(name), &png).expect("write screenshot");
        if let Ok(dir) = std::env::var("CENTRALINO_SCREENSHOTS") {
            let _ = std::fs::write(std::path::Path::new(&dir).join(name), &png);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.page.close(None);
    }
}

/// The browser's process group, stopped (by its PID) when dropped.
struct Chromium(Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The WebSocket URL of the browser's first page (from `/json/list`).
fn page_target(port: u16) -> String {
    let start = Instant::now();
    loop {
        let body = http_get(port, "/json/list");
        let json = body.as_str();
        if let Ok(Value::Array(targets)) = serde_json::from_str::<Value>(json)
            && let Some(url) = targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        {
            return url.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no page target: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body of `GET path` from the DevTools endpoint (HTTP/1.1 with
/// `Content-Length`: the endpoint keeps the connection open and does not
/// speak HTTP/1.0).
fn http_get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                .unwrap_or(0);
            if rest.len() >= len {
                return rest[..len].to_owned();
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return String::new(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
