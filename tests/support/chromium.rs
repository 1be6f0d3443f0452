//! A page loaded in Debian's headless Chromium: its DOM after the scripts
//! ran, a screenshot, and the network requests it tried. Every request
//! Chromium makes goes through a proxy on loopback that answers nothing and
//! notes the host asked for (loopback included). Chromium asks for its own
//! services (time, component updates, accounts) whatever the page; a blank
//! page loaded the same way tells those apart, and whatever else is asked
//! for while the page loads is the page's.

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Rendered {
    pub dom: String,
    pub screenshot: PathBuf,
    /// Requests to hosts the blank page did not ask for: the page's own.
    pub page_requests: Vec<String>,
}

/// Counts what Chromium asks the network for.
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (noted, stopping) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 2048];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        let line = String::from_utf8_lossy(&buf[..n]);
                        noted
                            .lock()
                            .unwrap()
                            .push(line.lines().next().unwrap_or_default().to_string());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The host of a proxy request line: `CONNECT h:443 ...` or `GET http://h/...`.
fn host(request: &str) -> String {
    let target = request.split_whitespace().nth(1).unwrap_or_default();
    let target = target.split_once("://").map_or(target, |(_, rest)| rest);
    let authority = target.split('/').next().unwrap_or_default();
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_string()
}

fn chromium(proxy: &Proxy, profile: &Path, url: &str, args: &[&str]) -> String {
    let output = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,1600",
            "--virtual-time-budget=3000",
            "--proxy-bypass-list=<-loopback>",
        ])
        .arg(format!("--proxy-server=http://127.0.0.1:{}", proxy.port))
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.canonicalize().unwrap().display())
}

/// Load `page` (a file) for its DOM and for a screenshot, each in a fresh
/// profile under `out`.
pub fn render(page: &Path, out: &Path) -> Rendered {
    assert!(
        Path::new(CHROMIUM).exists(),
        "no {CHROMIUM}: `cargo xtask setup` installs Debian's chromium package"
    );
    let proxy = Proxy::start();
    let blank = out.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><title>blank</title>").unwrap();
    chromium(
        &proxy,
        &out.join("profile-blank"),
        &file_url(&blank),
        &["--dump-dom"],
    );
    std::thread::sleep(Duration::from_millis(600));
    let browser_own: BTreeSet<String> = proxy.take().iter().map(|r| host(r)).collect();

    let url = file_url(page);
    let dom = chromium(&proxy, &out.join("profile-dom"), &url, &["--dump-dom"]);
    let screenshot = out.join("report.png");
    chromium(
        &proxy,
        &out.join("profile-shot"),
        &url,
        &[&format!("--screenshot={}", screenshot.display())],
    );
    std::thread::sleep(Duration::from_millis(600));
    let page_requests = proxy
        .take()
        .into_iter()
        .filter(|r| !browser_own.contains(&host(r)))
        .collect();
    assert!(screenshot.exists(), "no screenshot");
    Rendered {
        dom,
        screenshot,
        page_requests,
    }
}
