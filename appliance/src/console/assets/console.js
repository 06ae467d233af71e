// The console's one script: views drawn from the console's JSON API, updates pushed over
// server-sent events, charts drawn as SVG. No framework, nothing fetched from elsewhere.
"use strict";

const state = { session: null, events: null, follow: null, overview: null };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function notice(message) {
  const box = $("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

async function call(method, path, body) {
  const headers = {};
  if (method !== "GET") {
    headers["content-type"] = "application/json";
    if (state.session) headers["x-csrf-token"] = state.session.csrf;
  }
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let answer = null;
  try {
    answer = await response.json();
  } catch (_) {
    answer = { error: response.statusText };
  }
  if (response.status === 401 && path !== "/api/sign-in") {
    showSignIn("Your session ended: sign in again.");
  }
  if (!response.ok) {
    const error = new Error(answer && answer.error ? answer.error : response.statusText);
    error.status = response.status;
    throw error;
  }
  return answer;
}

// Sizes and durations as people read them.
function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
function seconds(s) {
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function count(n) { return Number(n).toLocaleString("en"); }

function badge(text) { return el("span", { class: `badge state-${text}` }, text); }

// A small line chart of [[unix_ms, value], ...] as SVG.
function sparkline(points, label) {
  const width = 160, height = 36;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  if (!points || points.length < 2) {
    const text = document.createElementNS(svg.namespaceURI, "text");
    text.setAttribute("x", "2"); text.setAttribute("y", "22");
    text.textContent = "collecting…";
    svg.append(text);
    return svg;
  }
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const max = Math.max(...points.map((p) => p[1]), 1);
  const d = points.map((p, i) => {
    const x = ((p[0] - t0) / Math.max(t1 - t0, 1)) * (width - 2) + 1;
    const y = height - 2 - (p[1] / max) * (height - 4);
    return `${i === 0 ? "M" : "L"}${x.toFixed(1)},${y.toFixed(1)}`;
  }).join(" ");
  const path = document.createElementNS(svg.namespaceURI, "path");
  path.setAttribute("d", d);
  path.setAttribute("class", "spark-line");
  svg.append(path);
  return svg;
}

function table(columns, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((cell) => el("td", {}, cell))))));
}

// A part of a page that the API refused shows the API's reason in its place.
function partOr(part, draw) {
  if (part && !Array.isArray(part) && part.error) {
    return el("p", { class: "refused" }, part.error);
  }
  return draw(part || []);
}

// ---- sign-in ---------------------------------------------------------------------------

function showSignIn(message) {
  stopStreams();
  state.session = null;
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("view").replaceChildren();
  $("sign-in").hidden = false;
  notice(message);
}

async function signIn(credentials) {
  try {
    const session = await call("POST", "/api/sign-in", credentials);
    state.session = session;
    $("token").value = ""; $("password").value = "";
    await start();
  } catch (error) {
    notice(`Sign-in refused: ${error.message}`);
  }
}

async function start() {
  try {
    state.session = await call("GET", "/api/session");
  } catch (_) {
    showSignIn("");
    return;
  }
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = `${state.session.principal} · ${state.session.role || "?"} ${state.session.version || ""}`;
  notice("");
  route();
}

// ---- views -----------------------------------------------------------------------------

function stopStreams() {
  if (state.events) { state.events.close(); state.events = null; }
  if (state.follow) { state.follow.close(); state.follow = null; }
}

function route() {
  if (!state.session) return;
  stopStreams();
  notice("");
  const hash = location.hash || "#/overview";
  const [, view, name] = hash.split("/").map(decodeURIComponent);
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.id === `nav-${view}`);
  }
  if (view === "topics" && name) return topicView(name);
  if (view === "topics") return overviewStream(drawTopics);
  if (view === "components") return overviewStream(drawComponents);
  if (view === "sql") return sqlView();
  return overviewStream(drawOverview);
}

// The overview is pushed every 2 s; each view draws the part it shows.
function overviewStream(draw) {
  const view = $("view");
  view.replaceChildren(el("p", {}, "loading…"));
  const events = new EventSource("/api/overview/events");
  state.events = events;
  events.addEventListener("overview", (event) => {
    state.overview = JSON.parse(event.data);
    view.replaceChildren(draw(state.overview));
  });
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) notice("Updates stopped: reload the page.");
  };
}

function drawOverview(o) {
  const sys = o.system || {};
  const parts = [el("h1", {}, o.hub ? "Hub overview" : "Edge overview")];
  if (!sys.error) {
    const budget = sys.disk_budget_bytes ? ` of ${bytes(sys.disk_budget_bytes)} (${sys.disk_budget_policy})` : "";
    parts.push(el("p", { id: "system" },
      `${sys.version} · up ${seconds(sys.uptime_ms / 1000)} · disk ${bytes(sys.disk_used_bytes)}${budget}, ${bytes(sys.disk_free_bytes)} free`));
  }
  if (o.edges !== null) {
    parts.push(el("h2", {}, "Edges"));
    parts.push(partOr(o.edges, (edges) => table(
      ["edge", "link", "lag (records)", "lag (time)", "bytes/s, last 15 min", "last error"],
      edges.map((e) => [
        e.edge,
        badge(e.connected ? "connected" : "disconnected"),
        count(e.lag_records),
        seconds(e.lag_seconds),
        el("span", { class: "rate" }, sparkline(e.rates, `bytes/s of ${e.edge}`), ` ${bytes(e.bytes_per_second)}/s`),
        e.last_error || "",
      ]), { id: "edges" })));
  }
  parts.push(el("h2", {}, "Links"));
  parts.push(partOr(o.links, (links) => links.length === 0 ? el("p", {}, "none") : table(
    ["link", "hub", "state", "lag (records)", "lag (time)", "last error"],
    links.map((l) => [l.name, l.hub, badge(l.state), count(l.lag_records), seconds(l.lag_seconds), l.last_error]),
    { id: "links" })));
  parts.push(drawComponents(o, true));
  parts.push(el("h2", {}, "Topics"));
  parts.push(partOr(o.topics, (topics) => el("p", {}, `${topics.length} topics, ${bytes(topics.reduce((s, t) => s + t.size_bytes, 0))}`)));
  return el("div", {}, parts);
}

function drawTopics(o) {
  return el("div", {}, el("h1", {}, "Topics"), partOr(o.topics, (topics) => table(
    ["topic", "partitions", "records", "size", "retention", "mirror of"],
    topics.map((t) => [
      el("a", { href: `#/topics/${encodeURIComponent(t.name)}` }, t.name),
      t.partitions.length, count(t.records), bytes(t.size_bytes),
      t.retention_ms ? seconds(t.retention_ms / 1000) : "forever",
      t.mirror_of || "",
    ]), { id: "topics" })));
}

function actionButton(kind, name, action) {
  return el("button", {
    type: "button",
    class: "action",
    "data-kind": kind, "data-name": name, "data-action": action,
    onclick: async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        await call("POST", `/api/${kind}/${encodeURIComponent(name)}/${action}`, {});
        notice(`${kind === "pipelines" ? "Pipeline" : "Connector"} ${name}: ${action} done.`);
      } catch (error) {
        notice(`${action} ${name} refused: ${error.message}`);
      } finally {
        button.disabled = false;
      }
    },
  }, action);
}

function taskList(tasks) {
  return el("ul", { class: "tasks" }, tasks.map((t) =>
    el("li", {}, `${t.task}: `, badge(t.restarting ? "restarting" : t.state), t.failure ? ` ${t.failure}` : "")));
}

function drawComponents(o, inOverview) {
  const parts = [inOverview ? el("h2", {}, "Pipelines") : el("h1", {}, "Pipelines")];
  parts.push(partOr(o.pipelines, (pipelines) => pipelines.length === 0 ? el("p", {}, "none") : table(
    ["pipeline", "from → to", "state", "tasks", "records/s", ""],
    pipelines.map((p) => [
      p.name, `${p.from} → ${p.to}`, badge(p.state), taskList(p.tasks),
      sparkline(p.rates, `records/s of ${p.name}`),
      inOverview ? "" : el("span", {}, actionButton("pipelines", p.name, p.paused ? "resume" : "pause")),
    ]), { id: "pipelines" })));
  parts.push(el("h2", {}, "Connectors"));
  parts.push(partOr(o.connectors, (connectors) => connectors.length === 0 ? el("p", {}, "none") : table(
    ["connector", "plugin", "topic", "state", "tasks", "records/s", ""],
    connectors.map((c) => [
      c.name, `${c.plugin} (${c.kind})`, c.topic, badge(c.state), taskList(c.tasks),
      sparkline(c.rates, `records/s of ${c.name}`),
      inOverview ? "" : el("span", {},
        actionButton("connectors", c.name, c.paused ? "resume" : "pause"),
        actionButton("connectors", c.name, "restart")),
    ]), { id: "connectors" })));
  return el("div", {}, parts);
}

async function topicView(name) {
  const view = $("view");
  view.replaceChildren(el("p", {}, "loading…"));
  let topic;
  try {
    topic = await call("GET", `/api/topics/${encodeURIComponent(name)}`);
  } catch (error) {
    view.replaceChildren(el("h1", {}, name), el("p", { class: "refused" }, error.message));
    return;
  }
  const records = el("div", { id: "records" });
  const pick = el("select", { id: "partition" }, topic.partitions.map((p) => el("option", { value: p.partition }, `partition ${p.partition}`)));
  const load = async () => {
    records.replaceChildren(el("p", {}, "loading…"));
    try {
      const answer = await call("GET", `/api/topics/${encodeURIComponent(name)}/records?partition=${pick.value}&limit=20`);
      records.replaceChildren(table(["offset", "time", "key", "value"],
        answer.records.map((r) => [r.offset, new Date(r.timestamp_ms).toISOString(), r.key ?? "", el("code", {}, r.value ?? "")])));
    } catch (error) {
      records.replaceChildren(el("p", { class: "refused" }, error.message));
    }
  };
  pick.addEventListener("change", load);
  view.replaceChildren(
    el("h1", {}, name),
    el("p", {}, `retention ${topic.retention_ms ? seconds(topic.retention_ms / 1000) : "forever"}`,
      topic.retention_bytes ? `, ${bytes(topic.retention_bytes)} per partition` : "",
      topic.mirror_of ? ` · mirror of ${topic.mirror_of}` : ""),
    table(["partition", "start", "end", "size", "segments"],
      topic.partitions.map((p) => [p.partition, count(p.log_start_offset), count(p.high_watermark), bytes(p.size_bytes), p.segments])),
    el("h2", {}, "Newest records ", pick),
    records);
  load();
}

// ---- SQL -------------------------------------------------------------------------------

function sqlView() {
  const editor = el("textarea", { id: "sql", rows: "6", spellcheck: "false" },
    state.lastSql || "SELECT _edge, count(*) AS records FROM readings GROUP BY _edge ORDER BY _edge");
  const follow = el("input", { type: "checkbox", id: "follow" });
  const answer = el("div", { id: "answer" });
  const run = async () => {
    stopStreams();
    state.lastSql = editor.value;
    answer.replaceChildren(el("p", {}, "running…"));
    if (follow.checked) {
      const stream = new EventSource(`/api/query/follow?sql=${encodeURIComponent(editor.value)}`);
      state.follow = stream;
      stream.addEventListener("answer", (event) => drawAnswer(answer, JSON.parse(event.data), true));
      stream.addEventListener("refused", (event) => {
        answer.replaceChildren(el("p", { class: "refused" }, JSON.parse(event.data).error));
        stream.close();
      });
      // A dropped connection reconnects by itself (the console closes connections that send
      // nothing for its idle timeout); a refused stream is closed for good.
      stream.onerror = async () => {
        if (state.follow !== stream || stream.readyState !== EventSource.CLOSED) return;
        // An EventSource hides the status of a refused stream: ask once for the reason.
        try {
          await call("POST", "/api/query", { sql: editor.value });
          answer.prepend(el("p", { class: "refused" }, "the followed query stopped"));
        } catch (error) {
          answer.replaceChildren(el("p", { class: "refused" }, error.message));
        }
      };
      return;
    }
    try {
      drawAnswer(answer, await call("POST", "/api/query", { sql: editor.value }), false);
    } catch (error) {
      answer.replaceChildren(el("p", { class: "refused" }, error.message));
    }
  };
  $("view").replaceChildren(
    el("h1", {}, "SQL"),
    editor,
    el("p", {}, el("button", { type: "button", id: "run", onclick: run }, "Run"), " ",
      el("label", { class: "inline" }, follow, " follow (the answer updates as records arrive)")),
    answer);
}

const TIME_TYPES = /^Timestamp|^Date/;
const NUMBER_TYPES = /^(U?Int|Float|Decimal)/;

// A line chart when the answer has a time column and a number, a bar chart when it has a
// category and a number; none otherwise.
function chartOf(answer) {
  const cols = answer.columns;
  const value = cols.find((c) => NUMBER_TYPES.test(c.type));
  if (!value || answer.rows.length === 0) return null;
  const time = cols.find((c) => TIME_TYPES.test(c.type));
  if (time) return lineChart(answer.rows, time.name, value.name);
  const category = cols.find((c) => c !== value && !NUMBER_TYPES.test(c.type));
  if (category) return barChart(answer.rows, category.name, value.name);
  return null;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function chartFrame(kind, label) {
  return svgEl("svg", { viewBox: "0 0 640 260", class: `chart ${kind}`, id: "chart", "data-kind": kind, role: "img", "aria-label": label });
}

function barChart(rows, category, value) {
  const shown = rows.slice(0, 50);
  const svg = chartFrame("bar", `${value} by ${category}`);
  const max = Math.max(...shown.map((r) => Number(r[value]) || 0), 1);
  const band = 600 / shown.length;
  shown.forEach((r, i) => {
    const h = ((Number(r[value]) || 0) / max) * 200;
    svg.append(svgEl("rect", { x: 30 + i * band + band * 0.1, y: 220 - h, width: band * 0.8, height: Math.max(h, 0.5), class: "bar" }));
    const text = svgEl("text", { x: 30 + i * band + band / 2, y: 240, "text-anchor": "middle", class: "axis" });
    text.textContent = String(r[category] ?? "null").slice(0, 12);
    svg.append(text);
  });
  const top = svgEl("text", { x: 2, y: 16, class: "axis" });
  top.textContent = count(max);
  svg.append(top);
  return svg;
}

function lineChart(rows, time, value) {
  const points = rows
    .map((r) => [Date.parse(r[time]), Number(r[value]) || 0])
    .filter((p) => !Number.isNaN(p[0]))
    .sort((a, b) => a[0] - b[0]);
  const svg = chartFrame("line", `${value} over ${time}`);
  if (points.length === 0) return svg;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const max = Math.max(...points.map((p) => p[1]), 1);
  const d = points.map((p, i) => {
    const x = 30 + ((p[0] - t0) / Math.max(t1 - t0, 1)) * 600;
    const y = 220 - (p[1] / max) * 200;
    return `${i === 0 ? "M" : "L"}${x.toFixed(1)},${y.toFixed(1)}`;
  }).join(" ");
  svg.append(svgEl("path", { d, class: "line" }));
  const top = svgEl("text", { x: 2, y: 16, class: "axis" });
  top.textContent = count(max);
  svg.append(top);
  return svg;
}

function drawAnswer(box, answer, live) {
  const names = answer.columns.map((c) => c.name);
  const rows = answer.rows.map((r) => names.map((n) => (r[n] === undefined ? "null" : typeof r[n] === "object" ? JSON.stringify(r[n]) : r[n])));
  box.replaceChildren(
    el("p", { id: "answer-summary" }, `${count(answer.row_count)} rows`, live ? ` · live, updated ${new Date().toLocaleTimeString("en")}` : ""),
    chartOf(answer) || el("p", {}, "no chart: the answer has no time or category column beside a number"),
    table(names, rows, { id: "answer-table" }));
}

// ---- wiring ----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-token").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn({ token: $("token").value });
  });
  $("sign-in-password").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn({ user: $("user").value, password: $("password").value });
  });
  $("sign-out").addEventListener("click", async () => {
    try { await call("POST", "/api/sign-out", {}); } catch (_) { /* signed out either way */ }
    showSignIn("Signed out.");
  });
  window.addEventListener("hashchange", route);
  start();
});
