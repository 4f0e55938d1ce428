// torchrest's page: try a model (POST /classify) and watch the server (GET /web/stats, once a second
// while the page is visible). Plain JavaScript and <canvas>, no library, nothing loaded from elsewhere.
"use strict";

const HISTORY = 180; // points kept per series: three minutes at one poll a second
const $ = (id) => document.getElementById(id);
const history = new Map(); // model name -> {last, series: {name: [values]}}

// -- try a model ------------------------------------------------------------------------------------
async function loadModels() {
  const [index, stats] = await Promise.all([
    fetch("/v2/repository/index").then((r) => r.json()),
    fetch("/web/stats").then((r) => r.json()),
  ]);
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren();
  for (const model of index.filter((m) => m.state === "READY")) {
    const option = new Option(model.name, model.name);
    select.add(option);
  }
  const fallback = stats.models.find((m) => m.default);
  select.value = chosen || (fallback ? fallback.name : select.value);
  $("server").textContent = `version ${stats.version} · ${stats.ready ? "ready" : "not ready"} · ` +
    `${index.length} model${index.length === 1 ? "" : "s"}`;
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

async function classify(file) {
  if (!file) return;
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("error").hidden = true;
  $("labels").replaceChildren();
  $("timing").textContent = "classifying…";
  $("timing-bar").replaceChildren();
  const form = new FormData();
  form.append("image", file, file.name || "image");
  const model = encodeURIComponent($("model").value);
  let response;
  try {
    response = await fetch(`/classify?top_k=5${model ? `&model=${model}` : ""}`, { method: "POST", body: form });
  } catch (error) {
    return showError(`the server could not be reached (${error.message})`);
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    return showError(`${response.status} ${answer.code || ""}: ${answer.message || answer.error || "no message"}`);
  }
  for (const prediction of answer.top_k) {
    const item = document.createElement("li");
    const percent = (100 * prediction.confidence).toFixed(1);
    item.innerHTML = `<span class="label"></span> <span class="muted">${percent}%</span>` +
      `<div class="bar"><span style="width:${percent}%"></span></div>`;
    item.querySelector(".label").textContent = prediction.label;
    $("labels").append(item);
  }
  showTiming(parseTiming(response.headers.get("server-timing")));
}

function showError(message) {
  const error = $("error");
  error.textContent = message;
  error.hidden = false;
  $("timing").textContent = "";
}

function wireInputs() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => classify(event.target.files[0]));
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) classify(file);
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
    canvas.toBlob((blob) => classify(new File([blob], "camera.jpg", { type: "image/jpeg" })), "image/jpeg", 0.92);
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
    for (const value of [model.name + (model.default ? " (default)" : ""), model.version, model.state, model.backend || "–"]) {
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
