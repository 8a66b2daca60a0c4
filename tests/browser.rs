//! `vae serve`'s page in a real headless Chromium, driven over WebDriver (chromedriver): it
//! loads without errors, the temperature slider changes the samples, a drawing is encoded and
//! reconstructed, and the curves show the run's epochs and follow a run that is training.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); set
//! `VAE_CHROMIUM` and `VAE_CHROMEDRIVER` to use others. Screenshots of each view go to
//! `$VAE_SCREENSHOTS` (default: a folder under cargo's target directory).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use common::{serve, tiny_run};

fn program(var: &str, candidates: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "none of {candidates:?} exists: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver), or set {var}"
            )
        })
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let exe = program(
        "VAE_CHROMEDRIVER",
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&exe)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    driver
}

async fn connect(driver: &Driver) -> Client {
    let chromium = program(
        "VAE_CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1300", "--hide-scrollbars"],
        }),
    );
    // The browser's console, for `console_errors`.
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// Polls the script `js` (which returns a boolean) until it is true.
async fn wait_until(client: &Client, what: &str, js: &str) {
    let start = Instant::now();
    loop {
        let v = client.execute(js, vec![]).await.unwrap();
        if v == json!(true) {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let errors = client.execute("return window.pageErrors", vec![]).await;
            panic!("timed out waiting for {what} (page errors: {errors:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ChromeDriver's command for the browser's console log (`POST /session/{id}/se/log`), which
/// fantoccini does not wrap.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

/// The console's messages at level SEVERE since the last call (errors, failed loads).
async fn console_errors(client: &Client) -> Vec<String> {
    let log = client.issue_cmd(BrowserLog).await.unwrap();
    log.as_array()
        .expect("a list of log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].to_string())
        .collect()
}

/// What the page itself caught (uncaught errors, rejected promises, failed loads) and what its
/// status line says.
async fn page_errors(client: &Client) -> Vec<String> {
    let v = client
        .execute(
            "return window.pageErrors.concat(document.getElementById('status').textContent ? [document.getElementById('status').textContent] : [])",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

async fn shot(client: &Client, id: &str, dir: &Path) -> Vec<u8> {
    let png = client
        .find(Locator::Id(id))
        .await
        .unwrap()
        .screenshot()
        .await
        .unwrap();
    std::fs::write(dir.join(format!("{id}.png")), &png).unwrap();
    png
}

/// Draws a 7 on the pad with the mouse, through WebDriver actions.
async fn draw_seven(client: &Client) {
    client
        .execute(
            "document.getElementById('pad').scrollIntoView({block: 'center'})",
            vec![],
        )
        .await
        .unwrap();
    let pad = client.find(Locator::Id("pad")).await.unwrap();
    // Offsets from the pad's centre: the bar, then the stem.
    let points = [
        (-45.0, -50.0),
        (40.0, -50.0),
        (25.0, -10.0),
        (5.0, 30.0),
        (-8.0, 60.0),
    ];
    let at = |(x, y): (f64, f64), ms: u64| PointerAction::MoveToElement {
        element: pad.clone(),
        duration: Some(Duration::from_millis(ms)),
        x,
        y,
    };
    let mut stroke = MouseActions::new("mouse".into())
        .then(at(points[0], 0))
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        });
    for w in points.windows(2) {
        for k in 1..=8 {
            let t = f64::from(k) / 8.0;
            let p = (
                w[0].0 + t * (w[1].0 - w[0].0),
                w[0].1 + t * (w[1].1 - w[0].1),
            );
            stroke = stroke.then(at(p, 10));
        }
    }
    stroke = stroke.then(PointerAction::Up {
        button: MOUSE_BUTTON_LEFT,
    });
    client.perform_actions(stroke).await.unwrap();
}

fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("VAE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_page_works_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (run, data) = tiny_run(dir.path());
    let server = serve(&run, &data);
    let driver = start_driver();
    let shots = screenshot_dir();
    let url = format!("http://{}/", server.addr);
    let metrics = run.join("metrics.csv");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = connect(&driver).await;
        client.goto(&url).await.unwrap();
        wait_until(&client, "the page to start", "return document.body.dataset.ready === 'true'").await;
        assert_eq!(page_errors(&client).await, Vec::<String>::new());
        assert_eq!(console_errors(&client).await, Vec::<String>::new());

        // The curves show the run's two epochs, one point per series and epoch.
        let points = client.find_all(Locator::Css("#curves circle.val")).await.unwrap();
        assert_eq!(points.len(), 2);
        for (k, p) in points.iter().enumerate() {
            assert_eq!(p.attr("data-epoch").await.unwrap(), Some((k + 1).to_string()));
        }
        let label = client.find(Locator::Id("epochs-label")).await.unwrap();
        assert_eq!(label.text().await.unwrap(), "2 epochs");
        shot(&client, "curves-view", &shots).await;

        // A run that goes on training: a third row in metrics.csv appears on the page.
        let csv = std::fs::read_to_string(&metrics).unwrap();
        let last = csv.lines().last().unwrap().to_string();
        let third = last.replacen("2,", "3,", 1);
        vae_data::write_atomic(&metrics, format!("{csv}{third}\n").as_bytes()).unwrap();
        wait_until(
            &client,
            "the third epoch on the curves",
            "return document.querySelectorAll('#curves circle.val').length === 3",
        )
        .await;

        // The temperature slider changes the samples.
        wait_until(&client, "the first samples", "const i = document.getElementById('samples'); return !!i.dataset.loaded && i.complete && i.naturalWidth > 0").await;
        let before = shot(&client, "samples", &shots).await;
        client
            .execute(
                "const s = document.getElementById('temperature'); s.value = '0.3'; s.dispatchEvent(new Event('input'));",
                vec![],
            )
            .await
            .unwrap();
        wait_until(
            &client,
            "the samples at temperature 0.3",
            "const i = document.getElementById('samples'); return (i.dataset.loaded || '').includes('temperature=0.3') && i.complete",
        )
        .await;
        let after = shot(&client, "samples", &shots).await;
        assert_ne!(before, after, "the samples did not change with the temperature");
        assert_eq!(
            client.find(Locator::Id("temperature-value")).await.unwrap().text().await.unwrap(),
            "0.30"
        );
        shot(&client, "samples-view", &shots).await;

        // The latent sliders decode around a test image.
        wait_until(&client, "the explorer image", "return !!document.getElementById('explore').dataset.loaded").await;
        let sliders = client.find_all(Locator::Css("#sliders input.direction")).await.unwrap();
        assert_eq!(sliders.len(), 2, "a 2-dimensional latent has a slider per dimension");
        client
            .execute(
                "const s = document.querySelector('#sliders input'); s.value = '2.5'; s.dispatchEvent(new Event('input'));",
                vec![],
            )
            .await
            .unwrap();
        wait_until(
            &client,
            "the moved decoding",
            "return (document.getElementById('explore').dataset.loaded || '').includes('coords=2.5,0')",
        )
        .await;
        shot(&client, "explore-view", &shots).await;
        wait_until(&client, "the interpolation", "return !!document.getElementById('interpolation').dataset.loaded").await;
        shot(&client, "interpolate-view", &shots).await;

        // Drawing a stroke on the canvas yields a reconstruction and the nearest test images.
        draw_seven(&client).await;
        wait_until(
            &client,
            "the drawing's reconstruction",
            "const i = document.getElementById('drawn-reconstruction'); return i.dataset.loaded === 'drawing' && i.complete && i.naturalWidth === 28",
        )
        .await;
        wait_until(
            &client,
            "the nearest test images",
            "return [...document.querySelectorAll('#nearest img')].filter(i => i.complete && i.naturalWidth === 28).length === 6",
        )
        .await;
        shot(&client, "draw-view", &shots).await;

        assert_eq!(page_errors(&client).await, Vec::<String>::new());
        assert_eq!(console_errors(&client).await, Vec::<String>::new());
        std::fs::write(shots.join("page.png"), client.screenshot().await.unwrap()).unwrap();
        eprintln!("screenshots in {}", shots.display());
        // The console check sees errors: a request the server refuses is one.
        client
            .execute("return fetch('/no-such-page').then(r => r.status)", vec![])
            .await
            .unwrap();
        let errors = console_errors(&client).await;
        assert!(errors.iter().any(|m| m.contains("404")), "{errors:?}");
        // The page ran under its Content-Security-Policy, and the console check sees its
        // violations: an inline script is refused.
        let policy = client
            .execute(
                "return fetch('/').then(r => r.headers.get('content-security-policy'))",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            policy.as_str().is_some_and(|p| p.contains("script-src 'self'")),
            "{policy:?}"
        );
        client
            .execute(
                "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true'; document.head.appendChild(s); return window.inlineRan === true",
                vec![],
            )
            .await
            .unwrap();
        let ran = client.execute("return window.inlineRan === true", vec![]).await.unwrap();
        assert_eq!(ran, serde_json::Value::Bool(false), "an inline script ran");
        let errors = console_errors(&client).await;
        assert!(
            errors.iter().any(|m| m.contains("Content Security Policy")),
            "{errors:?}"
        );
        client.close().await.unwrap();
    });
}

/// Not a test: the README's picture of the page, of a real run with a drawn 7.
/// `VAE_SERVE_RUN=runs/x VAE_SERVE_DATA=data/mnist VAE_SCREENSHOTS=docs/images cargo test
/// --release -p vae-cli --test browser -- --ignored readme_screenshot`
#[test]
#[ignore = "makes docs/images/serve.png from a trained run; see its doc comment"]
fn readme_screenshot() {
    let var = |v: &str| PathBuf::from(std::env::var_os(v).unwrap_or_else(|| panic!("set {v}")));
    let (run, data) = (var("VAE_SERVE_RUN"), var("VAE_SERVE_DATA"));
    let server = serve(&run, &data);
    let driver = start_driver();
    let shots = screenshot_dir();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = connect(&driver).await;
        client.goto(&format!("http://{}/", server.addr)).await.unwrap();
        wait_until(&client, "the page to start", "return document.body.dataset.ready === 'true'").await;
        client
            .execute(
                "const s = document.querySelectorAll('#sliders input')[0]; s.value = '1.5'; s.dispatchEvent(new Event('input'));",
                vec![],
            )
            .await
            .unwrap();
        draw_seven(&client).await;
        wait_until(
            &client,
            "every picture",
            "return document.getElementById('drawn-reconstruction').dataset.loaded === 'drawing' && [...document.images].every(i => i.complete && i.naturalWidth > 0)",
        )
        .await;
        client.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        std::fs::write(shots.join("serve.png"), client.screenshot().await.unwrap()).unwrap();
        client.close().await.unwrap();
    });
}
