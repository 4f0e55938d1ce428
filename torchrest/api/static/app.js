// torchrest's page: try a model (POST a photo to its task's route, shown as the task's view says: labels,
// boxes, a mask, a pair of photos, or the JSON as text) and watch the server (GET /web/stats, once a second while the page is visible). Plain JavaScript,
// <canvas> and CSS, no library, nothing loaded from elsewhere.
"use strict";

const HISTORY = 180; // points kept per series: three minutes at one poll a second
const $ = (id) => document.getElementById(id);
const history = new Map(); // model name -> {last, series: {name: [values]}}

// -- try a model ------------------------------------------------------------------------------------
// model name -> {task: {route, view, query, help}}, its own task first: what the server says of each task
// (GET /web/stats); the page knows views, never tasks
const viewsOf = new Map();
const view = () => viewsOf.get($("model").value)?.[$("task").value] || { route: "/", view: "json", query: {} };
const pending = { photo: 0, a: 0, b: 0 }; // each place's newest request: an answer overtaken is dropped
const vectors = { a: null, b: null }; // the pair view: each photo's embedding
let nextSlot = "a"; // the pair view: where a photo chosen, pasted or captured goes (then the other one)

// a fixed colour per class: a box of class k gets PALETTE[k], a mask's class k > 0 PALETTE[k - 1] (0 is the
// background, left clear); past the list, hues a golden angle apart
const PALETTE = [[209, 73, 63], [42, 157, 85], [47, 111, 223], [217, 130, 43], [142, 68, 173], [19, 141, 144],
  [194, 24, 91], [130, 119, 23], [92, 107, 192], [109, 76, 65], [0, 131, 143], [69, 90, 100]];
const MASK_ALPHA = 140; // of 255: the photo shows through

function rgb(index) {
  if (index < PALETTE.length) return PALETTE[index];
  const hue = (index * 137.508) % 360, s = 0.6, l = 0.42; // HSL to RGB (the CSS Color formula)
  const f = (n) => {
    const k = (n + hue / 30) % 12;
    return Math.round(255 * (l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}
const css = (index) => `rgb(${rgb(index).join(", ")})`;
const percent = (fraction) => `${(100 * fraction).toFixed(1)}%`;
const norm = (vector) => Math.sqrt(vector.reduce((sum, v) => sum + v * v, 0));

async function loadModels() {
  const [index, stats] = await Promise.all([
    fetch("/v2/repository/index").then((r) => r.json()),
    fetch("/web/stats").then((r) => r.json()),
  ]);
  for (const model of stats.models) {
    viewsOf.set(model.name, Object.fromEntries(model.tasks.filter((t) => model.views?.[t]).map((t) => [t, model.views[t]])));
  }
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren();
  for (const model of index.filter((m) => m.state === "READY")) {
    const option = new Option(model.name, model.name);
    select.add(option);
  }
  const fallback = stats.models.find((m) => m.default);
  select.value = chosen || (fallback ? fallback.name : select.value);
  chooseModel();
  $("server").textContent = `version ${stats.version} · ${stats.ready ? "ready" : "not ready"} · ` +
    `${index.length} model${index.length === 1 ? "" : "s"}`;
}

// the task picker offers the model's tasks, its own first (chosen); with one there is nothing to pick
function chooseModel() {
  const tasks = Object.keys(viewsOf.get($("model").value) || {});
  const select = $("task");
  select.replaceChildren(...tasks.map((task) => new Option(task, task)));
  select.value = tasks[0];
  select.disabled = tasks.length < 2;
  chooseTask();
}

// the pair view takes two photos (its own drop zones), every other view one
function chooseTask() {
  const pair = view().view === "pair";
  $("drop").hidden = pair;
  $("pair").hidden = !pair;
  $("task-help").textContent = view().help || "";
  clearAnswer();
  $("stage").hidden = true;
  for (const slot of ["a", "b"]) {
    vectors[slot] = null;
    $(`preview-${slot}`).hidden = true;
    $(`about-${slot}`).textContent = "";
  }
  nextSlot = "a";
}

function clearAnswer() {
  for (const place of Object.keys(pending)) pending[place] += 1; // answers on their way are not shown
  $("error").hidden = true;
  for (const id of ["labels", "detections", "legend", "boxes", "timing-bar"]) $(id).replaceChildren();
  $("mask").hidden = true;
  $("answer-json").hidden = true;
  $("similarity").hidden = true;
  $("timing").textContent = "";
}

function showPhoto(image, file) {
  if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
  image.src = URL.createObjectURL(file);
  image.hidden = false;
}

// a photo from anywhere (picker, drop, paste, camera): to the chosen task
function send(file) {
  if (!file) return;
  if (view().view === "pair") comparePhoto(nextSlot, file);
  else tryPhoto(file);
}

// POST `file` to the chosen task's route. {ok, answer, stages, current}; or {ok: false} with the error
// shown; or {stale: true} when a newer request took this place meanwhile.
async function request(file, place) {
  const ticket = ++pending[place];
  const current = () => ticket === pending[place];
  const task = view();
  const query = new URLSearchParams(task.query);
  if ($("model").value) query.set("model", $("model").value);
  const form = new FormData();
  form.append("image", file, file.name || "image");
  let response;
  try {
    const headers = { accept: "application/json" }; // a mask inside JSON, not a bare PNG
    response = await fetch(`${task.route}?${query}`, { method: "POST", body: form, headers });
  } catch (error) {
    if (!current()) return { stale: true };
    showError(`the server could not be reached (${error.message})`);
    return { ok: false };
  }
  const answer = await response.json().catch(() => ({}));
  if (!current()) return { stale: true };
  if (!response.ok) {
    showError(`${response.status} ${answer.code || ""}: ${answer.message || answer.error || "no message"}`);
    return { ok: false };
  }
  return { ok: true, answer, stages: parseTiming(response.headers.get("server-timing")), current };
}

async function tryPhoto(file) {
  const shown = view().view;
  clearAnswer();
  showPhoto($("preview"), file);
  $("stage").hidden = false;
  $("timing").textContent = `${$("task").value}: working…`;
  const result = await request(file, "photo");
  if (!result.ok) return;
  if (shown === "labels") showLabels(result.answer);
  else if (shown === "boxes") showDetections(result.answer);
  else if (shown === "mask" && !(await showMask(result.answer, result.current))) return;
  else if (shown === "json") showJson(result.answer);
  showTiming(result.stages);
}

function showLabels(answer) {
  for (const prediction of answer.top_k) {
    const item = document.createElement("li");
    const share = percent(prediction.confidence);
    item.innerHTML = `<span class="label"></span> <span class="muted">${share}</span>` +
      `<div class="bar"><span style="width:${share}"></span></div>`;
    item.querySelector(".label").textContent = prediction.label;
    $("labels").append(item);
  }
}

function swatch(color) {
  const span = document.createElement("span");
  span.className = "swatch";
  if (color) span.style.background = color;
  else span.classList.add("clear");
  return span;
}

// each box over the photo in percent of its size (the boxes are in its original pixels, EXIF orientation
// applied, as the browser shows it), so they follow the photo however it is scaled; and listed beside it
// a rotated box before its turn: [x1, y1, x2, y2] around its centre
const upright = ({ center: [cx, cy], size: [w, h] }) => [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2];

function showDetections(answer) {
  const { width, height } = answer.image;
  for (const detection of answer.detections) {
    // a box is [x1, y1, x2, y2], or rotated: {center, size, angle}, drawn upright and turned about its centre
    const turned = !Array.isArray(detection.box);
    const [x1, y1, x2, y2] = turned ? upright(detection.box) : detection.box;
    const color = css(detection.class_id);
    const name = `${detection.label} ${percent(detection.confidence)}`;
    const box = document.createElement("div");
    box.className = "box";
    box.classList.toggle("inside", y1 / height < 0.08); // no room above it: the tag goes inside
    box.classList.toggle("end", x1 / width > 0.5); // on the right: the tag ends at its right edge
    Object.assign(box.style, {
      left: percent(x1 / width), top: percent(y1 / height),
      width: percent((x2 - x1) / width), height: percent((y2 - y1) / height), borderColor: color,
      transform: turned ? `rotate(${detection.box.angle}rad)` : "",
    });
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.style.background = color;
    tag.textContent = name;
    box.append(tag);
    $("boxes").append(box);
    const item = document.createElement("li");
    const at = [x1, y1, x2, y2].map(Math.round);
    const where = turned
      ? `centre ${detection.box.center.map(Math.round).join(", ")}, ${detection.box.size.map(Math.round).join(" × ")}, ` +
        `turned ${Math.round((detection.box.angle * 180) / Math.PI)}°`
      : `at x ${at[0]}–${at[2]}, y ${at[1]}–${at[3]}`;
    item.append(swatch(color), ` ${name} `, Object.assign(document.createElement("span"), {
      className: "muted", textContent: where,
    }));
    $("detections").append(item);
  }
  if (!answer.detections.length) {
    const none = Object.assign(document.createElement("li"), { className: "muted", textContent: "nothing found" });
    $("detections").append(none);
  }
}

// the legend (the classes present, their share of the photo), then the mask: a PNG whose grey levels are
// class ids, coloured pixel by pixel on a canvas over the photo. False when a newer request came meanwhile.
async function showMask(answer, current) {
  const { width, height } = answer.image;
  for (const entry of answer.classes) {
    const item = document.createElement("li");
    const share = Object.assign(document.createElement("span"), {
      className: "muted", textContent: percent(entry.pixels / (width * height)),
    });
    item.append(swatch(entry.class_id ? css(entry.class_id - 1) : null), ` ${entry.label} `, share);
    $("legend").append(item);
  }
  if (answer.classes.some((entry) => entry.class_id > 255)) { // a 16-bit PNG: the browser keeps 8 bits
    $("legend").append(Object.assign(document.createElement("li"), {
      className: "muted", textContent: "class ids past 255: the mask is not drawn",
    }));
    return true;
  }
  const bytes = Uint8Array.from(atob(answer.mask), (c) => c.charCodeAt(0));
  // its grey levels as they are: no colour management, no premultiplying
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }),
    { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  if (!current()) return false;
  const canvas = $("mask");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const pixels = context.getImageData(0, 0, width, height);
  const lookup = new Uint8Array(256 * 4); // class id -> RGBA; class 0 stays clear
  for (let id = 1; id < 256; id += 1) lookup.set([...rgb(id - 1), MASK_ALPHA], id * 4);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const at = data[i] * 4;
    data[i] = lookup[at]; data[i + 1] = lookup[at + 1]; data[i + 2] = lookup[at + 2]; data[i + 3] = lookup[at + 3];
  }
  context.putImageData(pixels, 0, 0);
  canvas.hidden = false;
  return true;
}

// the answer as the server wrote it (a task that says nothing of how it is shown); long strings cut short
function showJson(answer) {
  const cut = (key, value) => (typeof value === "string" && value.length > 200 ? `${value.slice(0, 200)}… (${value.length} characters)` : value);
  $("answer-json").textContent = JSON.stringify(answer, cut, 2);
  $("answer-json").hidden = false;
}

// the pair view: photo A or B -> its embedding; once both are in, their cosine similarity
async function comparePhoto(slot, file) {
  nextSlot = slot === "a" ? "b" : "a";
  $("error").hidden = true;
  showPhoto($(`preview-${slot}`), file);
  vectors[slot] = null;
  showSimilarity();
  const about = $(`about-${slot}`);
  about.textContent = "working…";
  const result = await request(file, slot);
  if (result.stale) return;
  if (!result.ok) {
    about.textContent = "no embedding: see the error";
    return;
  }
  const vector = result.answer.embedding;
  vectors[slot] = vector;
  about.textContent = `${result.answer.dimensions} dimensions · length ${norm(vector).toPrecision(4)}`;
  showTiming(result.stages);
  showSimilarity();
}

function showSimilarity() {
  const [a, b] = [vectors.a, vectors.b];
  $("similarity").hidden = !(a && b);
  if (!(a && b)) return;
  let dot = 0;
  for (let i = 0; i < a.length; i += 1) dot += a[i] * b[i];
  const cosine = a.length === b.length ? dot / (norm(a) * norm(b)) : NaN;
  $("cosine").value = Number.isFinite(cosine) ? cosine : 0;
  const shown = $("cosine-value");
  shown.textContent = Number.isFinite(cosine) ? cosine.toFixed(4) : "– (a vector of zeros)";
  shown.dataset.cosine = String(cosine);
}

function parseTiming(header) {
  const stages = {};
  for (const part of (header || "").split(",")) {
    const match = part.trim().match(/^([\w-]+);dur=([\d.]+)/);
    if (match) stages[match[1]] = parseFloat(match[2]);
  }
  return stages;
}

function showTiming(stages) {
  const total = stages.total || 0;
  const parts = ["queue", "decode", "inference"].filter((name) => name in stages);
  const other = Math.max(0, total - parts.reduce((sum, name) => sum + stages[name], 0));
  $("timing").textContent = `${total.toFixed(1)} ms in all: ` +
    parts.map((name) => `${name} ${stages[name].toFixed(1)} ms`).join(", ") + `, the rest ${other.toFixed(1)} ms`;
  const bar = $("timing-bar");
  bar.replaceChildren();
  for (const [name, value] of [...parts.map((n) => [n, stages[n]]), ["other", other]]) {
    const span = document.createElement("span");
    span.className = `t-${name}`;
    span.style.width = `${total ? (100 * value) / total : 0}%`;
    span.title = `${name}: ${value.toFixed(1)} ms`;
    bar.append(span);
  }
}

function showError(message) {
  const error = $("error");
  error.textContent = message;
  error.hidden = false;
  $("timing").textContent = "";
}

// a drop zone: click, Enter or Space opens its file picker; a photo dropped on it goes to `take`
function wireDrop(zone, input, take) {
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    take(event.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = ""; // the same photo chosen again is sent again
    take(file);
  });
}

function wireInputs() {
  $("model").addEventListener("change", chooseModel);
  $("task").addEventListener("change", chooseTask);
  wireDrop($("drop"), $("file"), send);
  for (const slot of ["a", "b"]) wireDrop($(`drop-${slot}`), $(`file-${slot}`), (file) => file && comparePhoto(slot, file));
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) send(file);
  });
  wireCamera();
}
function wireCamera() {
  const button = $("camera");
  const video = $("video");
  if (!navigator.mediaDevices?.getUserMedia) {
    button.hidden = true;
    return;
  }
  let stream = null;
  button.addEventListener("click", async () => {
    if (!stream) {
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: true });
      } catch (error) {
        return showError(`the camera is not available here (${error.message})`);
      }
      video.srcObject = stream;
      video.hidden = false;
      await video.play();
      button.textContent = "Capture";
      return;
    }
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    stream.getTracks().forEach((track) => track.stop());
    stream = null;
    video.hidden = true;
    button.textContent = "Use the camera";
    canvas.toBlob((blob) => send(new File([blob], "camera.jpg", { type: "image/jpeg" })), "image/jpeg", 0.92);
  });
}

// -- watch the server -------------------------------------------------------------------------------
const CHARTS = [
  { key: "rate", title: "Requests/s", series: [["ok", "#2a9d55"], ["failed", "#d1493f"]], unit: "/s" },
  { key: "latency", title: "Latency (recent requests)", series: [["p50", "#2f6fdf"], ["p90", "#8e6fd8"], ["p99", "#d1493f"]], unit: " ms" },
  { key: "batch", title: "Batch size (recent mean)", series: [["batch", "#2f6fdf"]], unit: "" },
  { key: "queue", title: "Queue depth and in flight", series: [["queue", "#f2b632"], ["in_flight", "#2f6fdf"]], unit: "" },
];

function record(stats) {
  for (const model of stats.models) {
    if (model.ok === undefined) continue;
    let entry = history.get(model.name);
    if (!entry) {
      entry = { last: null, series: {} };
      for (const chart of CHARTS) for (const [name] of chart.series) entry.series[name] = [];
      history.set(model.name, entry);
    }
    const elapsed = entry.last ? stats.time - entry.last.time : 0;
    const values = {
      ok: elapsed > 0 ? Math.max(0, model.ok - entry.last.ok) / elapsed : 0,
      failed: elapsed > 0 ? Math.max(0, model.failed - entry.last.failed) / elapsed : 0,
      p50: model.latency_ms.p50, p90: model.latency_ms.p90, p99: model.latency_ms.p99,
      batch: model.batch_size, queue: model.queue_depth, in_flight: model.in_flight,
    };
    entry.last = { time: stats.time, ok: model.ok, failed: model.failed };
    for (const [name, value] of Object.entries(values)) {
      const series = entry.series[name];
      series.push(value ?? null);
      if (series.length > HISTORY) series.shift();
    }
  }
}

function renderTable(stats) {
  const body = $("models").tBodies[0];
  body.replaceChildren();
  for (const model of stats.models) {
    const row = body.insertRow();
    const name = model.name + (model.default ? " (default)" : "");
    for (const value of [name, (model.tasks || []).join(", "), model.version, model.state, model.backend || "–"]) {
      row.insertCell().textContent = value;
    }
  }
}

function card(name) {
  const id = `model-${name.replace(/[^\w-]/g, "_")}`;
  let element = document.getElementById(id);
  if (element) return element;
  element = document.createElement("div");
  element.className = "model-card";
  element.id = id;
  const heading = document.createElement("h3");
  heading.textContent = name;
  const grid = document.createElement("div");
  grid.className = "charts";
  for (const chart of CHARTS) {
    const figure = document.createElement("figure");
    figure.innerHTML = `<figcaption></figcaption><canvas role="img"></canvas><output></output>`;
    figure.querySelector("figcaption").textContent = chart.title;
    figure.querySelector("canvas").setAttribute("aria-label", `${chart.title} for ${name}, last three minutes`);
    figure.dataset.chart = chart.key;
    grid.append(figure);
  }
  element.append(heading, grid);
  $("charts").append(element);
  return element;
}

function draw(canvas, lines) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const context = canvas.getContext("2d");
  context.scale(ratio, ratio);
  context.clearRect(0, 0, width, height);
  const all = lines.flatMap(([values]) => values.filter((v) => v !== null));
  const top = Math.max(1, ...all) * 1.1;
  context.strokeStyle = "#e5e9f0";
  context.fillStyle = "#5b6472";
  context.font = "10px system-ui, sans-serif";
  for (const fraction of [0.5, 1]) {
    const y = height - fraction * (height - 4);
    context.beginPath(); context.moveTo(0, y); context.lineTo(width, y); context.stroke();
    context.fillText(String(+(top * fraction / 1.1).toPrecision(3)), 2, y + 10);
  }
  for (const [values, color] of lines) {
    context.strokeStyle = color;
    context.lineWidth = 1.5;
    context.beginPath();
    let started = false;
    values.forEach((value, index) => {
      if (value === null) { started = false; return; }
      const span = Math.max(60, values.length); // a young series fills a minute's width, not three
      const x = width - (values.length - 1 - index) * (width / (span - 1));
      const y = height - (value / top) * (height - 4);
      if (started) context.lineTo(x, y); else { context.moveTo(x, y); started = true; }
    });
    context.stroke();
  }
}

function renderCharts() {
  for (const [name, entry] of history) {
    const element = card(name);
    for (const chart of CHARTS) {
      const figure = element.querySelector(`[data-chart="${chart.key}"]`);
      const lines = chart.series.map(([series, color]) => [entry.series[series], color]);
      draw(figure.querySelector("canvas"), lines);
      const latest = chart.series.map(([series]) => {
        const value = entry.series[series].at(-1);
        return `${series} ${value === null || value === undefined ? "–" : Number(value).toFixed(1)}${chart.unit}`;
      });
      const output = figure.querySelector("output");
      output.textContent = latest.join(" · ");
      output.dataset.latest = JSON.stringify(Object.fromEntries(chart.series.map(([s]) => [s, entry.series[s].at(-1)])));
    }
  }
}

async function poll() {
  if (document.visibilityState === "visible") {
    try {
      const stats = await fetch("/web/stats").then((r) => r.json());
      record(stats);
      renderTable(stats);
      renderCharts();
    } catch (error) {
      $("server").textContent = `the server does not answer (${error.message})`;
    }
  }
  setTimeout(poll, 1000);
}

wireInputs();
loadModels().catch((error) => showError(`could not list the models (${error.message})`));
poll();
