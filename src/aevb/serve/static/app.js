// aevb latent explorer: talks to the JSON/PNG endpoints of aevb.serve.app (same origin only).
"use strict";

const state = {
  info: null, z: [], label: null, sampler: null, a: null, b: null, lastCode: null, map: null, mapRange: 3,
  decoding: false, pending: false, inflight: 0, loading: true,
  steer: { base: null, direction: null },
};
const $ = (id) => document.getElementById(id);
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const SLIDER_RANGE = 3; // sliders span z in [-3, 3]; values beyond are kept, the knob stops at the end
const MAP_MARGIN = { left: 46, right: 14, top: 12, bottom: 40 }; // room for the axes around the plot square

function showError(message) {
  const el = $("error");
  if (message) { el.textContent = message; el.hidden = false; } else { el.hidden = true; el.textContent = ""; }
}

// The loading indicator: shown while the page starts and while any request is in flight.
function showBusy() {
  $("busy").hidden = !(state.loading || state.inflight > 0);
  $("busy-text").textContent = state.loading ? "loading…" : "working…";
}

async function api(path, body, raw) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": raw ? raw.type : "application/json" },
    body: raw ? raw.data : JSON.stringify(body),
  };
  state.inflight++;
  showBusy();
  try {
    const res = await fetch(path, opts);
    if (!res.ok) {
      let msg = res.statusText;
      try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(`${res.status}: ${msg}`);
    }
    // Read the body before the request counts as done, so the indicator covers the transfer too.
    const data = (res.headers.get("content-type") || "").startsWith("application/json") ? await res.json() : await res.blob();
    return { json: async () => data, blob: async () => data };
  } finally {
    state.inflight--;
    showBusy();
  }
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
// A model with several latent layers: the layers below the top drawn at the chosen temperature, with the
// noise of the last sample (so the lower layers follow the top-layer sliders smoothly).
function tempered(body) {
  if (!state.info || !state.info.temperature) return body;
  return { ...body, temperature: Number($("temperature").value), seed: state.noiseSeed || 0 };
}

// Decode the current z; while a request is in flight, remember that another is wanted.
async function decode() {
  if (state.decoding) { state.pending = true; return; }
  state.decoding = true;
  try {
    const z = state.z.slice(), label = state.label;
    const res = await api("/api/decode", withLabel(tempered({ z })));
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
    const row = document.createElement("div");
    row.className = "slider";
    const label = document.createElement("label");
    label.textContent = `z[${i}]`;
    label.htmlFor = `z${i}`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: -SLIDER_RANGE, max: SLIDER_RANGE, step: 0.01, value: 0, id: `z${i}` });
    input.dataset.dim = i;
    const out = document.createElement("output");
    out.id = `z${i}-value`;
    out.textContent = "0.00";
    input.addEventListener("input", () => {
      state.z[i] = Number(input.value);
      out.textContent = state.z[i].toFixed(2);
      resetSteer();
      decode();
      drawMap();
    });
    row.append(label, input, out);
    box.append(row);
  }
  const extra = state.info.latent_dim - state.info.sliders;
  $("slider-note").textContent = state.info.temperature && state.info.top_layer
    ? `Sliders for the top layer (${state.info.sliders} of its ${state.info.top_layer} dimensions); the layers below are drawn given it at the chosen temperature.`
    : extra > 0 ? `Sliders for the first ${state.info.sliders} of ${state.info.latent_dim} dimensions; the rest keep their values.` : "";
}

// Show z on the sliders and the map and decode it (steering keeps its starting point).
function showZ(z) {
  state.z = z.slice();
  for (let i = 0; i < state.info.sliders; i++) {
    $(`z${i}`).value = Math.max(-SLIDER_RANGE, Math.min(SLIDER_RANGE, z[i]));
    $(`z${i}-value`).textContent = z[i].toFixed(2);
  }
  drawMap();
  decode();
}

// A new z from elsewhere (sample, reset, map, encoder): steering starts again from it.
function setZ(z) { resetSteer(); showZ(z); }

// --- steering toward a label ---
function resetSteer() {
  state.steer.base = null;
  if (!$("steer-panel").hidden) { $("steer-amount").value = 0; $("steer-amount-value").textContent = "0.00"; }
}

function applySteer() {
  const amount = Number($("steer-amount").value);
  $("steer-amount-value").textContent = amount.toFixed(2);
  const d = state.steer.direction;
  if (!d) return;
  if (!state.steer.base) state.steer.base = state.z.slice();
  showZ(state.steer.base.map((v, i) => v + amount * d[i]));
}

async function loadDirection() {
  const toward = $("steer-toward").value, away = $("steer-away").value;
  for (const option of $("steer-away").options) option.disabled = option.value !== "" && option.value === toward;
  if (away === toward) $("steer-away").value = "";
  const query = new URLSearchParams({ toward });
  if ($("steer-away").value) query.set("away", $("steer-away").value);
  try {
    const d = await (await api("/api/direction?" + query.toString())).json();
    state.steer.direction = d.direction;
    const from = d.away === null ? `the other ${d.n_away}` : `the ${d.n_away} labelled ${d.away.join(", ")}`;
    $("steer-note").textContent = `Adds amount × (mean code of the ${d.n_toward} test images labelled ${d.toward.join(", ")} − mean code of ${from}); the direction's length is ${d.norm.toFixed(2)}.`;
    $("steer-panel").dataset.direction = JSON.stringify(d.direction);
    showError(null);
  } catch (e) { state.steer.direction = null; showError(e.message); }
}

async function setupSteering() {
  const res = await (await api("/api/attributes")).json();
  if (!res.labels.length) return;
  for (const [select, first] of [[$("steer-toward"), null], [$("steer-away"), ""]]) {
    for (const l of res.labels) {
      const option = document.createElement("option");
      option.value = String(l);
      option.textContent = String(l);
      select.append(option);
    }
    if (first !== null) select.value = first;
  }
  $("steer-panel").hidden = false;
  await loadDirection();
  const reload = async () => { await loadDirection(); applySteer(); };
  $("steer-toward").addEventListener("change", reload);
  $("steer-away").addEventListener("change", reload);
  $("steer-amount").addEventListener("input", applySteer);
}

// --- latent map (2-D models) ---
// The plot square inside the canvas and the latent range it shows, [-range, range]^2.
function mapGeometry() {
  const c = $("latent-map");
  const size = Math.min(c.width - MAP_MARGIN.left - MAP_MARGIN.right, c.height - MAP_MARGIN.top - MAP_MARGIN.bottom);
  return { x0: MAP_MARGIN.left, y0: MAP_MARGIN.top, size, range: state.mapRange };
}
function toCanvas(z, g) { return [g.x0 + (z[0] + g.range) / (2 * g.range) * g.size, g.y0 + (g.range - z[1]) / (2 * g.range) * g.size]; }
function toLatent(px, py, g) { return [(px - g.x0) / g.size * 2 * g.range - g.range, g.range - (py - g.y0) / g.size * 2 * g.range]; }

// A range that holds 99% of the points, a whole number, at least 3 (the prior's +-3 sigma).
function fitRange(points) {
  if (!points.length) return 3;
  const extent = points.map((p) => Math.max(Math.abs(p[0]), Math.abs(p[1]))).sort((p, q) => p - q);
  return Math.max(3, Math.ceil(extent[Math.floor(0.99 * (extent.length - 1))]));
}

function drawAxes(ctx, g) {
  const step = g.range <= 4 ? 1 : g.range <= 10 ? 2 : 5;
  ctx.save();
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#5b6472";
  for (let t = -Math.floor(g.range / step) * step; t <= g.range + 1e-9; t += step) {
    const [px, py] = toCanvas([t, t], g);
    ctx.strokeStyle = t === 0 ? "#b9c0cc" : "#eceef2";
    ctx.beginPath(); ctx.moveTo(px, g.y0); ctx.lineTo(px, g.y0 + g.size); ctx.moveTo(g.x0, py); ctx.lineTo(g.x0 + g.size, py); ctx.stroke();
    ctx.strokeStyle = "#5b6472";
    ctx.beginPath(); ctx.moveTo(px, g.y0 + g.size); ctx.lineTo(px, g.y0 + g.size + 4); ctx.moveTo(g.x0 - 4, py); ctx.lineTo(g.x0, py); ctx.stroke();
    ctx.textAlign = "center"; ctx.textBaseline = "top"; ctx.fillText(String(t), px, g.y0 + g.size + 6);
    ctx.textAlign = "right"; ctx.textBaseline = "middle"; ctx.fillText(String(t), g.x0 - 7, py);
  }
  ctx.strokeStyle = "#8a93a3";
  ctx.strokeRect(g.x0 + 0.5, g.y0 + 0.5, g.size - 1, g.size - 1);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#1f2430";
  ctx.textAlign = "center"; ctx.textBaseline = "bottom";
  ctx.fillText("z[0]", g.x0 + g.size / 2, g.y0 + g.size + 38);
  ctx.translate(12, g.y0 + g.size / 2); ctx.rotate(-Math.PI / 2); ctx.textBaseline = "middle";
  ctx.fillText("z[1]", 0, 0);
  ctx.restore();
}

function drawMap(hover) {
  if (!state.map) return;
  const c = $("latent-map"), ctx = c.getContext("2d"), g = mapGeometry();
  ctx.clearRect(0, 0, c.width, c.height);
  drawAxes(ctx, g);
  ctx.save();
  ctx.beginPath(); ctx.rect(g.x0, g.y0, g.size, g.size); ctx.clip(); // nothing is drawn outside the square
  const labels = state.map.labels;
  state.map.points.forEach((p, k) => {
    const [px, py] = toCanvas(p, g);
    ctx.fillStyle = labels ? COLOURS[((labels[k] % 10) + 10) % 10] : "#1f77b4";
    ctx.fillRect(px - 1.5, py - 1.5, 3, 3);
  });
  const mark = (z, colour) => {
    const [px, py] = toCanvas(z, g);
    ctx.strokeStyle = colour; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(px, py, 6, 0, 2 * Math.PI); ctx.stroke();
  };
  mark(state.z, "#000");
  if (hover) mark(hover, "#d00");
  ctx.restore();
}

// The latent point under the mouse, or null outside the plot square.
function mapEventZ(ev) {
  const c = $("latent-map"), r = c.getBoundingClientRect(), g = mapGeometry();
  const px = (ev.clientX - r.left) * c.width / r.width, py = (ev.clientY - r.top) * c.height / r.height;
  if (px < g.x0 || px > g.x0 + g.size || py < g.y0 || py > g.y0 + g.size) return null;
  return toLatent(px, py, g);
}

async function setupMap() {
  $("map-panel").hidden = false;
  state.map = await (await api("/api/map")).json();
  state.mapRange = fitRange(state.map.points);
  const g = mapGeometry(), c = $("latent-map");
  Object.assign(c.dataset, { x0: g.x0, y0: g.y0, size: g.size, range: g.range });
  const outside = state.map.points.filter((p) => Math.abs(p[0]) > g.range || Math.abs(p[1]) > g.range).length;
  $("map-note").textContent = state.map.note || (outside ? `${outside} of ${state.map.points.length} points lie outside ±${g.range} and are not drawn.` : "");
  if (state.map.labels) {
    const seen = [...new Set(state.map.labels)].sort((p, q) => p - q);
    $("legend").innerHTML = seen.map((l) => `<span><i style="background:${COLOURS[((l % 10) + 10) % 10]}"></i>${l}</span>`).join("");
  }
  let hoverDecode = 0;
  c.addEventListener("mousemove", (ev) => {
    const z = mapEventZ(ev);
    drawMap(z);
    const now = performance.now();
    if (z && now - hoverDecode > 30) { hoverDecode = now; resetSteer(); state.z = z; decode(); }
  });
  c.addEventListener("mouseleave", () => { drawMap(); });
  c.addEventListener("click", (ev) => { const z = mapEventZ(ev); if (z) setZ(z); });
  drawMap();
}

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
    ctx.strokeStyle = state.info.input_shape[0] === 3 ? $("pen").value : "#fff";
    ctx.lineWidth = c.width / 10; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(p[0], p[1]); ctx.lineTo(q[0], q[1]); ctx.stroke();
  }
  $("clear-btn").addEventListener("click", clear);
  $("encode-btn").addEventListener("click", encodeDrawing);
}

// The drawing, scaled down to the model's H x W, as C*H*W values in [0, 1] (grey: the red channel of white strokes).
function drawingPixels() {
  const [C, H, W] = state.info.input_shape;
  const small = document.createElement("canvas");
  small.width = W; small.height = H;
  const sctx = small.getContext("2d");
  sctx.imageSmoothingEnabled = true;
  sctx.imageSmoothingQuality = "high";
  sctx.drawImage($("draw"), 0, 0, W, H);
  const rgba = sctx.getImageData(0, 0, W, H).data;
  const out = new Array(C * H * W);
  for (let ch = 0; ch < C; ch++) for (let k = 0; k < H * W; k++) out[ch * H * W + k] = rgba[4 * k + ch] / 255;
  return out;
}

function showPosterior(res) {
  setImage($("enc-input"), res.input_png);
  setImage($("reconstruction"), res.png);
  const body = $("posterior").querySelector("tbody");
  body.innerHTML = res.mu.slice(0, 32).map((m, i) => `<tr><td>z[${i}]</td><td>${m.toFixed(3)}</td><td>${res.std[i].toFixed(3)}</td></tr>`).join("");
  $("posterior").hidden = false;
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

// What to draw or upload, in words that fit the model's images (grey or colour, their size and data set).
function describeInput(info) {
  const [C, H, W] = info.input_shape;
  const size = `${H}×${W}, the size of the ${info.dataset} images`;
  if (C === 3) {
    $("pen-box").hidden = false;
    $("invert-text").textContent = "invert the colours";
    return `Draw on the black canvas with the pen colour of your choice, or upload a colour PNG/JPEG; it is resized to ${size}.`;
  }
  $("invert-text").textContent = "invert (dark strokes on light paper)";
  return `Draw white strokes on the black canvas, or upload a grey PNG/JPEG (tick invert for dark ink on light paper); it is resized to ${size}.`;
}

// Show an image of the model's H x W at most ``side`` pixels a side, keeping its aspect ratio.
function fitImage(img, side) {
  const [, H, W] = state.info.input_shape, scale = side / Math.max(H, W);
  img.width = Math.round(W * scale);
  img.height = Math.round(H * scale);
  Object.assign(img.parentElement.style, { width: `${img.width + 2}px`, height: `${img.height + 2}px` });
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

// Samplers fitted on the codes (aevb fit-prior): a selector of where "Sample z" draws from. A model without a
// prior starts on its first fitted sampler, since N(0, I) means little to it.
function setupSamplers(info) {
  if (!info.samplers || info.samplers.length === 0) return;
  const select = $("sampler");
  const names = [["prior", info.has_prior ? "the prior p(z)" : "N(0, I) (no trained prior)"],
    ...info.samplers.map((name) => [name, `the ${name} sampler (fitted on the codes)`])];
  for (const [value, text] of names) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = text;
    select.append(option);
  }
  const show = () => {
    state.sampler = select.value;
    $("sample-btn").textContent = select.value === "prior" ? "Sample z from the prior" : `Sample z from the ${select.value} sampler`;
  };
  select.value = info.has_prior ? "prior" : info.samplers[0];
  select.addEventListener("change", show);
  show();
  $("sampler-box").hidden = false;
}

async function main() {
  try {
    state.info = await (await api("/api/info")).json();
  } catch (e) { showError(e.message); state.loading = false; showBusy(); return; }
  const i = state.info;
  const given = i.num_classes > 0 ? `, conditional on ${i.num_classes} labels` : "";
  $("run-info").textContent = `${i.run}: ${i.family.toUpperCase()} on ${i.dataset}${given}, ${i.latent_dim}-D latent, images ${i.input_shape.join("×")}`;
  $("encode-hint").textContent = describeInput(i);
  fitImage($("decoded"), 196);
  fitImage($("enc-input"), 98);
  fitImage($("reconstruction"), 98);
  state.z = new Array(i.latent_dim).fill(0);
  buildSliders();
  if (i.num_classes > 0) setupLabels(i.num_classes);
  setupSamplers(i);
  $("sample-btn").addEventListener("click", async () => {
    const body = state.sampler && state.sampler !== "prior" ? { sampler: state.sampler } : {};
    if (i.temperature) { state.noiseSeed = Math.floor(Math.random() * 2 ** 31); body.temperature = Number($("temperature").value); }
    try { setZ((await (await api("/api/sample", withLabel(body))).json()).z); } catch (e) { showError(e.message); }
  });
  if (i.temperature) {
    $("temp-box").hidden = false;
    $("temperature").addEventListener("input", () => { $("temperature-value").textContent = Number($("temperature").value).toFixed(2); decode(); });
  }
  $("zero-btn").addEventListener("click", () => setZ(new Array(i.latent_dim).fill(0)));
  $("use-code-btn").addEventListener("click", () => { if (state.lastCode) setZ(state.lastCode); });
  $("upload").addEventListener("change", encodeUpload);
  $("set-a").addEventListener("click", () => { state.a = state.z.slice(); abInfo(); });
  $("set-b").addEventListener("click", () => { state.b = state.z.slice(); abInfo(); });
  $("interp-btn").addEventListener("click", interpolate);
  setupDrawing();
  try {
    if (i.has_map) await setupMap();
    if (i.can_steer) await setupSteering();
  } catch (e) { showError(e.message); }
  await decode();
  state.loading = false;
  showBusy();
  document.body.dataset.ready = "1";
}

main();
