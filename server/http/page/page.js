// warpserve status page: polls /api/status, draws throughput and latency from the
// differences between polls of the server's own counters, classifies uploaded images
// through the REST inference endpoint. Plain JavaScript, no libraries.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120; // points kept per model (two minutes at one poll a second)
const COLOURS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#57606a"];

const history = new Map(); // model -> [{t, rate, latencyMs}]
let previous = null; // the last status document
let polls = 0;

function successOf(model) {
  // Summed over versions: traffic moves between versions during a rollout.
  let count = 0;
  let ns = 0;
  for (const version of model.versions) {
    const stats = version.statistics;
    if (stats) {
      count += stats.inference_stats.success.count;
      ns += stats.inference_stats.success.ns;
    }
  }
  return { count, ns };
}

function record(status) {
  if (previous !== null) {
    const seconds = (status.time_ms - previous.time_ms) / 1000;
    const before = new Map(previous.models.map((m) => [m.model, successOf(m)]));
    for (const model of status.models) {
      const now = successOf(model);
      const then = before.get(model.model) || { count: 0, ns: 0 };
      const requests = Math.max(0, now.count - then.count);
      const points = history.get(model.model) || [];
      points.push({
        t: status.time_ms,
        rate: seconds > 0 ? requests / seconds : 0,
        latencyMs: requests > 0 ? (now.ns - then.ns) / requests / 1e6 : null,
      });
      if (points.length > HISTORY) points.shift();
      history.set(model.model, points);
    }
  }
  previous = status;
}

function colourOf(name) {
  const names = [...history.keys()].sort();
  return COLOURS[Math.max(0, names.indexOf(name)) % COLOURS.length];
}

function draw(canvasId, pick) {
  const canvas = document.getElementById(canvasId);
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  const pad = 34;
  ctx.clearRect(0, 0, w, h);
  let top = 0;
  let drawn = 0;
  for (const points of history.values()) {
    for (const p of points) {
      const v = pick(p);
      if (v !== null) top = Math.max(top, v);
    }
  }
  top = top > 0 ? top * 1.15 : 1;
  ctx.strokeStyle = "#d0d7de";
  ctx.fillStyle = "#57606a";
  ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = h - pad / 2 - ((h - pad) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad, y);
    ctx.lineTo(w, y);
    ctx.stroke();
    ctx.fillText(((top * i) / 4).toPrecision(3), 0, y + 4);
  }
  let last = null;
  for (const [name, points] of history) {
    ctx.strokeStyle = colourOf(name);
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    points.forEach((p, i) => {
      const v = pick(p);
      if (v === null) {
        started = false;
        return;
      }
      const x = pad + ((w - pad) * i) / (HISTORY - 1);
      const y = h - pad / 2 - ((h - pad) * v) / top;
      if (started) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      started = true;
      drawn += 1;
    });
    ctx.stroke();
    const tail = points.length ? pick(points[points.length - 1]) : null;
    if (tail !== null) last = (last || 0) + tail;
  }
  canvas.dataset.points = String(drawn);
  canvas.dataset.last = last === null ? "" : String(last);
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function guardText(guard) {
  if (!guard) return "";
  const rolled = guard.rolled_back ? `, rolled back (${guard.rolled_back})` : "";
  return `${guard.verdict} vs v${guard.baseline_version}${rolled}`;
}

function renderTable(status) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren();
  for (const model of status.models) {
    const versions = model.versions.length ? model.versions : [null];
    versions.forEach((v, i) => {
      const row = document.createElement("tr");
      row.dataset.model = model.model;
      cell(row, i === 0 ? model.model : "");
      if (v === null) {
        cell(row, "-");
        cell(row, "not loaded", "state");
        for (let k = 0; k < 5; k++) cell(row, "");
      } else {
        cell(row, String(v.version) + (v.active ? " (active)" : "") + (v.shadow ? " (shadow)" : ""));
        cell(row, v.state, `state state-${v.state}`);
        cell(row, `${Math.round(v.weight * 100)}%`);
        cell(row, String(v.success_count));
        cell(row, String(v.failure_count));
        const lat = v.latency;
        cell(row, lat && lat.count ? `${lat.p50_ms.toFixed(2)} / ${lat.p99_ms.toFixed(2)}` : "");
        const guard = cell(row, guardText(v.guard));
        if (v.guard) guard.title = v.guard.reason;
      }
      body.appendChild(row);
    });
  }
}

function renderLegend() {
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  for (const name of [...history.keys()].sort()) {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colourOf(name);
    span.append(swatch, name);
    legend.appendChild(span);
  }
}

function renderImageModels(status) {
  const select = document.getElementById("image-model");
  const wanted = status.models.filter((m) => m.image).map((m) => m.model);
  const have = [...select.options].map((o) => o.value);
  if (wanted.join() === have.join()) return;
  const chosen = select.value;
  select.replaceChildren(...wanted.map((name) => new Option(name, name, false, name === chosen)));
  document.getElementById("classify").hidden = wanted.length === 0;
}

async function poll() {
  try {
    const reply = await fetch("/api/status", { cache: "no-store" });
    if (reply.status === 401 || reply.status === 403) {
      location.assign("/"); // the token changed: the page asks for it again
      return;
    }
    const status = await reply.json();
    polls += 1;
    document.body.dataset.polls = String(polls);
    const server = status.server;
    document.getElementById("server").textContent = `${server.name} ${server.version}`;
    const ready = document.getElementById("ready");
    ready.textContent = status.ready ? "ready" : "not ready";
    ready.className = `badge ${status.ready ? "ok" : "no"}`;
    record(status);
    renderTable(status);
    renderImageModels(status);
    renderLegend();
    draw("throughput", (p) => p.rate);
    draw("latency", (p) => p.latencyMs);
  } catch (err) {
    document.getElementById("server").textContent = `no answer: ${err}`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// One image as Triton's binary tensor extension carries a BYTES element: the JSON
// request, then a 4-byte little-endian length and the file's bytes.
function inferBody(image, info, bytes) {
  const request = {
    inputs: [
      {
        name: info.input,
        datatype: "BYTES",
        shape: info.batched ? [1, 1] : [1],
        parameters: { binary_data_size: bytes.byteLength + 4 },
      },
    ],
    outputs: [{ name: info.output, parameters: { classification: 1 } }],
  };
  const head = new TextEncoder().encode(JSON.stringify(request));
  const body = new Uint8Array(head.length + 4 + bytes.byteLength);
  body.set(head, 0);
  new DataView(body.buffer).setUint32(head.length, bytes.byteLength, true);
  body.set(new Uint8Array(bytes), head.length + 4);
  return { body, headerLength: head.length };
}

async function classify(event) {
  event.preventDefault();
  const out = document.getElementById("prediction");
  const file = document.getElementById("image-file").files[0];
  const name = document.getElementById("image-model").value;
  const model = previous && previous.models.find((m) => m.model === name);
  if (!file || !model || !model.image) {
    out.textContent = "choose a model and an image first";
    out.className = "error";
    return;
  }
  out.textContent = "…";
  out.className = "";
  document.getElementById("preview").src = URL.createObjectURL(file);
  const { body, headerLength } = inferBody(file, model.image, await file.arrayBuffer());
  const reply = await fetch(`/v2/models/${encodeURIComponent(name)}/infer`, {
    method: "POST",
    headers: { "Inference-Header-Content-Length": String(headerLength) },
    body,
  });
  const answer = await reply.json();
  if (!reply.ok) {
    out.textContent = answer.error || `HTTP ${reply.status}`;
    out.className = "error";
    return;
  }
  // "score:index:label", best first (the classification extension).
  const [score, index, label] = answer.outputs[0].data[0].split(":");
  out.textContent = `${label || "class " + index} (${Number(score).toFixed(3)})`;
  out.dataset.label = label || index;
}

document.getElementById("upload").addEventListener("submit", classify);
poll();
