// The LakeTS dashboard: figures from /api/events (server-sent events, read with fetch so
// that a token can go in a header), or /api/status polled every second where streaming
// fails. Charts are plain SVG drawn here; the page loads nothing from elsewhere.
"use strict";

const HISTORY = 300; // points kept per chart: five minutes at one a second
const SVG = "http://www.w3.org/2000/svg";
const history = [];

const $ = (id) => document.getElementById(id);

function tokenHeader() {
  const token = sessionStorage.getItem("lakets-token");
  return token ? { Authorization: "Bearer " + token } : {};
}

// ---------------------------------------------------------------- formatting

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
function num(n) {
  return n === null || n === undefined ? "-" : integer.format(n);
}
function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}
function seconds(s) {
  if (s === null || s === undefined) return "-";
  if (s < 10) return s.toFixed(1);
  return integer.format(s);
}
function age(s) {
  if (s === null || s === undefined) return "-";
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---------------------------------------------------------------- charts

// Lines over the kept history: series is [{name, color, value: (point) => number}]. The
// drawing is sized to the element, so that text is never stretched.
function lineChart(target, series) {
  const w = Math.max(200, Math.round(target.clientWidth || 600));
  const h = Math.max(60, Math.round(target.clientHeight || 120));
  target.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const top = 18, bottom = h - 4;
  target.replaceChildren();
  const values = history.flatMap((p) => series.map((s) => s.value(p))).filter((v) => Number.isFinite(v));
  const max = Math.max(1, ...values);
  for (const f of [0, 0.5, 1]) {
    const y = bottom - f * (bottom - top);
    target.append(svg("line", { class: "grid", x1: 0, x2: w, y1: y, y2: y }));
  }
  target.append(svg("text", { x: 2, y: 12 }, num(max)));
  target.append(svg("text", { x: w - 2, y: h - 6, "text-anchor": "end" }, "5 min"));
  let legendX = 70;
  for (const s of series) {
    const points = history
      .map((p, j) => [j, s.value(p)])
      .filter(([, v]) => Number.isFinite(v))
      .map(([j, v]) => {
        // The newest point at the right edge; one point a second.
        const x = w - ((history.length - 1 - j) / (HISTORY - 1)) * w;
        return x.toFixed(1) + "," + (bottom - (v / max) * (bottom - top)).toFixed(1);
      });
    target.append(svg("polyline", { points: points.join(" "), stroke: s.color }));
    target.append(svg("rect", { x: legendX, y: 4, width: 10, height: 10, rx: 2, fill: s.color }));
    const label = svg("text", { x: legendX + 14, y: 13 }, s.name);
    target.append(label);
    legendX += 22 + 7 * s.name.length;
  }
}

// One row per table, one bar per chunk over its time range.
function timeline(target, spans) {
  target.replaceChildren();
  if (spans.length === 0) {
    target.append(svg("text", { x: 4, y: 14 }, "no chunks"));
    return;
  }
  const tables = [...new Set(spans.map((s) => s.table))];
  const rowHeight = 18, labelWidth = 120, width = 600;
  target.setAttribute("viewBox", `0 0 ${width} ${tables.length * rowHeight + 14}`);
  const start = Math.min(...spans.map((s) => Date.parse(s.range_start)));
  const end = Math.max(...spans.map((s) => Date.parse(s.range_end)), Date.now());
  const x = (t) => labelWidth + ((t - start) / Math.max(1, end - start)) * (width - labelWidth - 4);
  tables.forEach((table, row) => {
    const y = row * rowHeight + 2;
    target.append(svg("text", { x: 0, y: y + 12 }, table));
    for (const s of spans.filter((s) => s.table === table)) {
      const x0 = x(Date.parse(s.range_start)), x1 = x(Date.parse(s.range_end));
      const rect = svg("rect", {
        x: x0 + 0.5, y, width: Math.max(1, x1 - x0 - 1), height: rowHeight - 4, rx: 2,
        class: s.status + (s.deferred_reason ? " deferred" : ""),
        "data-chunk": s.chunk,
      });
      rect.append(svg("title", {}, `${s.chunk}: ${s.range_start} .. ${s.range_end}, ${s.status}` +
        (s.deferred_reason ? `\ndeferred: ${s.deferred_reason}` : "")));
      target.append(rect);
    }
  });
  const now = x(Date.now());
  const bottom = tables.length * rowHeight;
  target.append(svg("line", { class: "now", x1: now, x2: now, y1: 0, y2: bottom }));
  target.append(svg("text", { x: labelWidth, y: bottom + 11 }, new Date(start).toISOString().slice(0, 16).replace("T", " ")));
  target.append(svg("text", { x: width - 4, y: bottom + 11, "text-anchor": "end" }, "now"));
}

// ---------------------------------------------------------------- panels

function renderStream(s) {
  const state = $("stream-state");
  state.textContent = s.stream.state;
  state.className = "state state-" + s.stream.state.replace(/ /g, "-");
  $("stream-reason").textContent = s.stream.reason || "";
  $("stream-reason").title = s.stream.reason || "";
  $("updated").textContent = "updated " + new Date(s.at).toLocaleTimeString();
  $("ingest-rate").textContent = num(s.rates.ingest_rows_per_second);
  $("stream-rate").textContent = num(s.rates.stream_rows_per_second);
  $("lag-seconds").textContent = seconds(s.lag_seconds);
  $("lag-bytes").textContent = bytes(s.lag_bytes);
  const body = $("operators").tBodies[0];
  body.replaceChildren(...s.operators.map((o) => {
    const tr = el("tr", { "data-operator": o.operator });
    tr.append(
      el("td", {}, o.operator),
      el("td", {}, o.durable_lsn),
      el("td", { class: "num lag-seconds" }, o.lag_seconds === null || o.lag_seconds === undefined ? "-" : seconds(o.lag_seconds) + " s"),
      el("td", { class: "num lag" }, bytes(o.lag_bytes)),
    );
    return tr;
  }));
}

function renderChunks(s) {
  $("chunks-active").textContent = num(s.chunks.active);
  $("chunks-tiered").textContent = num(s.chunks.tiered);
  $("chunks-dropped").textContent = num(s.chunks.dropped);
  const deferred = s.timeline.filter((c) => c.deferred_reason);
  $("chunks-deferred").textContent = num(deferred.length);
  $("deferred").replaceChildren(...deferred.map((c) => el("li", { "data-chunk": c.chunk }, `${c.chunk}: ${c.deferred_reason}`)));
  // Each table's newest chunks: older ones would squeeze the bars to nothing.
  const perTable = new Map();
  for (const c of s.timeline) {
    if (!perTable.has(c.table)) perTable.set(c.table, []);
    perTable.get(c.table).push(c);
  }
  timeline($("timeline"), [...perTable.values()].flatMap((chunks) => chunks.slice(-48)));
}

function renderRows(s) {
  $("rows-hot").textContent = num(s.rows.hot);
  $("rows-delta").textContent = num(s.rows.delta);
  const versions = s.rows.tables.map((t) => t.delta_version).filter((v) => v !== null && v !== undefined);
  $("delta-version").textContent = versions.length ? versions.join(", ") : "-";
}

function renderRollups(s) {
  const body = $("rollups").tBodies[0];
  body.replaceChildren(...Object.entries(s.rollups).map(([name, r]) => {
    const tr = el("tr", { "data-rollup": name });
    tr.append(
      el("td", {}, name),
      el("td", { class: "watermark" }, r.watermark || "(none)"),
      el("td", { class: "num" }, age(r.watermark_age_seconds)),
      el("td", { class: "num pending" }, num(r.pending_invalidations)),
    );
    return tr;
  }));
}

const shownValues = new Map();
function renderLvc(s) {
  const entries = Object.entries(s.lvc);
  const columns = [...new Set(entries.flatMap(([, v]) => Object.keys(v)))].filter((c) => c !== "time").sort();
  const head = $("lvc").tHead.rows[0];
  head.replaceChildren(el("th", {}, "key"), ...columns.map((c) => el("th", { class: "num" }, c)), el("th", {}, "time"));
  const body = $("lvc").tBodies[0];
  body.replaceChildren(...entries.map(([key, values]) => {
    const tr = el("tr", { "data-key": key });
    tr.append(el("td", { class: "key" }, key));
    for (const c of columns) tr.append(el("td", { class: "num", "data-column": c }, values[c] ?? "NULL"));
    tr.append(el("td", { class: "time" }, values.time || ""));
    const signature = JSON.stringify(values);
    if (shownValues.has(key) && shownValues.get(key) !== signature) tr.classList.add("changed");
    shownValues.set(key, signature);
    return tr;
  }));
}

function renderJobs(s) {
  const body = $("jobs").tBodies[0];
  body.replaceChildren(...s.jobs.map((j) => {
    const outcome = j.last_outcome || "running";
    const tr = el("tr", { "data-job": j.job });
    tr.append(
      el("td", {}, j.job),
      el("td", {}, j.last_started_at),
      el("td", { class: "outcome outcome-" + outcome }, outcome),
      el("td", { class: "num" }, j.duration_seconds === null || j.duration_seconds === undefined ? "-" : j.duration_seconds.toFixed(2) + " s"),
      el("td", { class: "error" }, (j.last_error || "") + (j.failures_last_hour > 0 ? ` (${j.failures_last_hour} failed in the last hour)` : "")),
    );
    return tr;
  }));
}

function renderProfile(s) {
  // The token field shows when a change needs one; the form is off when none may be made.
  if (s.controls.token_required) $("token-row").classList.remove("hidden");
  if (!s.controls.changes_allowed && !$("ctl-apply").disabled) {
    $("ctl-apply").disabled = true;
    $("ctl-message").textContent = "Changes are off: this listener is reachable from other hosts and no admin token is set.";
  }
  const p = s.ingest;
  $("ingest-profile").textContent = p
    ? `${num(p.symbols)} symbols at ${num(p.rows_per_second)} rows/s${p.burst ? ", burst" : ""}`
    : "no ingest profile stored yet";
  // Fields follow the stored profile until the user edits them; an edited field waits
  // for Apply, and only edited fields are sent.
  if (p) {
    if (!edited.has("ctl-symbols")) $("ctl-symbols").value = p.symbols;
    if (!edited.has("ctl-rate")) $("ctl-rate").value = p.rows_per_second;
    if (!edited.has("ctl-burst")) $("ctl-burst").checked = p.burst;
  }
}

const edited = new Set();

function render(s) {
  history.push({
    ingest: s.rates.ingest_rows_per_second,
    stream: s.rates.stream_rows_per_second,
    active: s.chunks.active, tiered: s.chunks.tiered, dropped: s.chunks.dropped,
    hot: s.rows.hot, delta: s.rows.delta,
    pending: Object.fromEntries(Object.entries(s.rollups).map(([n, r]) => [n, r.pending_invalidations])),
  });
  if (history.length > HISTORY) history.shift();
  renderStream(s);
  renderChunks(s);
  renderRows(s);
  renderRollups(s);
  renderLvc(s);
  renderJobs(s);
  renderProfile(s);
  lineChart($("chart-rates"), [
    { name: "ingest", color: "#f79009", value: (p) => p.ingest },
    { name: "stream", color: "#2e90fa", value: (p) => p.stream },
  ]);
  lineChart($("chart-chunks"), [
    { name: "active", color: "#2e90fa", value: (p) => p.active },
    { name: "tiered", color: "#7a5af8", value: (p) => p.tiered },
    { name: "dropped", color: "#98a2b3", value: (p) => p.dropped },
  ]);
  lineChart($("chart-rows"), [
    { name: "hot", color: "#12805c", value: (p) => p.hot },
    { name: "Delta", color: "#7a5af8", value: (p) => p.delta },
  ]);
  const palette = ["#2e90fa", "#f79009", "#7a5af8", "#12805c", "#c01048"];
  lineChart($("chart-invalidations"), Object.keys(s.rollups).map((name, i) => ({
    name, color: palette[i % palette.length], value: (p) => p.pending[name],
  })));
  document.body.dataset.ready = "true";
}

// ---------------------------------------------------------------- connection

function banner(text) {
  const b = $("connection");
  b.textContent = text || "";
  b.classList.toggle("hidden", !text);
}

// The service itself does not answer: its last figures are no longer news.
function unreachable(why) {
  banner("The service does not answer: " + why);
  const state = $("stream-state");
  state.textContent = "unreachable";
  state.className = "state state-unknown";
  $("stream-reason").textContent = "";
}

function askForToken(why) {
  $("token-row").classList.remove("hidden");
  banner(why + " Enter the token in the ingest panel.");
}

async function stream() {
  reconnect = new AbortController();
  const response = await fetch("/api/events", {
    headers: { Accept: "text/event-stream", ...tokenHeader() },
    signal: reconnect.signal,
  });
  if (response.status === 401) {
    askForToken("The figures need the read token (or the admin token).");
    throw new Error("unauthorized");
  }
  if (!response.ok || !response.body) throw new Error("no event stream: HTTP " + response.status);
  banner("");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the event stream ended");
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
      }
      if (event === "status") render(JSON.parse(data));
      else if (event === "failure") banner("The service could not read its figures: " + data);
    }
  }
}

async function poll() {
  const response = await fetch("/api/status", { headers: tokenHeader() });
  if (response.status === 401) {
    askForToken("The figures need the read token (or the admin token).");
    return;
  }
  const body = await response.json();
  if (!response.ok) banner("The service could not read its figures: " + body.error);
  else { banner(""); render(body); }
}

async function connect() {
  for (let failures = 0; ; failures++) {
    const started = Date.now();
    try {
      await stream();
    } catch (e) {
      if (e.name === "AbortError") { failures = 0; continue; } // a new token: at once
      if (Date.now() - started > 10000) failures = 0; // it streamed for a while
      if (failures >= 2 && e.message !== "unauthorized") {
        // Streaming keeps failing (a proxy that buffers, say): poll for a minute, then
        // try streaming again.
        for (let i = 0; i < 60; i++) {
          try { await poll(); } catch (e) { unreachable(e.message); }
          await new Promise((r) => setTimeout(r, 1000));
        }
        failures = 0;
        continue;
      }
      if (e.message !== "unauthorized") unreachable(e.message + "; reconnecting");
      await new Promise((r) => setTimeout(r, e.message === "unauthorized" ? 3000 : 1000));
    }
  }
}

// ---------------------------------------------------------------- controls

async function applyProfile(event) {
  event.preventDefault();
  const message = $("ctl-message");
  const token = $("ctl-token").value.trim();
  if (token) sessionStorage.setItem("lakets-token", token);
  const change = {};
  if (edited.has("ctl-symbols")) change.symbols = Number($("ctl-symbols").value);
  if (edited.has("ctl-rate")) change.rows_per_second = Number($("ctl-rate").value);
  if (edited.has("ctl-burst")) change.burst = $("ctl-burst").checked;
  if (Object.keys(change).length === 0) {
    message.className = "muted";
    message.textContent = "Nothing changed: edit a field first.";
    return;
  }
  $("ctl-apply").disabled = true;
  try {
    const response = await fetch("/api/ingest", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...tokenHeader() },
      body: JSON.stringify(change),
    });
    const body = await response.json();
    if (response.ok) {
      edited.clear();
      message.className = "ok";
      message.textContent = `Ingest now: ${num(body.symbols)} symbols at ${num(body.rows_per_second)} rows/s${body.burst ? ", burst" : ""}.`;
    } else {
      if (response.status === 401) {
        $("token-row").classList.remove("hidden");
        $("ctl-token").focus();
      }
      message.className = "error";
      message.textContent = body.error;
    }
  } catch (e) {
    message.className = "error";
    message.textContent = "The change did not reach the service: " + e.message;
  } finally {
    $("ctl-apply").disabled = false;
  }
}

// A token typed in is kept for this tab, and the figures are asked for again with it.
let reconnect = null;
function useToken() {
  const token = $("ctl-token").value.trim();
  if (token) sessionStorage.setItem("lakets-token", token);
  if (reconnect) reconnect.abort();
}

document.addEventListener("DOMContentLoaded", () => {
  $("controls").addEventListener("submit", applyProfile);
  for (const id of ["ctl-symbols", "ctl-rate", "ctl-burst"]) {
    $(id).addEventListener("input", () => edited.add(id));
  }
  $("ctl-token").addEventListener("change", useToken);
  connect();
});
