"""The try-it page at ``/``: a text box, a button, the result and its latency; an "explain"
button colours the words of the input by their attributions (/v1/explain: red for the
prediction, blue against, stronger for larger scores; the score on hover). When the server
has a search index (``--index``) a search box above them lists the nearest documents
(/v1/search: rank, cosine score, id, text).

Kept in a .py module (not a package-data file) so that it ships with any install of the
package. The page calls the same ``/v1`` routes any client does (with the API key typed into
it, kept only in the page's memory). Without API keys the model's info is put into the page
as JSON; with keys the page holds nothing about the model and reads ``/v1/info`` with the
key the user types, so it shows no more than the key allows.
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bertkit serve: __NAME__</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #1d2330; }
  h1 { font-size: 1.3rem; margin-bottom: .2rem; }
  .meta { color: #5b6475; margin-top: 0; }
  label { display: block; font-weight: 600; margin: .8rem 0 .2rem; }
  textarea, input[type=text], input[type=password], select { width: 100%; box-sizing: border-box; font: inherit; padding: .45rem; border: 1px solid #b9c0cc; border-radius: 6px; }
  textarea { min-height: 5.5rem; }
  button { margin-top: .9rem; font: inherit; font-weight: 600; padding: .5rem 1.4rem; border: 0; border-radius: 6px; background: #2b59c3; color: white; cursor: pointer; }
  button:disabled { background: #8a9bc4; }
  #status { margin-left: .8rem; color: #5b6475; }
  #summary { margin-top: 1.1rem; }
  .bar { display: flex; align-items: center; gap: .6rem; margin: .15rem 0; }
  .bar span:first-child { width: 12rem; overflow: hidden; text-overflow: ellipsis; }
  .bar div { height: .8rem; background: #2b59c3; border-radius: 3px; }
  mark { background: #ffe38a; border-radius: 3px; padding: 0 .15rem; }
  mark small { color: #7a5b00; margin-left: .2rem; }
  pre { background: #f3f5f8; padding: .7rem; border-radius: 6px; overflow-x: auto; font-size: 13px; max-height: 22rem; }
  .error { color: #b00020; font-weight: 600; }
  .hidden { display: none; }
  #explain { margin-left: .5rem; background: #8a3b12; }
  #method { width: auto; margin-left: .4rem; }
  .attr-text { line-height: 1.9; }
  .attr { border-radius: 3px; padding: .05rem .1rem; }
  .legend { color: #5b6475; font-size: 13px; }
  #index-meta { color: #5b6475; font-size: 13px; font-weight: normal; }
  #search-box { border: 1px solid #d5dae3; border-radius: 8px; padding: .2rem .9rem .9rem; margin: .6rem 0 1rem; }
  #search-row { display: flex; gap: .5rem; align-items: center; }
  #search-row input[type=number] { width: 4.5rem; font: inherit; padding: .4rem; border: 1px solid #b9c0cc; border-radius: 6px; }
  #search { margin-top: 0; }
  ol.hits { padding-left: 1.6rem; }
  ol.hits li { margin: .35rem 0; }
  .hit-score { color: #2b59c3; font-variant-numeric: tabular-nums; margin-right: .4rem; }
  .hit-id { color: #5b6475; font-size: 13px; margin-right: .4rem; }
</style>
</head>
<body>
<h1>bertkit serve</h1>
<p class="meta" id="meta"></p>
<div id="search-box" class="hidden">
  <label for="query">Search the index <span id="index-meta"></span></label>
  <div id="search-row">
    <input id="query" type="text" placeholder="Type a query">
    <input id="top-k" type="number" value="5" min="1" max="50" aria-label="results">
    <button id="search" type="button">Search</button>
  </div>
</div>
<label for="route">Route</label>
<select id="route"></select>
<div id="key-box" class="hidden">
  <label for="key">API key</label>
  <input id="key" type="password" autocomplete="off" placeholder="Bearer key (kept in this page only)">
</div>
<div id="text-box">
  <label for="text">Text</label>
  <textarea id="text" placeholder="Type a text"></textarea>
</div>
<div id="pair-box" class="hidden">
  <label for="pair">Second text (optional, pair tasks)</label>
  <input id="pair" type="text">
</div>
<div id="qa-box" class="hidden">
  <label for="question">Question</label>
  <input id="question" type="text">
  <label for="context">Context</label>
  <textarea id="context"></textarea>
</div>
<button id="run" type="button">Run</button><button id="explain" type="button" class="hidden">Explain</button><select id="method" class="hidden" aria-label="explanation method"><option>ig</option><option>gradxinput</option><option>occlusion</option><option>attention</option></select><span id="status"></span>
<div id="summary" aria-live="polite"></div>
<pre id="result" class="hidden"></pre>
<script id="model-info" type="application/json">__INFO__</script>
<script>
"use strict";
let INFO = JSON.parse(document.getElementById("model-info").textContent);
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
function showModel() {
  $("meta").textContent = `model ${INFO.name} · task ${INFO.task} · ${INFO.architecture} · ${INFO.runtime}`;
  const select = $("route"), chosen = select.value;
  select.replaceChildren(...INFO.routes.filter((r) => r !== "explain" && r !== "search").map((r) => new Option("/v1/" + r, r)));
  if (INFO.routes.includes(chosen)) select.value = chosen;
  for (const id of ["explain", "method"]) $(id).classList.toggle("hidden", !INFO.routes.includes("explain"));
  $("search-box").classList.toggle("hidden", !INFO.routes.includes("search"));
  if (INFO.index) $("index-meta").textContent = `(${INFO.index.name}: ${INFO.index.documents} documents, ${INFO.index.kind}, model ${INFO.index.model})`;
  layout();
}
// With API keys the page knows nothing of the model until /v1/info answers to the key.
async function loadInfo() {
  if (!$("key").value) return false;
  try {
    const resp = await fetch("/v1/info", {headers: {Authorization: "Bearer " + $("key").value}});
    if (!resp.ok) {
      if (!INFO.routes) $("meta").textContent = `API key refused (${resp.status}): type a valid key`;
      return false;
    }
    INFO = {...(await resp.json()), auth: true};
    showModel();
    return true;
  } catch (err) {
    if (!INFO.routes) $("meta").textContent = String(err);
    return false;
  }
}
if (INFO.auth) {
  $("key-box").classList.remove("hidden");
  $("meta").textContent = "API key needed: type it to see the model";
  for (const id of ["explain", "method"]) $(id).classList.remove("hidden");  // until /v1/info says
  $("key").addEventListener("change", loadInfo);
}
function layout() {
  const route = $("route").value, qa = route === "predict" && INFO.task === "qa";
  $("qa-box").classList.toggle("hidden", !qa);
  $("text-box").classList.toggle("hidden", qa);
  $("pair-box").classList.toggle("hidden", !(route === "predict" && (INFO.task === "classification" || INFO.task === "regression")));
  if (route === "fill-mask" && !$("text").value) $("text").value = "the [MASK] sat on the mat.";
}
$("route").addEventListener("change", layout);
if (INFO.routes) showModel();
function body(route) {
  if (route === "predict" && INFO.task === "qa") return {questions: [$("question").value], contexts: [$("context").value]};
  const b = {texts: [$("text").value]};
  if (route === "predict" && $("pair").value && !$("pair-box").classList.contains("hidden")) b.text_pairs = [$("pair").value];
  return b;
}
function summarise(route, data) {
  if (route === "embed") {
    const v = data.embeddings[0];
    return `<p>${v.length}-dimensional embedding: [${v.slice(0, 6).map((x) => x.toFixed(4)).join(", ")}, …]</p>`;
  }
  if (route === "fill-mask") {
    return data.results[0].map((cands, i) => `<p><b>[MASK] ${i + 1}</b></p>` + cands.map((c) =>
      `<div class="bar"><span>${esc(c.token)}</span><div style="width:${(c.score * 20).toFixed(1)}rem"></div><span>${c.score.toFixed(3)}</span></div>`).join("")).join("");
  }
  const p = data.predictions[0];
  if ("label" in p) {
    const rows = Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]);
    return `<p>label: <b id="label">${esc(p.label)}</b></p>` + rows.map(([k, v]) =>
      `<div class="bar"><span>${esc(k)}</span><div style="width:${(v * 20).toFixed(1)}rem"></div><span>${v.toFixed(3)}</span></div>`).join("");
  }
  if ("score" in p && !("answer" in p)) return `<p>score: <b>${p.score.toFixed(4)}</b></p>`;
  if ("entities" in p) {
    const text = body(route).texts[0];
    let out = "", at = 0;
    for (const e of p.entities) { out += esc(text.slice(at, e.start)) + `<mark>${esc(e.entity)}<small>${esc(e.label)}</small></mark>`; at = e.end; }
    return `<p>${p.entities.length} entit${p.entities.length === 1 ? "y" : "ies"}:</p><p>${out + esc(text.slice(at))}</p>`;
  }
  return `<p>answer: <b>${esc(p.answer || "(no answer)")}</b> (score ${Number(p.score).toFixed(3)})</p>`;
}
// /v1/explain: one input (QA: question and context) and the method.
function explainBody() {
  const b = INFO.task === "qa" ? {question: $("question").value, context: $("context").value} : {text: $("text").value};
  if ((INFO.task === "classification" || INFO.task === "regression") && $("pair").value) b.text_pair = $("pair").value;
  b.method = $("method").value;
  return b;
}
// The source text with each word in a span coloured by its score: red for, blue against.
function colourWords(source, words, scores) {
  const top = Math.max(1e-12, ...scores.map(Math.abs));
  let out = "", at = 0;
  words.forEach((w, i) => {
    const s = scores[i], alpha = (0.08 + 0.8 * Math.abs(s) / top).toFixed(3);
    const rgb = s >= 0 ? "220, 38, 38" : "37, 99, 235";
    out += esc(source.slice(at, w.start)) + `<span class="attr" style="background: rgba(${rgb}, ${alpha})" title="${s.toPrecision(3)}" data-score="${s}">${esc(source.slice(w.start, w.end))}</span>`;
    at = w.end;
  });
  return out + esc(source.slice(at));
}
function explained(data) {
  const p = data.prediction, sources = [data.text, data.text_pair || ""];
  let out = "";
  if ("label" in p) out += `<p>label: <b id="label">${esc(p.label)}</b> (${p.probabilities[p.label].toFixed(3)})</p>`;
  else if ("answer" in p) out += `<p>answer: <b>${esc(p.answer || "(no answer)")}</b></p>`;
  else if ("score" in p) out += `<p>score: <b>${Number(p.score).toFixed(4)}</b></p>`;
  if (!data.attributions.length) out += "<p>nothing to explain (no entity or [MASK] found)</p>";
  for (const a of data.attributions) {
    out += `<p><b>${esc(a.target)}</b> <span class="legend">(${esc(data.method)}: red for, blue against)</span></p>`;
    for (const seg of [0, 1]) {
      const idx = data.words.map((w, i) => i).filter((i) => data.words[i].segment === seg);
      if (idx.length) out += `<p class="attr-text">${colourWords(sources[seg], idx.map((i) => data.words[i]), idx.map((i) => a.words[i]))}</p>`;
    }
  }
  return out;
}
// /v1/search: the nearest documents, best first.
function searchBody() { return {query: $("query").value, top_k: Number($("top-k").value) || 5}; }
function hits(data) {
  if (!data.results.length) return "<p>no documents found</p>";
  return `<ol class="hits">` + data.results.map((h) => `<li data-id="${esc(h.id)}"><span class="hit-score">${h.score.toFixed(4)}</span><span class="hit-id">[${esc(h.id)}]</span>${esc(h.text)}</li>`).join("") + "</ol>";
}
async function run(route, payload, render) {
  if (!INFO.routes && !(await loadInfo())) {
    $("summary").innerHTML = `<p class="error">${esc($("meta").textContent)}</p>`;
    return;
  }
  route = route || $("route").value;
  const headers = {"Content-Type": "application/json"};
  if ($("key").value) headers.Authorization = "Bearer " + $("key").value;
  $("run").disabled = $("explain").disabled = $("search").disabled = true; $("status").textContent = "running…";
  const t0 = performance.now();
  try {
    const resp = await fetch("/v1/" + route, {method: "POST", headers, body: JSON.stringify(payload ? payload() : body(route))});
    const data = await resp.json();
    const ms = performance.now() - t0;
    $("status").textContent = `${resp.status} · ${ms.toFixed(0)} ms`;
    $("status").dataset.latencyMs = ms.toFixed(1);
    $("result").textContent = JSON.stringify(data, null, 2);
    $("result").classList.remove("hidden");
    $("summary").innerHTML = resp.ok ? (render ? render(data) : summarise(route, data))
      : `<p class="error">${esc(data.error ? data.error.code + ": " + data.error.message : resp.statusText)}</p>`;
  } catch (err) {
    $("status").textContent = "";
    $("summary").innerHTML = `<p class="error">${esc(err)}</p>`;
  } finally {
    $("run").disabled = $("explain").disabled = $("search").disabled = false;
  }
}
$("run").addEventListener("click", () => run());
$("explain").addEventListener("click", () => run("explain", explainBody, explained));
$("search").addEventListener("click", () => run("search", searchBody, hits));
$("query").addEventListener("keydown", (e) => { if (e.key === "Enter") run("search", searchBody, hits); });
$("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
</script>
</body>
</html>
"""


def render_page(info: dict | None, auth: bool) -> str:
    """The page for a model described by ``info`` (:meth:`ServedModel.info`); ``info`` None
    (with ``auth``): a page that holds nothing about the model and asks for a key first."""
    info = info or {}
    # "</" inside the JSON would end the <script> element early.
    data = json.dumps({**info, "auth": auth}).replace("</", "<\\/")
    title = html.escape(str(info.get("name", "model")))
    return _PAGE.replace("__NAME__", title).replace("__INFO__", data)
