//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! NUL-separated JSON messages on file descriptors 3, to the browser, and 4, from it), so no
//! websocket client is needed: loads the page, uploads an image through its file input, waits for
//! the rendered result and takes a screenshot.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// What the page showed: `state` (`done` or `error`), `error`, `top_label`, `labels`, `model`,
/// `timing` and `seen` (the model's view, width and height).
pub fn browse(url: &str, image: &Path, screenshot: &Path) -> Result<Value> {
    let profile = tempfile::tempdir()?;
    let mut browser = Browser::start(profile.path())?;
    let result = run(&mut browser, url, &std::path::absolute(image)?, screenshot);
    browser.close();
    result
}

fn chromium() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .context("no chromium on PATH: `cargo xtask setup` installs Debian's chromium where apt-get exists")
}

/// A pipe whose two ends close on exec, both above the descriptors the child gets (3 and 4),
/// so that moving one end to 3 or 4 in the child never overwrites the other.
fn pipe() -> Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    let mut high = [0; 2];
    for (from, to) in fds.iter().zip(&mut high) {
        // SAFETY: `from` is a descriptor this function owns; it is closed once duplicated.
        *to = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, 10) };
        // SAFETY: as above.
        unsafe { libc::close(*from) };
        if *to < 0 {
            return Err(std::io::Error::last_os_error()).context("fcntl(F_DUPFD_CLOEXEC)");
        }
    }
    Ok((high[0], high[1]))
}

struct Browser {
    process: Child,
    to_browser: File,
    from_browser: File,
    buffer: Vec<u8>,
    next_id: u64,
}

impl Browser {
    fn start(profile: &Path) -> Result<Self> {
        let (child_reads, to_browser) = pipe()?;
        let (from_browser, child_writes) = pipe()?;
        let mut command = Command::new(chromium()?);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=900,600",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: dup2 is async-signal-safe; the copies at 3 and 4 do not close on exec, the
        // originals (close-on-exec) do.
        unsafe {
            command.pre_exec(move || {
                for (fd, target) in [(child_reads, 3), (child_writes, 4)] {
                    if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let spawned = command.spawn().context("starting chromium");
        // SAFETY: the child's ends are this function's to close, spawned or not.
        unsafe {
            libc::close(child_reads);
            libc::close(child_writes);
        }
        Ok(Self {
            process: spawned?,
            // SAFETY: each descriptor came from `pipe` and is owned by the File from here on.
            to_browser: unsafe { File::from_raw_fd(to_browser) },
            from_browser: unsafe { File::from_raw_fd(from_browser) },
            buffer: Vec::new(),
            next_id: 0,
        })
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Result<Value> {
        self.next_id += 1;
        let mut message = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .with_context(|| format!("{method}: writing"))?;
        // Events arrive between replies; only this call's reply matters here.
        loop {
            let reply = self
                .read()
                .with_context(|| format!("{method}: waiting for the reply"))?;
            if reply["id"] == self.next_id {
                if let Some(error) = reply.get("error") {
                    bail!("{method}: {error}");
                }
                return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
            }
        }
    }

    fn read(&mut self) -> Result<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == 0) {
                let message: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(serde_json::from_slice(&message[..end])?);
            }
            let mut chunk = [0; 1 << 16];
            let n = self.from_browser.read(&mut chunk)?;
            if n == 0 {
                bail!("chromium closed the DevTools pipe");
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    fn close(mut self) {
        let closed = self.send("Browser.close", json!({}), None).is_ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        while closed && Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn run(browser: &mut Browser, url: &str, image: &Path, screenshot: &Path) -> Result<Value> {
    let target = browser.send("Target.createTarget", json!({"url": "about:blank"}), None)?;
    let target = target["targetId"]
        .as_str()
        .context("Target.createTarget: no targetId")?;
    let attached = browser.send(
        "Target.attachToTarget",
        json!({"targetId": target, "flatten": true}),
        None,
    )?;
    let session = attached["sessionId"]
        .as_str()
        .context("Target.attachToTarget: no sessionId")?
        .to_owned();
    let session = Some(session.as_str());
    let evaluate = |browser: &mut Browser, expression: &str| evaluate(browser, session, expression);
    let wait_for = |browser: &mut Browser, expression: &str, what: &str| wait_for(browser, session, expression, what);

    browser.send("Page.enable", json!({}), session)?;
    browser.send("Page.navigate", json!({"url": url}), session)?;
    wait_for(
        browser,
        "document.readyState === 'complete' && !!document.getElementById('file')",
        "the page to load",
    )?;
    wait_for(
        browser,
        "document.getElementById('model').querySelector('code') !== null",
        "the model's details",
    )?;
    let document = browser.send("DOM.getDocument", json!({}), session)?;
    let node = browser.send(
        "DOM.querySelector",
        json!({"nodeId": document["root"]["nodeId"], "selector": "#file"}),
        session,
    )?;
    browser.send(
        "DOM.setFileInputFiles",
        json!({"files": [image], "nodeId": node["nodeId"]}),
        session,
    )?;
    let state = wait_for(
        browser,
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state",
        "the prediction",
    )?;
    // The model's view is a data URL image; let it finish decoding before the screenshot.
    wait_for(
        browser,
        "document.body.dataset.state !== 'done' || document.getElementById('seen').complete",
        "the model's view",
    )?;
    let shot = browser.send(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": true}),
        session,
    )?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().context("Page.captureScreenshot: no data")?)?;
    std::fs::write(screenshot, png).with_context(|| format!("writing {}", screenshot.display()))?;
    let mut read = |expression: &str| evaluate(browser, expression);
    Ok(json!({
        "state": state,
        "error": read("document.getElementById('error').textContent")?,
        "top_label": read("(document.querySelector('#top li[data-rank=\"1\"] .label') || {}).textContent")?,
        "labels": read("[...document.querySelectorAll('#top li')].map(li => [li.querySelector('.label').textContent, li.querySelector('.p').textContent])")?,
        "model": read("document.getElementById('model').textContent")?,
        "timing": read("document.getElementById('timing').textContent")?,
        "seen": read("(() => { const i = document.getElementById('seen'); return [i.naturalWidth, i.naturalHeight]; })()")?,
    }))
}

fn evaluate(browser: &mut Browser, session: Option<&str>, expression: &str) -> Result<Value> {
    let reply = browser.send(
        "Runtime.evaluate",
        json!({"expression": expression, "returnByValue": true}),
        session,
    )?;
    Ok(reply["result"]["value"].clone())
}

/// Polls `expression` until JavaScript would call its value true.
fn wait_for(browser: &mut Browser, session: Option<&str>, expression: &str, what: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let value = evaluate(browser, session, expression)?;
        if !matches!(value, Value::Null | Value::Bool(false)) && value != "" && value != 0 {
            return Ok(value);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = evaluate(browser, session, "document.body && document.body.dataset.state")?;
    bail!("timed out waiting for {what}; page state {state}")
}
