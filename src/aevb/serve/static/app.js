// aevb latent explorer: talks to the JSON/PNG endpoints of aevb.serve.app (same origin only).
"use strict";

const state = { info: null, z: [], label: null, a: null, b: null, lastCode: null, map: null, decoding: false, pending: false };
const $ = (id) => document.getElementById(id);
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const MAP_RANGE = 3.5; // the latent map shows z in [-3.5, 3.5]^2

function showError(message) {
  const el = $("error");
  if (message) { el.textContent = message; el.hidden = false; } else { el.hidden = true; el.textContent = ""; }
}

async function api(path, body, raw) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": raw ? raw.type : "application/json" },
    body: raw ? raw.data : JSON.stringify(body),
  };
  const res = await fetch(path, opts);
  if (!res.ok) {
    let msg = res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(`${res.status}: ${msg}`);
  }
  return res;
}

function setImage(img, blobOrB64) {
  if (typeof blobOrB64 === "string") { img.src = "data:image/png;base64," + blobOrB64; return; }
  const old = img.dataset.url;
  img.dataset.url = URL.createObjectURL(blobOrB64);
  img.src = img.dataset.url;
  if (old) URL.revokeObjectURL(old);
}

// A conditional model's label goes with every request that decodes or encodes; null otherwise.
function withLabel(body) { return state.label === null ? body : { ...body, label: state.label }; }

// Decode the current z; while a request is in flight, remember that another is wanted.
async function decode() {
  if (state.decoding) { state.pending = true; return; }
  state.decoding = true;
  try {
    const z = state.z.slice(), label = state.label;
    const res = await api("/api/decode", withLabel({ z }));
    setImage($("decoded"), await res.blob());
    $("decoded").dataset.z = JSON.stringify(z);
    $("decoded").dataset.label = label === null ? "" : String(label);
    showError(null);
  } catch (e) { showError(e.message); }
  state.decoding = false;
  if (state.pending) { state.pending = false; decode(); }
}

function buildSliders() {
  const box = $("sliders");
  box.textContent = "";
  for (let i = 0; i < state.info.sliders; i++) {
    const label = document.createElement("label");
    label.textContent = `z[${i}]`;
    label.htmlFor = `z${i}`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: -3, max: 3, step: 0.01, value: 0, id: `z${i}` });
    input.dataset.dim = i;
    const out = document.createElement("output");
    out.id = `z${i}-value`;
    out.textContent = "0.00";
    input.addEventListener("input", () => { state.z[i] = Number(input.value); out.textContent = state.z[i].toFixed(2); decode(); drawMap(); });
    box.append(label, input, out);
  }
  const extra = state.info.latent_dim - state.info.sliders;
  $("slider-note").textContent = extra > 0 ? `Sliders for the first ${state.info.sliders} of ${state.info.latent_dim} dimensions; the rest keep their values.` : "";
}

function setZ(z) {
  state.z = z.slice();
  for (let i = 0; i < state.info.sliders; i++) {
    const v = Math.max(-3, Math.min(3, z[i]));
    $(`z${i}`).value = v;
    $(`z${i}-value`).textContent = z[i].toFixed(2);
  }
  drawMap();
  decode();
}

// --- latent map (2-D models) ---
function mapToCanvas(v, size) { return (v + MAP_RANGE) / (2 * MAP_RANGE) * size; }
function canvasToMap(p, size) { return p / size * 2 * MAP_RANGE - MAP_RANGE; }

function drawMap(hover) {
  if (!state.map) return;
  const c = $("latent-map"), ctx = c.getContext("2d"), W = c.width, H = c.height;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "#ddd";
  ctx.beginPath(); ctx.moveTo(W / 2, 0); ctx.lineTo(W / 2, H); ctx.moveTo(0, H / 2); ctx.lineTo(W, H / 2); ctx.stroke();
  const labels = state.map.labels;
  state.map.points.forEach((p, k) => {
    ctx.fillStyle = labels ? COLOURS[((labels[k] % 10) + 10) % 10] : "#1f77b4";
    ctx.fillRect(mapToCanvas(p[0], W) - 1.5, H - mapToCanvas(p[1], H) - 1.5, 3, 3);
  });
  const mark = (z, colour) => {
    ctx.strokeStyle = colour; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(mapToCanvas(z[0], W), H - mapToCanvas(z[1], H), 6, 0, 2 * Math.PI); ctx.stroke();
    ctx.lineWidth = 1;
  };
  mark(state.z, "#000");
  if (hover) mark(hover, "#d00");
}

function mapEventZ(ev) {
  const c = $("latent-map"), r = c.getBoundingClientRect();
  const x = (ev.clientX - r.left) * c.width / r.width, y = (ev.clientY - r.top) * c.height / r.height;
  return [canvasToMap(x, c.width), canvasToMap(c.height - y, c.height)];
}

async function setupMap() {
  $("map-panel").hidden = false;
  state.map = await (await api("/api/map")).json();
  if (state.map.labels) {
    const seen = [...new Set(state.map.labels)].sort((p, q) => p - q);
    $("legend").innerHTML = seen.map((l) => `<span><i style="background:${COLOURS[((l % 10) + 10) % 10]}"></i>${l}</span>`).join("");
  }
  const c = $("latent-map");
  let hoverDecode = 0;
  c.addEventListener("mousemove", (ev) => {
    const z = mapEventZ(ev);
    drawMap(z);
    const now = performance.now();
    if (now - hoverDecode > 30) { hoverDecode = now; state.z = z; decodeQuietly(z); }
  });
  c.addEventListener("mouseleave", () => { drawMap(); });
  c.addEventListener("click", (ev) => { setZ(mapEventZ(ev)); });
  drawMap();
}

function decodeQuietly(z) { state.z = z.slice(); decode(); }

// --- drawing and uploading ---
function setupDrawing() {
  const c = $("draw"), ctx = c.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height); };
  clear();
  let drawing = false, last = null;
  const pos = (ev) => { const r = c.getBoundingClientRect(); return [(ev.clientX - r.left) * c.width / r.width, (ev.clientY - r.top) * c.height / r.height]; };
  c.addEventListener("pointerdown", (ev) => { drawing = true; last = pos(ev); c.setPointerCapture(ev.pointerId); stroke(last, last); });
  c.addEventListener("pointermove", (ev) => { if (!drawing) return; const p = pos(ev); stroke(last, p); last = p; });
  const end = () => { if (drawing) { drawing = false; encodeDrawing(); } };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  function stroke(p, q) {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = c.width / 10; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(p[0], p[1]); ctx.lineTo(q[0], q[1]); ctx.stroke();
  }
  $("clear-btn").addEventListener("click", clear);
  $("encode-btn").addEventListener("click", encodeDrawing);
}

// The drawing, scaled down to the model's H x W (grey, repeated for colour models), as C*H*W values in [0, 1].
function drawingPixels() {
  const [C, H, W] = state.info.input_shape;
  const small = document.createElement("canvas");
  small.width = W; small.height = H;
  const sctx = small.getContext("2d");
  sctx.imageSmoothingEnabled = true;
  sctx.imageSmoothingQuality = "high";
  sctx.drawImage($("draw"), 0, 0, W, H);
  const rgba = sctx.getImageData(0, 0, W, H).data;
  const grey = new Array(H * W);
  for (let k = 0; k < H * W; k++) grey[k] = rgba[4 * k] / 255;
  const out = [];
  for (let ch = 0; ch < C; ch++) out.push(...grey);
  return out;
}

function showPosterior(res) {
  setImage($("enc-input"), res.input_png);
  setImage($("reconstruction"), res.png);
  const body = $("posterior").querySelector("tbody");
  body.innerHTML = res.mu.slice(0, 32).map((m, i) => `<tr><td>z[${i}]</td><td>${m.toFixed(3)}</td><td>${res.std[i].toFixed(3)}</td></tr>`).join("");
  state.lastCode = res.mu;
  $("use-code-btn").disabled = false;
  $("reconstruction").dataset.ready = String(Number($("reconstruction").dataset.ready || 0) + 1);
  showError(null);
}

async function encodeDrawing() {
  try { showPosterior(await (await api("/api/encode", withLabel({ pixels: drawingPixels() }))).json()); } catch (e) { showError(e.message); }
}

async function encodeUpload() {
  const file = $("upload").files[0];
  if (!file) return;
  if (file.size > state.info.max_upload_bytes) { showError(`the file is ${file.size} bytes; the limit is ${state.info.max_upload_bytes}`); return; }
  const query = new URLSearchParams();
  if ($("invert").checked) query.set("invert", "true");
  if (state.label !== null) query.set("label", String(state.label));
  const q = query.toString() ? "?" + query.toString() : "";
  try { showPosterior(await (await api("/api/encode-image" + q, null, { type: file.type || "application/octet-stream", data: file })).json()); } catch (e) { showError(e.message); }
}

// --- interpolation ---
function abInfo() {
  const f = (z) => (z ? "[" + z.slice(0, 4).map((v) => v.toFixed(2)).join(", ") + (z.length > 4 ? ", …" : "") + "]" : "not set");
  $("ab-info").textContent = `A: ${f(state.a)} · B: ${f(state.b)}`;
}

async function interpolate() {
  if (!state.a || !state.b) { showError("set both A and B first"); return; }
  try {
    const res = await (await api("/api/interpolate", withLabel({ a: state.a, b: state.b, steps: Number($("steps").value) }))).json();
    setImage($("interp"), res.png);
    showError(null);
  } catch (e) { showError(e.message); }
}

// Conditional models: a label selector; changing it re-decodes the current z under the new label.
function setupLabels(k) {
  const select = $("label");
  for (let c = 0; c < k; c++) {
    const option = document.createElement("option");
    option.value = String(c);
    option.textContent = String(c);
    select.append(option);
  }
  state.label = 0;
  select.value = "0";
  select.addEventListener("change", () => { state.label = Number(select.value); decode(); });
  $("label-box").hidden = false;
}

async function main() {
  try {
    state.info = await (await api("/api/info")).json();
  } catch (e) { showError(e.message); return; }
  const i = state.info;
  const given = i.num_classes > 0 ? `, conditional on ${i.num_classes} labels` : "";
  $("run-info").textContent = `${i.run}: ${i.family.toUpperCase()} on ${i.dataset}${given}, ${i.latent_dim}-D latent, images ${i.input_shape.join("×")}`;
  state.z = new Array(i.latent_dim).fill(0);
  buildSliders();
  if (i.num_classes > 0) setupLabels(i.num_classes);
  $("sample-btn").addEventListener("click", async () => {
    try { setZ((await (await api("/api/sample", withLabel({}))).json()).z); } catch (e) { showError(e.message); }
  });
  $("zero-btn").addEventListener("click", () => setZ(new Array(i.latent_dim).fill(0)));
  $("use-code-btn").addEventListener("click", () => { if (state.lastCode) setZ(state.lastCode); });
  $("upload").addEventListener("change", encodeUpload);
  $("set-a").addEventListener("click", () => { state.a = state.z.slice(); abInfo(); });
  $("set-b").addEventListener("click", () => { state.b = state.z.slice(); abInfo(); });
  $("interp-btn").addEventListener("click", interpolate);
  setupDrawing();
  if (i.has_map) await setupMap();
  await decode();
  document.body.dataset.ready = "1";
}

main();
