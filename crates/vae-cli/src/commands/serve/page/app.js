// The page of `vae serve`: every picture is drawn by the server's model; this script asks for
// them as the controls move, and draws the training curves from the run's metrics.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let seed = 0;

function showError(message) {
  $("status").textContent = message;
}

async function getJson(url, options) {
  const r = await fetch(url, options);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `${url}: HTTP ${r.status}`);
  return body;
}

// Loads `url` into `img`, one request at a time per image: while one is in flight, only the
// newest of the URLs asked for meanwhile is loaded next. `img.dataset.loaded` is the URL shown.
const pending = new Map();
function setImage(img, url) {
  if (pending.has(img)) {
    pending.set(img, url);
    return;
  }
  pending.set(img, null);
  const done = () => {
    const next = pending.get(img);
    pending.delete(img);
    if (next && next !== url) setImage(img, next);
  };
  img.onload = () => { img.dataset.loaded = url; done(); };
  img.onerror = () => { showError(`could not load ${url}`); done(); };
  img.src = url;
}

// ---- curves -------------------------------------------------------------------------------
const SERIES = [["train_elbo", "train"], ["val_elbo", "val"], ["test_elbo", "test"]];

function drawCurves(rows) {
  const svg = $("curves");
  const W = 640, H = 260, L = 56, R = 12, T = 12, B = 28;
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
  svg.replaceChildren();
  $("epochs-label").textContent = `${rows.length} epoch${rows.length === 1 ? "" : "s"}`;
  if (rows.length === 0) {
    el("text", { x: L, y: H / 2 }, "no finished epoch yet");
    return;
  }
  // The first epochs of a run sit far below the rest: leave them out of the range when there
  // are enough others, and clamp them to the bottom edge.
  const ranged = rows.length >= 4 ? rows.slice(Math.ceil(rows.length / 10)) : rows;
  const values = ranged.flatMap((r) => SERIES.map(([k]) => r[k]).filter((v) => v !== null));
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!(hi > lo)) { lo -= 1; hi += 1; }
  const maxEpoch = Math.max(...rows.map((r) => r.epoch), 2);
  const x = (e) => L + ((e - 1) / (maxEpoch - 1)) * (W - L - R);
  const y = (v) => T + (1 - (Math.max(v, lo) - lo) / (hi - lo)) * (H - T - B);
  el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
  el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
  el("text", { x: 4, y: T + 10 }, hi.toFixed(1));
  el("text", { x: 4, y: H - B }, lo.toFixed(1));
  el("text", { x: L, y: H - 8 }, "epoch 1");
  if (rows.some((r) => SERIES.some(([k]) => r[k] !== null && r[k] < lo))) {
    el("text", { x: W - R - 300, y: H - B - 8 }, "points on the axis: earlier epochs, below the scale");
  }
  el("text", { x: W - R - 60, y: H - 8 }, `epoch ${maxEpoch}`);
  for (const [key, cls] of SERIES) {
    const pts = rows.filter((r) => r[key] !== null);
    if (pts.length === 0) continue;
    el("polyline", { class: cls, points: pts.map((r) => `${x(r.epoch)},${y(r[key])}`).join(" ") });
    for (const r of pts) {
      const c = el("circle", { class: cls, cx: x(r.epoch), cy: y(r[key]), r: 3, "data-epoch": r.epoch });
      const t = document.createElementNS(ns, "title");
      t.textContent = `epoch ${r.epoch}: ${key} ${r[key].toFixed(2)} nats`;
      c.appendChild(t);
    }
  }
}

let lastMetrics = "";
async function refreshCurves() {
  try {
    const m = await getJson("/api/metrics");
    const text = JSON.stringify(m.epochs);
    if (text !== lastMetrics) {
      lastMetrics = text;
      drawCurves(m.epochs);
    }
  } catch (e) {
    showError(`metrics: ${e.message}`);
  }
}

// ---- samples ------------------------------------------------------------------------------
function refreshSamples() {
  const t = Number($("temperature").value);
  $("temperature-value").textContent = t.toFixed(2);
  setImage($("samples"), `/api/samples.png?temperature=${t}&seed=${seed}`);
}

// ---- latent sliders -----------------------------------------------------------------------
function clampIndex(input) {
  const n = info.test_images;
  let i = Math.trunc(Number(input.value));
  if (!Number.isFinite(i) || i < 0) i = 0;
  if (i >= n) i = n - 1;
  input.value = i;
  return i;
}

function buildSliders() {
  const box = $("sliders");
  box.replaceChildren();
  info.direction_std.forEach((sd, k) => {
    const label = document.createElement("label");
    const name = info.directions === "pca" ? `PC ${k + 1}` : `z${k + 1}`;
    label.innerHTML = `<span>${name} <small>σ ${sd.toFixed(2)}</small></span>`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: -3, max: 3, step: 0.1, value: 0, className: "direction" });
    const out = document.createElement("output");
    out.textContent = "0.0";
    input.addEventListener("input", () => { out.textContent = Number(input.value).toFixed(1); refreshExplore(); });
    label.append(input, out);
    box.appendChild(label);
  });
  $("directions-label").textContent = info.directions === "pca"
    ? `(principal directions of the test set's posterior means, in standard deviations)`
    : `(the latent dimensions, in standard deviations of the test set's means)`;
}

function refreshExplore() {
  const i = clampIndex($("explore-index"));
  const coords = [...document.querySelectorAll("#sliders input")].map((s) => Number(s.value));
  setImage($("explore-source"), `/api/test.png?index=${i}`);
  setImage($("explore"), `/api/explore.png?index=${i}&coords=${coords.join(",")}`);
}

// ---- interpolation ------------------------------------------------------------------------
function refreshInterpolation() {
  const a = clampIndex($("interp-a")), b = clampIndex($("interp-b"));
  const mode = $("interp-mode").value;
  setImage($("interpolation"), `/api/interpolate.png?a=${a}&b=${b}&steps=8&mode=${mode}`);
}

// ---- drawing ------------------------------------------------------------------------------
function setupPad() {
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  const clear = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
  };
  clear();
  let drawing = false;
  let last = null;
  const at = (e) => {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * (pad.width / r.width), (e.clientY - r.top) * (pad.height / r.height)];
  };
  const stroke = (p) => {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = pad.width / 14;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...(last || p));
    ctx.lineTo(...p);
    ctx.stroke();
    last = p;
  };
  pad.addEventListener("pointerdown", (e) => {
    drawing = true;
    last = null;
    pad.setPointerCapture(e.pointerId);
    stroke(at(e));
  });
  pad.addEventListener("pointermove", (e) => { if (drawing) stroke(at(e)); });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    encodeDrawing();
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => {
    clear();
    $("drawn-reconstruction").removeAttribute("src");
    $("nearest").replaceChildren();
  });
}

// The drawing as the model's input, prepared as MNIST's digits were: the ink's bounding box
// scaled to fit 20/28 of the image, then moved so that its centre of mass is the centre.
function drawingPixels() {
  const [, h, w] = info.image;
  const pad = $("pad");
  const src = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
  let x0 = pad.width, y0 = pad.height, x1 = -1, y1 = -1;
  for (let y = 0; y < pad.height; y++) {
    for (let x = 0; x < pad.width; x++) {
      if (src[(y * pad.width + x) * 4] > 20) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x);
        y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return null;
  const box = Math.max(x1 - x0 + 1, y1 - y0 + 1);
  const fit = (20 / 28) * Math.min(h, w);
  const scale = fit / box;
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const sctx = small.getContext("2d");
  sctx.fillStyle = "#000";
  sctx.fillRect(0, 0, w, h);
  sctx.imageSmoothingEnabled = true;
  sctx.imageSmoothingQuality = "high";
  const dw = (x1 - x0 + 1) * scale, dh = (y1 - y0 + 1) * scale;
  sctx.drawImage(pad, x0, y0, x1 - x0 + 1, y1 - y0 + 1, (w - dw) / 2, (h - dh) / 2, dw, dh);
  const data = sctx.getImageData(0, 0, w, h).data;
  let grey = Array.from({ length: h * w }, (_, i) => data[i * 4] / 255);
  // Centre of mass to the centre, by a whole-pixel shift.
  let m = 0, mx = 0, my = 0;
  grey.forEach((v, i) => { m += v; mx += v * (i % w); my += v * Math.floor(i / w); });
  const sx = Math.round((w - 1) / 2 - mx / m), sy = Math.round((h - 1) / 2 - my / m);
  const shifted = new Array(h * w).fill(0);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const ty = y + sy, tx = x + sx;
      if (ty >= 0 && ty < h && tx >= 0 && tx < w) shifted[ty * w + tx] = grey[y * w + x];
    }
  }
  grey = shifted.map((v) => Math.min(1, Math.max(0, v)));
  return grey;
}

async function encodeDrawing() {
  const pixels = drawingPixels();
  if (!pixels) return;
  try {
    const r = await getJson("/api/encode", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pixels }),
    });
    const img = $("drawn-reconstruction");
    img.src = r.reconstruction;
    img.dataset.loaded = "drawing";
    const box = $("nearest");
    box.replaceChildren();
    for (const n of r.nearest) {
      const fig = document.createElement("figure");
      const im = document.createElement("img");
      im.src = `/api/test.png?index=${n.index}`;
      im.alt = `test image ${n.index}`;
      const cap = document.createElement("figcaption");
      cap.textContent = `#${n.index} (${n.distance.toFixed(2)})`;
      fig.append(im, cap);
      box.appendChild(fig);
    }
  } catch (e) {
    showError(`encode: ${e.message}`);
  }
}

// ---- start --------------------------------------------------------------------------------
async function start() {
  try {
    info = await getJson("/api/info");
  } catch (e) {
    showError(`cannot load the model's info: ${e.message}`);
    return;
  }
  $("run-info").textContent =
    `${info.run}: ${info.kind} model, ${info.latent_dim}-dimensional latent, ` +
    `${info.image[1]}×${info.image[2]}×${info.image[0]} images, ${info.epochs} epochs in the checkpoint, ` +
    `${info.test_images} test images`;
  for (const id of ["explore-index", "interp-a", "interp-b"]) $(id).max = info.test_images - 1;
  buildSliders();
  setupPad();
  $("temperature").addEventListener("input", refreshSamples);
  $("reseed").addEventListener("click", () => { seed = Math.floor(Math.random() * 1e9); refreshSamples(); });
  $("explore-index").addEventListener("change", refreshExplore);
  $("explore-random").addEventListener("click", () => {
    $("explore-index").value = Math.floor(Math.random() * info.test_images);
    refreshExplore();
  });
  $("explore-reset").addEventListener("click", () => {
    document.querySelectorAll("#sliders input").forEach((s) => { s.value = 0; s.dispatchEvent(new Event("input")); });
  });
  for (const id of ["interp-a", "interp-b", "interp-mode"]) $(id).addEventListener("change", refreshInterpolation);
  $("interp-random").addEventListener("click", () => {
    $("interp-a").value = Math.floor(Math.random() * info.test_images);
    $("interp-b").value = Math.floor(Math.random() * info.test_images);
    refreshInterpolation();
  });
  refreshSamples();
  refreshExplore();
  refreshInterpolation();
  await refreshCurves();
  setInterval(refreshCurves, 2000);
  document.body.dataset.ready = "true";
}

start();
