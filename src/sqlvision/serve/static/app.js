// sqlvision web UI: one page, hash routes, plain DOM (no framework, no build step).
// Every value from the database goes into the page as text (never as HTML).
"use strict";

const view = document.getElementById("view");
const statusLine = document.getElementById("status");
const TOKEN_KEY = "sqlvision-token";

// -- helpers ------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
  // a cookie lets <img> tags load images when reads need a token; writes use the header only
  document.cookie = "sv_token=" + encodeURIComponent(value) + "; path=/; SameSite=Strict" +
    (value ? "" : "; max-age=0");
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let problem = { detail: response.statusText };
    try { problem = await response.json(); } catch (e) { /* not JSON */ }
    const error = new Error((problem.detail || response.statusText) + (problem.hint ? " (" + problem.hint + ")" : ""));
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function say(text) { statusLine.textContent = text || ""; }

function pct(x) { return x === null || x === undefined ? "" : (100 * x).toFixed(1) + "%"; }

function qs(params) {
  const out = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined && v !== false) out.set(k, v);
  const text = out.toString();
  return text ? "?" + text : "";
}

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: Object.fromEntries(new URLSearchParams(query || "")) };
}

function go(path, params) { location.hash = "#" + path + qs(params || {}); }

function enc(x) { return encodeURIComponent(x); }

function thumb(table, id, size) {
  return "/v1/tables/" + enc(table) + "/images/" + enc(id) + "/thumbnail?size=" + (size || 160);
}

function bars(topK) {
  return h("div", { class: "bars", "data-testid": "topk" }, (topK || []).map(e =>
    h("div", { class: "bar" }, h("span", { class: "name", title: e.label, text: e.label }),
      h("span", { class: "track" }, h("span", { class: "fill", style: "display:block;width:" + (100 * e.probability).toFixed(1) + "%" })),
      h("span", { text: pct(e.probability) }))));
}

let modelCache = null;
async function models() {
  if (modelCache === null) modelCache = await api("/v1/models");
  return modelCache;
}

function select(name, values, current, attrs) {
  return h("select", Object.assign({ name }, attrs || {}),
    values.map(v => Array.isArray(v)
      ? h("option", { value: v[0], selected: String(v[0]) === String(current ?? "") }, v[1])
      : h("option", { value: v, selected: String(v) === String(current ?? "") }, v === "" ? "any" : v)));
}

// -- tables -------------------------------------------------------------------------------------
async function tablesPage() {
  const tables = await api("/v1/tables");
  view.replaceChildren(h("h1", {}, "Tables"), h("div", { class: "cards" }, tables.map(t =>
    h("div", { class: "card", "data-testid": "table-card" },
      h("h2", {}, t.images ? h("a", { href: "#/table/" + enc(t.name) }, t.name) : t.name),
      h("div", {}, t.rows.toLocaleString() + " rows"),
      t.images ? h("a", { href: "#/review/" + enc(t.name) }, "review queue") : h("span", { class: "muted" }, "not an image table")))));
  if (!tables.length) view.append(h("p", {}, "No tables yet: sqlvision ingest TABLE FOLDER"));
}

function statsChart(info, onPick) {
  const splits = info.splits, counts = info.counts;
  const colors = ["#3a78c2", "#e39b2f", "#4aa36b", "#9b59b6", "#c0392b"];
  const max = Math.max(1, ...counts.flatMap(r => splits.map(s => r[s])));
  const groupW = Math.max(40, 14 * splits.length + 16), height = 180, top = 10, left = 36;
  const width = left + groupW * counts.length + 120;
  const chart = svg("svg", { width, height: height + 70, "data-testid": "stats-chart", role: "img" });
  for (let i = 0; i <= 4; i++) {
    const y = top + height - (height * i) / 4;
    chart.append(svg("line", { x1: left, x2: width - 120, y1: y, y2: y, stroke: "#ddd" }),
      svg("text", { x: left - 4, y: y + 4, "text-anchor": "end" }, Math.round((max * i) / 4)));
  }
  counts.forEach((row, g) => {
    const x0 = left + g * groupW + 8;
    splits.forEach((s, k) => {
      const value = row[s], bh = (height * value) / max;
      const bar = svg("rect", { x: x0 + k * 14, y: top + height - bh, width: 12, height: bh, fill: colors[k % colors.length],
        class: "clickable", "data-label": row.label ?? "", "data-split": s, onclick: () => onPick(row.label, s) },
        svg("title", {}, (row.label ?? "(none)") + " / " + s + ": " + value));
      chart.append(bar);
    });
    const lx = x0 + (14 * splits.length) / 2 - 4, ly = top + height + 14;
    chart.append(svg("text", { x: lx, y: ly, transform: "rotate(30 " + lx + " " + ly + ")" }, row.label ?? "(none)"));
  });
  splits.forEach((s, k) => chart.append(
    svg("rect", { x: width - 110, y: top + k * 18, width: 12, height: 12, fill: colors[k % colors.length] }),
    svg("text", { x: width - 92, y: top + k * 18 + 10 }, s)));
  return chart;
}

async function tablePage(name, params) {
  const [info, known] = await Promise.all([api("/v1/tables/" + enc(name)), models()]);
  const model = params.model ?? (known[0] ? known[0].name : "");
  const filter = Object.assign({ limit: 60, offset: 0 }, params, { model });
  const page = await api("/v1/tables/" + enc(name) + "/images" + qs(filter));
  const classes = (known.find(m => m.name === model.split(":")[0]) || {}).classes || [];
  const form = h("form", { class: "filters", "data-testid": "filters", onsubmit: e => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(e.target));
    data.misclassified = e.target.misclassified.checked ? "true" : "";
    go("/table/" + enc(name), data);
  } },
  h("label", {}, "label", select("label", ["", ...info.labels.filter(l => l !== null)], params.label)),
  h("label", {}, "split", select("split", ["", ...info.splits.filter(s => s !== "(none)")], params.split)),
  h("label", {}, "model", select("model", [["", "none"], ...known.map(m => [m.name, m.name])], model)),
  h("label", {}, "predicted", select("predicted", ["", ...classes], params.predicted)),
  h("label", {}, "min confidence", h("input", { type: "number", name: "min_confidence", min: 0, max: 1, step: 0.01, value: params.min_confidence || "" })),
  h("label", {}, "max confidence", h("input", { type: "number", name: "max_confidence", min: 0, max: 1, step: 0.01, value: params.max_confidence || "" })),
  h("label", {}, "misclassified only", h("input", { type: "checkbox", name: "misclassified", checked: params.misclassified === "true" })),
  h("label", {}, "order", select("order", [["id", "id"], ["confidence", "least confident"], ["-confidence", "most confident"]], params.order || "id")),
  h("button", { type: "submit" }, "Filter"));
  const grid = h("div", { class: "grid", "data-testid": "grid" }, page.items.map(r => {
    const wrong = r.predicted !== null && r.label !== null && r.predicted !== r.label;
    return h("a", { class: "tile" + (wrong ? " wrong" : ""), href: "#/image/" + enc(name) + "/" + r.id + qs({ model }), "data-testid": "tile", "data-id": r.id },
      h("img", { src: thumb(name, r.id), alt: "image " + r.id, loading: "lazy" }),
      h("div", { class: "meta" }, h("b", {}, "#" + r.id), " ", r.label ?? "(no label)", " · ", r.split ?? ""),
      h("div", { class: "meta" + (wrong ? " wrong-text" : "") }, r.predicted !== null ? "→ " + r.predicted + " " + pct(r.confidence) : ""));
  }));
  const offset = Number(filter.offset), limit = Number(filter.limit);
  const pager = h("div", { class: "pager" },
    h("button", { disabled: offset <= 0, onclick: () => go("/table/" + enc(name), Object.assign({}, filter, { offset: Math.max(0, offset - limit) })) }, "← previous"),
    h("span", { "data-testid": "total" }, page.total ? (offset + 1) + "–" + Math.min(offset + limit, page.total) + " of " + page.total : "no images match"),
    h("button", { disabled: offset + limit >= page.total, onclick: () => go("/table/" + enc(name), Object.assign({}, filter, { offset: offset + limit })) }, "next →"));
  view.replaceChildren(
    h("h1", {}, name, " ", h("small", { class: "muted" }, info.rows + " images")),
    h("p", {}, h("a", { href: "#/review/" + enc(name) + qs({ model }) }, "Review queue"), page.model ? h("span", { class: "muted" }, "  predictions of " + page.model) : ""),
    h("h2", {}, "Images per label and split"), h("p", { class: "muted" }, "click a bar to see its images"),
    statsChart(info, (label, split) => go("/table/" + enc(name), { label: label ?? "", split: split === "(none)" ? "" : split, model })),
    h("h2", {}, "Images"), form, pager, grid);
}

// -- one image ---------------------------------------------------------------------------------
async function imagePage(table, id, params) {
  const detail = await api("/v1/tables/" + enc(table) + "/images/" + enc(id));
  const model = params.model || (detail.predictions[0] || {}).model;
  const current = detail.predictions.find(p => p.model === model) || detail.predictions[0];
  const known = await models();
  const classes = ((known.find(m => m.name === (current || {}).model) || known[0] || {}).classes || []).slice();
  if (detail.label !== null && !classes.includes(detail.label)) classes.unshift(detail.label);
  const relabel = h("form", { "data-testid": "relabel", onsubmit: async e => {
    e.preventDefault();
    const label = e.target.label.value;
    try {
      await api("/v1/tables/" + enc(table) + "/images/" + enc(id) + "/label", {
        method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ label }) });
      say("label of #" + id + " set to " + label);
      await imagePage(table, id, params);
    } catch (err) { say(err.message); }
  } }, select("label", classes, detail.label, { "aria-label": "new label" }), " ", h("button", { type: "submit" }, "Save label"));
  view.replaceChildren(
    h("p", {}, h("a", { href: "#/table/" + enc(table) + qs({ model }) }, "← " + table)),
    h("h1", {}, table + " #" + id),
    h("div", { class: "split" },
      h("div", { class: "big" }, h("img", { src: "/v1/tables/" + enc(table) + "/images/" + enc(id) + "/image", alt: "image " + id, "data-testid": "full-image" })),
      h("div", {},
        h("p", {}, "label: ", h("b", { "data-testid": "label" }, detail.label ?? "(none)"), "  split: ", detail.row.split ?? ""),
        current ? [h("p", {}, "prediction of ", h("b", {}, current.model + ":" + current.model_version), ": ", h("b", {}, current.label ?? current.error), " ", pct(current.confidence)), bars(current.top_k)]
          : h("p", { class: "muted" }, "no predictions yet"),
        h("h2", {}, "Relabel"), relabel)),
    h("h2", {}, "Predictions across model versions"),
    h("table", { class: "data", "data-testid": "history" },
      h("tr", {}, h("th", {}, "model"), h("th", {}, "version"), h("th", {}, "label"), h("th", {}, "confidence"), h("th", {}, "predicted at")),
      detail.predictions.map(p => h("tr", {}, h("td", {}, h("a", { href: "#/model/" + enc(p.model) + qs({ version: p.model_version }) }, p.model)),
        h("td", {}, p.model_version), h("td", {}, p.label ?? p.error), h("td", {}, pct(p.confidence)), h("td", {}, p.predicted_at)))),
    h("h2", {}, "Label history"),
    detail.label_history.length ? h("table", { class: "data", "data-testid": "label-history" },
      h("tr", {}, h("th", {}, "when"), h("th", {}, "from"), h("th", {}, "to"), h("th", {}, "by")),
      detail.label_history.map(r => h("tr", {}, h("td", {}, r.changed_at), h("td", {}, r.old_label ?? ""), h("td", {}, r.new_label), h("td", {}, r.changed_by))))
      : h("p", { class: "muted" }, "never relabeled"));
}

// -- models -------------------------------------------------------------------------------------
async function modelsPage() {
  modelCache = null;
  const known = await models();
  view.replaceChildren(h("h1", {}, "Models"), h("table", { class: "data" },
    h("tr", {}, h("th", {}, "name"), h("th", {}, "versions"), h("th", {}, "architecture"), h("th", {}, "classes"), h("th", {}, "validation accuracy")),
    known.map(m => h("tr", {}, h("td", {}, h("a", { href: "#/model/" + enc(m.name) }, m.name)), h("td", {}, m.versions.join(", ")),
      h("td", {}, m.architecture), h("td", {}, m.classes.length), h("td", {}, pct(m.val_accuracy))))));
}

function curvesChart(curves) {
  const width = 460, height = 200, left = 40, top = 10;
  const series = [["train_loss", "#3a78c2"], ["val_loss", "#e39b2f"], ["train_accuracy", "#4aa36b"], ["val_accuracy", "#c0392b"]];
  const values = curves.flatMap(c => series.map(s => c[s[0]]).filter(v => v !== null && v !== undefined));
  const max = Math.max(1, ...values), n = Math.max(1, curves.length - 1);
  const x = i => left + ((width - left - 120) * i) / n, y = v => top + height - (height * v) / max;
  const chart = svg("svg", { width, height: height + 40, "data-testid": "curves" });
  chart.append(svg("line", { x1: left, x2: left, y1: top, y2: top + height, stroke: "#999" }),
    svg("line", { x1: left, x2: width - 120, y1: top + height, y2: top + height, stroke: "#999" }),
    svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, max.toFixed(2)),
    svg("text", { x: left - 4, y: top + height, "text-anchor": "end" }, "0"),
    svg("text", { x: (width - 120) / 2, y: top + height + 24 }, "epoch"));
  series.forEach(([key, color], k) => {
    const points = curves.map((c, i) => [i, c[key]]).filter(p => p[1] !== null && p[1] !== undefined);
    if (points.length) {
      chart.append(svg("polyline", { fill: "none", stroke: color, "stroke-width": 2, points: points.map(p => x(p[0]) + "," + y(p[1])).join(" ") }));
      points.forEach(p => chart.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, fill: color }, svg("title", {}, key + " epoch " + curves[p[0]].epoch + ": " + p[1].toFixed(4)))));
    }
    chart.append(svg("rect", { x: width - 110, y: top + k * 18, width: 12, height: 12, fill: color }), svg("text", { x: width - 92, y: top + k * 18 + 10 }, key));
  });
  return chart;
}

async function modelPage(name, params) {
  const info = await api("/v1/models/" + enc(name) + qs({ version: params.version }));
  const table = params.table || info.predicted_tables[0] || info.lineage.source_table;
  const ref = info.ref, split = params.split || "";
  const evals = await api("/v1/models/" + enc(name) + "/evaluations" + qs({ version: info.version }));
  const body = [
    h("h1", {}, ref, " ", h("small", { class: "muted" }, info.architecture)),
    h("p", {}, "versions: ", info.versions.map(v => [h("a", { href: "#/model/" + enc(name) + qs({ version: v }) }, String(v)), " "]),
      " · classes: ", info.classes.join(", ")),
    h("p", {}, "input: ", info.schema.inputs.map(t => t.name + " " + t.type + " [" + t.shape.join(", ") + "]").join("; "),
      " · preprocessing: " + info.preprocessing.mode + " " + info.preprocessing.height + "x" + info.preprocessing.width + " " + info.preprocessing.resize),
    h("p", {}, "trained on ", info.lineage.source_table ?? "?", info.lineage.row_count ? " (" + info.lineage.row_count + " rows)" : "",
      info.lineage.parent ? ", from " + info.lineage.parent : "", " · validation accuracy ", pct(info.metrics.val_accuracy)),
    h("h2", {}, "Training curves"), info.curves.length ? curvesChart(info.curves) : h("p", { class: "muted" }, "no training curves (imported model)"),
    h("h2", {}, "Evaluation reports")];
  if (evals.length) {
    const e = evals[0];
    body.push(h("p", { "data-testid": "evaluation" }, "on " + e.source_table + (e.where_clause ? " where " + e.where_clause : "") + ": accuracy ",
      h("b", {}, pct(e.accuracy)), ", top-" + e.k + " " + pct(e.top_k_accuracy) + ", " + e.row_count + " rows, " + e.evaluated_at),
    h("table", { class: "data" }, h("tr", {}, ["class", "precision", "recall", "f1", "support"].map(c => h("th", {}, c))),
      e.per_class.map(r => h("tr", {}, h("td", {}, r.label), h("td", {}, r.precision.toFixed(3)), h("td", {}, r.recall.toFixed(3)), h("td", {}, r.f1.toFixed(3)), h("td", {}, r.support)))));
  } else body.push(h("p", { class: "muted" }, "none stored: sqlvision evaluate " + name + " --table TABLE"));
  view.replaceChildren(...body);
  if (!table) return;
  const choose = h("form", { class: "filters", onsubmit: e => { e.preventDefault(); const d = Object.fromEntries(new FormData(e.target)); go("/model/" + enc(name), Object.assign({ version: params.version }, d)); } },
    h("label", {}, "table", select("table", info.predicted_tables.length ? info.predicted_tables : [table], table)),
    h("label", {}, "split", h("input", { name: "split", value: split, placeholder: "any" })), h("button", { type: "submit" }, "Show"));
  view.append(h("h2", {}, "Confusion matrix of stored predictions"), choose);
  try {
    const cm = await api("/v1/models/" + enc(name) + "/confusion" + qs({ table, split, version: info.version }));
    const max = Math.max(1, ...cm.matrix.flat());
    view.append(h("p", {}, cm.rows + " labeled rows of " + table + ", accuracy " + pct(cm.accuracy) + " (rows: true label, columns: predicted; click a cell for its images)"),
      h("table", { class: "data confusion", "data-testid": "confusion" },
        h("tr", {}, h("th", {}, "true \\ predicted"), cm.classes.map(c => h("th", {}, c))),
        cm.classes.map((truth, i) => h("tr", {}, h("th", {}, truth), cm.classes.map((pred, j) => {
          const n = cm.matrix[i][j], shade = Math.round(255 - 150 * (n / max));
          return h("td", { class: i === j ? "diag" : "", style: "background: rgb(" + shade + "," + shade + ",255)" },
            n ? h("a", { href: "#/table/" + enc(table) + qs({ label: truth, predicted: pred, model: cm.model, split }), "data-testid": "cell" }, n) : "0");
        })))));
    const wrong = await api("/v1/models/" + enc(name) + "/mistakes" + qs({ table, split, version: info.version, limit: 24 }));
    view.append(h("h2", {}, "Most confident mistakes"), h("div", { class: "grid", "data-testid": "mistakes" }, wrong.items.map(r =>
      h("a", { class: "tile wrong", href: "#/image/" + enc(table) + "/" + r.id + qs({ model: name }) },
        h("img", { src: thumb(table, r.id), alt: "image " + r.id, loading: "lazy" }),
        h("div", { class: "meta" }, "#" + r.id + " true: " + r.label),
        h("div", { class: "meta wrong-text" }, "→ " + r.predicted + " " + pct(r.confidence))))));
  } catch (err) { view.append(h("p", { class: "muted" }, err.message)); }
}

// -- upload -------------------------------------------------------------------------------------
async function uploadPage(params) {
  const known = await models();
  const result = h("div", { "data-testid": "upload-result" });
  const chooser = select("model", known.map(m => m.name), params.model || (known[0] || {}).name, { "aria-label": "model" });
  async function classify(file) {
    const form = new FormData();
    form.append("image", file);
    result.replaceChildren(h("p", {}, "classifying…"));
    try {
      const answer = await api("/v1/models/" + enc(chooser.value) + "/predict?top_k=5", { method: "POST", body: form });
      result.replaceChildren(h("div", { class: "split" },
        h("div", { class: "big" }, h("img", { src: URL.createObjectURL(file), alt: file.name })),
        h("div", {}, h("p", {}, answer.ref + ": ", h("b", { "data-testid": "predicted-label" }, answer.label), " " + pct(answer.confidence)),
          bars(answer.top_k),
          h("p", { class: "muted" }, "preprocessing: " + answer.preprocessing.mode + " " + answer.preprocessing.height + "x" + answer.preprocessing.width + " " + answer.preprocessing.resize))));
    } catch (err) { result.replaceChildren(h("p", { class: "wrong-text" }, err.message)); }
  }
  const input = h("input", { type: "file", accept: "image/*", "data-testid": "file", onchange: e => e.target.files[0] && classify(e.target.files[0]) });
  const drop = h("div", { class: "drop", "data-testid": "drop",
    ondragover: e => { e.preventDefault(); drop.classList.add("over"); },
    ondragleave: () => drop.classList.remove("over"),
    ondrop: e => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]); } },
  "Drop an image here, or ", input);
  view.replaceChildren(h("h1", {}, "Classify an image"), h("label", {}, "model ", chooser), drop, result);
}

// -- review queue ---------------------------------------------------------------------------------
let reviewKeys = null;

async function reviewPage(table, params) {
  const known = await models();
  const model = params.model || (known[0] || {}).name;
  if (!model) { view.replaceChildren(h("p", {}, "No models yet: train one first.")); return; }
  const queue = await api("/v1/tables/" + enc(table) + "/review" + qs({ model, limit: 20 }));
  const item = queue.items[0];
  const header = [h("p", {}, h("a", { href: "#/table/" + enc(table) + qs({ model }) }, "← " + table)),
    h("h1", {}, "Review queue: " + table, " ", h("small", { class: "muted", "data-testid": "remaining" }, queue.remaining + " to review, " + queue.model))];
  if (!item) { view.replaceChildren(...header, h("p", { "data-testid": "queue-empty" }, "Nothing left to review.")); return; }
  const classes = queue.classes.slice();
  if (item.label !== null && !classes.includes(item.label)) classes.push(item.label);
  async function choose(label) {
    try {
      await api("/v1/tables/" + enc(table) + "/images/" + item.id + "/label", {
        method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ label }) });
      say("#" + item.id + ": " + (item.label === label ? "kept " : "relabeled ") + label);
      await reviewPage(table, params);
    } catch (err) { say(err.message); }
  }
  reviewKeys = e => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    const n = Number(e.key);
    if (n >= 1 && n <= classes.length) choose(classes[n - 1]);
    else if (e.key === "Enter" && item.label !== null) choose(item.label);
  };
  view.replaceChildren(...header, h("div", { class: "split", "data-testid": "review-item", "data-id": item.id },
    h("div", { class: "big" }, h("img", { src: "/v1/tables/" + enc(table) + "/images/" + item.id + "/image", alt: "image " + item.id })),
    h("div", {},
      h("p", {}, h("a", { href: "#/image/" + enc(table) + "/" + item.id + qs({ model }) }, "#" + item.id), " label: ", h("b", {}, item.label ?? "(none)"),
        item.misclassified ? h("span", { class: "wrong-text" }, "  the model disagrees") : ""),
      h("p", {}, "predicted ", h("b", {}, item.predicted), " " + pct(item.confidence)), bars(item.top_k),
      h("p", {}, "Choose the right label (press its number, ", h("kbd", {}, "Enter"), " keeps the current one):"),
      h("div", { class: "keys" }, classes.map((c, i) => h("button", { onclick: () => choose(c), "data-label": c },
        h("kbd", {}, String(i + 1)), " " + c))))));
}

// -- routing --------------------------------------------------------------------------------------
async function render() {
  reviewKeys = null;
  const { parts, params } = route();
  try {
    if (parts[0] === "table" && parts[1]) await tablePage(parts[1], params);
    else if (parts[0] === "image" && parts[2]) await imagePage(parts[1], parts[2], params);
    else if (parts[0] === "models") await modelsPage();
    else if (parts[0] === "model" && parts[1]) await modelPage(parts[1], params);
    else if (parts[0] === "upload") await uploadPage(params);
    else if (parts[0] === "review" && parts[1]) await reviewPage(parts[1], params);
    else await tablesPage();
  } catch (err) {
    view.replaceChildren(h("p", { class: "wrong-text", "data-testid": "error" }, err.message),
      err.status === 401 ? h("p", {}, "Enter the server's token above.") : "");
  }
}

document.addEventListener("keydown", e => { if (reviewKeys) reviewKeys(e); });
document.getElementById("token-form").addEventListener("submit", e => {
  e.preventDefault();
  setToken(document.getElementById("token").value.trim());
  modelCache = null;
  say(token() ? "token set" : "token cleared");
  render();
});
document.getElementById("token").value = token();
window.addEventListener("hashchange", () => { say(""); render(); });
render();
