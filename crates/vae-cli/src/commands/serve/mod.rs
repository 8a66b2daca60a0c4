//! `vae serve`: a page on 127.0.0.1 to explore a trained model — the run's curves (live while
//! it trains), samples with a temperature slider, sliders along the latent's main directions,
//! interpolations, and a canvas whose drawing is encoded and reconstructed.
//!
//! axum on a small tokio runtime answers HTTP; one worker thread owns the model
//! ([`explorer::Explorer`]) and runs the jobs the handlers send it, one at a time, so
//! concurrent requests are safe. The page, its script and its style are compiled into the
//! binary; no path from a request reaches the file system (the run's `metrics.csv` is the one
//! file read, at a path fixed at start-up).
//!
//! What faces the outside is bounded ([`guard`] and [`serve_http`]): only requests addressed
//! to the bound address (no DNS rebinding) from the page itself (no foreign `Origin`) are
//! answered, and off loopback only with the token printed at start-up; the model's queue holds
//! [`QUEUE`] jobs and drops those whose client has gone; hyper's header-read timeout, a
//! request timeout and a connection cap bound what slow or many clients hold; a panic on the
//! model's thread answers 500 for its request only.

mod explorer;
mod guard;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use vae_model::latent;

use crate::args::ServeArgs;
use crate::grid::Png;
use explorer::{Explorer, RELOAD_CHECK};
use guard::Guard;

/// Jobs that may wait for the model; a request that finds the queue full is answered 503.
const QUEUE: usize = 16;
/// How long a request waits for room in a full queue before it is answered 503.
const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The longest a request may take, waiting for the model included (then 503).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a client may take to send a request's headers, and the longest an idle
/// keep-alive connection is held (hyper's header-read timeout covers both).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections held at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// The page's policy: its own script, style, images (and `data:` ones: the favicon and the
/// encoded drawings) and requests; nothing inline, nothing framed, no forms.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The largest request body accepted (a drawn 28×28 image as JSON is about 6 KiB; a 64×64
/// colour one under 100 KiB).
const MAX_BODY: usize = 256 * 1024;

/// Samples' temperature range.
const TEMPERATURE: (f64, f64) = (0.0, 2.0);
/// How far a slider moves, in standard deviations.
const MAX_COORD: f64 = 5.0;
/// Interpolation steps allowed.
const STEPS: (i64, i64) = (2, 32);
/// Nearest test images returned for a drawing.
const NEAREST: usize = 6;

const INDEX_HTML: &str = include_str!("page/index.html");
const ERRORS_JS: &str = include_str!("page/errors.js");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// An answer with a status and a one-sentence message, as JSON `{"error": …}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self(r.status(), r.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self(r.status(), r.body_text())
    }
}

/// A request's work for the model's thread.
trait Job: Send {
    /// Whether the request's client has gone (its handler was dropped): the job is skipped.
    fn abandoned(&self) -> bool;
    /// Runs the work and sends its answer to the handler.
    fn run(self: Box<Self>, e: &mut Explorer);
}

/// A [`Job`] that answers through a oneshot channel.
struct Call<T, F> {
    answer: tokio::sync::oneshot::Sender<Result<T, ApiError>>,
    work: F,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: FnOnce(&mut Explorer) -> Result<T, ApiError> + Send,
{
    fn abandoned(&self) -> bool {
        self.answer.is_closed()
    }

    fn run(self: Box<Self>, e: &mut Explorer) {
        let _ = self.answer.send((self.work)(e));
    }
}

/// What the model's thread has done, for the test hooks.
#[derive(Debug, Default)]
struct JobCounts {
    ran: AtomicU64,
    skipped: AtomicU64,
    panicked: AtomicU64,
}

/// What the handlers share: the worker's queue, the run's name and its `metrics.csv`.
#[derive(Clone)]
struct AppState {
    jobs: mpsc::SyncSender<Box<dyn Job>>,
    counts: Arc<JobCounts>,
    /// `--directions`: the most slider directions a model can have.
    max_directions: usize,
    run: String,
    metrics: PathBuf,
}

impl AppState {
    /// Runs `f` on the model's thread and returns its answer: 503 when the queue is full, 500
    /// when `f` panicked.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Explorer) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn Job> = Box::new(Call {
            answer: tx,
            work: f,
        });
        // A full queue often holds jobs whose clients have gone, which the worker drops at
        // once: wait a little for room before answering 503. The wait is a short sleep between
        // tries rather than an async channel's queue of senders: a handler whose client leaves
        // while it sleeps is dropped and never queues its job, where a woken sender would
        // queue it at once (measured: 3 to 12 of 300 abandoned jobs ran that way, 0 to 3 so).
        let deadline = Instant::now() + QUEUE_WAIT;
        let mut job = job;
        loop {
            match self.jobs.try_send(job) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(j)) if Instant::now() < deadline => {
                    job = j;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(mpsc::TrySendError::Full(_)) => {
                    return Err(ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the model is busy ({QUEUE} requests are waiting): try again shortly"
                        ),
                    ));
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    return Err(ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the model's worker thread has stopped: restart vae serve".into(),
                    ));
                }
            }
        }
        rx.await.map_err(|_| model_failed())?
    }
}

/// A model failure: the server's fault, not the request's. The cause goes to the log, not to
/// the client.
fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!("a request failed: {e:#}");
    model_failed()
}

/// The 500 answer of a request the model failed on (an error or a panic), without its cause.
fn model_failed() -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the model failed on this request (vae serve's log says why)".into(),
    )
}

/// A PNG answer, with the model's time in a `Server-Timing` header.
fn png(result: (Png, f64)) -> Response {
    let (png, ms) = result;
    (
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (
                header::HeaderName::from_static("server-timing"),
                format!("model;dur={ms:.1}"),
            ),
        ],
        png.bytes,
    )
        .into_response()
}

/// Runs `f` and measures it in milliseconds.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64), ApiError> {
    let start = Instant::now();
    let out = f().map_err(internal)?;
    Ok((out, start.elapsed().as_secs_f64() * 1e3))
}

fn check_index(e: &Explorer, name: &str, index: usize) -> Result<(), ApiError> {
    if index >= e.test_len() {
        return Err(ApiError::bad(format!(
            "{name} = {index} is out of range: the test set has {} images (0 to {})",
            e.test_len(),
            e.test_len() - 1
        )));
    }
    Ok(())
}

fn check_range(name: &str, v: f64, (lo, hi): (f64, f64)) -> Result<(), ApiError> {
    if !(v.is_finite() && (lo..=hi).contains(&v)) {
        return Err(ApiError::bad(format!(
            "{name} = {v} is out of range: it must be a number from {lo} to {hi}"
        )));
    }
    Ok(())
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn errors_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        ERRORS_JS,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such page".into())
}

async fn info(State(s): State<AppState>) -> Result<Json<explorer::Info>, ApiError> {
    let run = s.run.clone();
    Ok(Json(s.call(move |e| Ok(e.info(&run))).await?))
}

/// The run's `metrics.csv` as rows of numbers (null where a cell is empty): read on every
/// request, so the page follows a run that is still training.
async fn metrics(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let text = match tokio::fs::read_to_string(&s.metrics).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(internal(anyhow::anyhow!(
                "cannot read {}: {e}",
                s.metrics.display()
            )));
        }
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let rows: Vec<serde_json::Value> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let row: serde_json::Map<String, serde_json::Value> = header
                .iter()
                .zip(line.split(','))
                .map(|(k, v)| {
                    let v = v.parse::<f64>().ok().filter(|x| x.is_finite());
                    (k.to_string(), serde_json::json!(v))
                })
                .collect();
            serde_json::Value::Object(row)
        })
        .collect();
    Ok(Json(serde_json::json!({ "epochs": rows })))
}

#[derive(Deserialize)]
struct SampleQuery {
    temperature: Option<f64>,
    seed: Option<u64>,
}

async fn samples(
    State(s): State<AppState>,
    q: Result<Query<SampleQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let t = q.temperature.unwrap_or(1.0);
    check_range("temperature", t, TEMPERATURE)?;
    let seed = q.seed.unwrap_or(0);
    Ok(png(s.call(move |e| timed(|| e.samples(t, seed))).await?))
}

#[derive(Deserialize)]
struct ImageQuery {
    index: usize,
}

async fn test_image(
    State(s): State<AppState>,
    q: Result<Query<ImageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    Ok(png(s
        .call(move |e| {
            check_index(e, "index", q.index)?;
            timed(|| e.test_png(q.index))
        })
        .await?))
}

#[derive(Deserialize)]
struct ExploreQuery {
    index: usize,
    /// Comma-separated slider positions, in standard deviations.
    #[serde(default)]
    coords: String,
}

async fn explore(
    State(s): State<AppState>,
    q: Result<Query<ExploreQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    // No model has more slider directions than --directions: more values are refused here,
    // before they are parsed or queued (the model's thread checks its own count).
    let given = q.coords.split(',').filter(|c| !c.trim().is_empty()).count();
    if given > s.max_directions {
        return Err(ApiError::bad(format!(
            "coords has {given} values, but this server has at most {} slider directions",
            s.max_directions
        )));
    }
    let coords = q
        .coords
        .split(',')
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            let v: f64 = c.trim().parse().map_err(|_| {
                ApiError::bad(format!(
                    "coords: {c:?} is not a number (expected e.g. coords=0.5,-1,0)"
                ))
            })?;
            check_range("a coordinate", v, (-MAX_COORD, MAX_COORD))?;
            Ok(v)
        })
        .collect::<Result<Vec<f64>, ApiError>>()?;
    Ok(png(s
        .call(move |e| {
            check_index(e, "index", q.index)?;
            if coords.len() > e.direction_count() {
                return Err(ApiError::bad(format!(
                    "coords has {} values, but the model has {} slider directions",
                    coords.len(),
                    e.direction_count()
                )));
            }
            timed(|| e.explore(q.index, &coords))
        })
        .await?))
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum PathMode {
    Linear,
    Spherical,
}

#[derive(Deserialize)]
struct InterpolateQuery {
    a: usize,
    b: usize,
    steps: Option<i64>,
    mode: Option<PathMode>,
}

async fn interpolate(
    State(s): State<AppState>,
    q: Result<Query<InterpolateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let steps = q.steps.unwrap_or(8);
    if !(STEPS.0..=STEPS.1).contains(&steps) {
        return Err(ApiError::bad(format!(
            "steps = {steps} is out of range: it must be from {} to {}",
            STEPS.0, STEPS.1
        )));
    }
    let path = match q.mode.unwrap_or(PathMode::Linear) {
        PathMode::Linear => latent::Path::Linear,
        PathMode::Spherical => latent::Path::Spherical,
    };
    Ok(png(s
        .call(move |e| {
            check_index(e, "a", q.a)?;
            check_index(e, "b", q.b)?;
            timed(|| e.interpolate(q.a, q.b, steps, path))
        })
        .await?))
}

#[derive(Deserialize)]
struct EncodeBody {
    /// Row-major values in [0, 1]: H·W (grey) or C·H·W.
    pixels: Vec<f32>,
}

async fn encode(
    State(s): State<AppState>,
    body: Result<Json<EncodeBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body?;
    if let Some(v) = body
        .pixels
        .iter()
        .find(|v| !(v.is_finite() && (0.0..=1.0).contains(*v)))
    {
        return Err(ApiError::bad(format!(
            "pixels: {v} is out of range: every value must be from 0 to 1"
        )));
    }
    let ((png, nearest), ms) = s
        .call(move |e| {
            let [c, h, w] = e.image_shape();
            let n = body.pixels.len() as i64;
            if n != h * w && n != c * h * w {
                return Err(ApiError::bad(format!(
                    "pixels has {n} values, but the model's images are {c}x{h}x{w}: send {} (grey) or {} values",
                    h * w,
                    c * h * w
                )));
            }
            timed(|| e.encode(&body.pixels, NEAREST))
        })
        .await?;
    let data = base64::engine::general_purpose::STANDARD.encode(&png.bytes);
    let nearest: Vec<serde_json::Value> = nearest
        .into_iter()
        .map(|(index, distance)| serde_json::json!({ "index": index, "distance": distance }))
        .collect();
    Ok(Json(serde_json::json!({
        "reconstruction": format!("data:image/png;base64,{data}"),
        "nearest": nearest,
        "model_ms": ms,
    })))
}

/// The test hooks' routes (`--test-hooks`): the model thread's job counts, and a job that
/// panics.
fn test_routes() -> Router<AppState> {
    async fn counts(State(s): State<AppState>) -> Json<serde_json::Value> {
        let c = &s.counts;
        Json(serde_json::json!({
            "ran": c.ran.load(Ordering::Relaxed),
            "skipped": c.skipped.load(Ordering::Relaxed),
            "panicked": c.panicked.load(Ordering::Relaxed),
            "queue": QUEUE,
        }))
    }
    async fn panic(State(s): State<AppState>) -> Result<Json<()>, ApiError> {
        s.call(|_| -> Result<(), ApiError> { panic!("a panic asked for by /api/test/panic") })
            .await
            .map(Json)
    }
    Router::new()
        .route("/api/test/counts", get(counts))
        .route("/api/test/panic", post(panic))
}

/// The routes behind the [`guard`]; every other path is a 404, bodies over [`MAX_BODY`] a 413,
/// requests over [`REQUEST_TIMEOUT`] a 503. Every answer carries the page's security headers.
fn app(state: AppState, guard: Arc<Guard>, test_hooks: bool) -> Router {
    let mut routes = Router::new()
        .route("/", get(index))
        .route("/errors.js", get(errors_js))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/api/info", get(info))
        .route("/api/metrics", get(metrics))
        .route("/api/samples.png", get(samples))
        .route("/api/test.png", get(test_image))
        .route("/api/explore.png", get(explore))
        .route("/api/interpolate.png", get(interpolate))
        .route("/api/encode", post(encode));
    if test_hooks {
        routes = routes.merge(test_routes());
    }
    let header = |name, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(header(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(header(header::REFERRER_POLICY, "no-referrer"))
        .layer(header(
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ))
        .with_state(state)
}

/// Starts the model's thread: loads the model and encodes the test set, then answers jobs
/// until the server goes; between jobs it reloads a checkpoint that changed. A job that
/// panics answers 500 (its channel is dropped) and the thread goes on to the next.
fn spawn_worker(a: &ServeArgs, counts: Arc<JobCounts>) -> Result<mpsc::SyncSender<Box<dyn Job>>> {
    let checkpoint = a.model().path()?;
    let device = a.device.resolve()?;
    let (data, directions) = (a.data.clone(), a.directions);
    let (jobs, queue) = mpsc::sync_channel::<Box<dyn Job>>(QUEUE);
    let (ready_tx, ready) = mpsc::channel::<Result<()>>();
    std::thread::Builder::new()
        .name("vae-serve-model".into())
        .spawn(move || {
            let mut explorer = match Explorer::load(&checkpoint, &data, device, directions) {
                Ok(e) => {
                    let _ = ready_tx.send(Ok(()));
                    e
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            loop {
                match queue.recv_timeout(RELOAD_CHECK) {
                    Ok(job) if job.abandoned() => {
                        counts.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(job) => {
                        counts.ran.fetch_add(1, Ordering::Relaxed);
                        let explorer = &mut explorer;
                        let run = std::panic::AssertUnwindSafe(move || job.run(explorer));
                        if std::panic::catch_unwind(run).is_err() {
                            counts.panicked.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                "a request panicked on the model's thread; it was answered 500 and the next is served"
                            );
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                match explorer.reload_if_changed() {
                    Ok(true) => tracing::info!("reloaded the changed checkpoint"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("{e:#}"),
                }
            }
        })
        .context("cannot start the model's thread")?;
    ready
        .recv()
        .context("the model's thread stopped while loading")??;
    Ok(jobs)
}

/// Serves `app` on `listener` until Ctrl-C: each connection through hyper's HTTP/1 with its
/// timer (so its header-read timeout holds), at most [`MAX_CONNECTIONS`] at once.
async fn serve_http(listener: tokio::net::TcpListener, app: Router) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.context("the connection cap closed")?,
            _ = &mut ctrl_c => return Ok(()),
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, then go on accepting.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut ctrl_c => return Ok(()),
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// Random hex from the OS, for the remote token.
fn random_token() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the access token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn run(a: ServeArgs) -> Result<u8> {
    if a.directions < 1 {
        bail!("--directions must be at least 1, got {}", a.directions);
    }
    let remote = !a.host.is_loopback();
    if remote && !a.allow_remote {
        bail!(
            "--host {} makes the page reachable from other machines: pass --allow-remote as well (every request then needs the token printed in the URL), or leave --host at 127.0.0.1",
            a.host
        );
    }
    let token = if remote { Some(random_token()?) } else { None };
    let started = Instant::now();
    let counts = Arc::new(JobCounts::default());
    let jobs = spawn_worker(&a, counts.clone())?;
    let state = AppState {
        jobs,
        counts,
        max_directions: a.directions as usize,
        run: a.run.display().to_string(),
        metrics: a.model().out_dir().join(vae_train::files::METRICS),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(a.host, a.port);
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr}: is the port in use? (pass --port N, or --port 0 for any free port)")
        })?;
        let addr = listener.local_addr()?;
        let guard = Arc::new(Guard::new(addr, token.clone()));
        let url = match &token {
            Some(t) => format!("http://{addr}/?token={t}"),
            None => format!("http://{addr}/"),
        };
        if remote {
            eprintln!(
                "warning: listening on {}, reachable from other machines; every request needs the token in this URL (keep it private)",
                addr.ip()
            );
        }
        println!(
            "serving {} at {url} (model loaded in {:.1} s; Ctrl-C to stop)",
            a.run.display(),
            started.elapsed().as_secs_f64()
        );
        use std::io::Write as _;
        std::io::stdout().flush()?;
        serve_http(listener, app(state, guard, a.test_hooks))
            .await
            .context("the HTTP server failed")
    })?;
    Ok(0)
}
