// Tally's web page: submit a job, follow it live, see its images verified; list the caller's jobs; browse
// the token library. Everything goes through the public API with the caller's key (api.js), exactly as any
// other client would; the page holds no state the API does not.

import { Api, ApiError } from "./api.js";
import { renderChart } from "./chart.js";

const api = new Api();
const $ = (selector) => document.querySelector(selector);
const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
const POLICIES = ["resample", "library", "refine", "noise"]; // optimization.config.Policy, if the schema cannot be read

const state = {
  me: null, // GET /v1/me: {owner, scope, auth, name}
  models: [], // GET /v1/models
  schema: null, // GET /openapi.json (the policy enum, the deployment's limits)
  job: null, // the job on show: {id, record, points, events, controller, images: Map}
  jobsCursor: null,
};

// ------------------------------------------------------------------------------------------- helpers
/** An element with attributes and children; text is always set as text, never parsed as HTML. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const shortId = (id) => (id.length > 12 ? `${id.slice(0, 8)}…` : id);
const percent = (v) => (typeof v === "number" ? `${Math.round(v * 100)}%` : "–");
const time = (epoch) => (epoch ? new Date(epoch * 1000).toLocaleString() : "–");

function bytes(n) {
  if (n < 1024) return `${n} B`;
  return n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function showError(err) {
  if (err && err.name === "AbortError") return;
  const e = err instanceof ApiError ? err : new ApiError(0, "error", String((err && err.message) || err));
  $("#error-code").textContent = e.status ? `${e.status} ${e.code}` : e.code;
  $("#error-message").textContent = e.message;
  $("#error").hidden = false;
}

function clearError() {
  $("#error").hidden = true;
}

/** Runs an action; an error is shown in the banner instead of thrown. */
async function guarded(action) {
  try {
    return await action();
  } catch (err) {
    showError(err);
    return undefined;
  }
}

function download(url, filename) {
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
}

// ---------------------------------------------------------------------------------- key and identity
async function refreshIdentity() {
  const whoami = $("#whoami");
  try {
    state.me = await api.json("GET", "v1/me");
  } catch (err) {
    state.me = null;
    whoami.textContent = err.status === 401 ? "no valid key" : "";
    whoami.className = "whoami bad";
    showError(err);
    return false;
  }
  const { auth, scope, name } = state.me;
  whoami.textContent = auth === "off" ? "auth off: no key needed" : `${name || "key"} · ${scope}`;
  whoami.className = "whoami ok";
  document.body.dataset.scope = scope;
  $("#token-admin-note").hidden = scope === "admin";
  $("#token-file").disabled = $("#token-import-submit").disabled = scope !== "admin";
  return true;
}

async function useKey(event) {
  event.preventDefault();
  clearError();
  api.key = $("#api-key").value.trim();
  closeJob(); // it may be another key's: reopened below (route) with this key, or refused
  $("#job").hidden = true;
  $("#job-empty").hidden = false;
  if (await refreshIdentity()) {
    await loadModels();
    route();
  }
}

// ------------------------------------------------------------------------------------ models, schema
async function loadSchema() {
  try {
    const response = await fetch("openapi.json");
    state.schema = response.ok ? await response.json() : null;
  } catch {
    state.schema = null;
  }
  const component = (name) => state.schema?.components?.schemas?.[name] ?? {};
  const policies = component("Policy").enum ?? POLICIES;
  $("#policy").replaceChildren(el("option", { value: "", text: "default" }),
    ...policies.map((p) => el("option", { value: p, text: p })));
  const limit = (schema, field) => {
    const prop = schema.properties?.[field] ?? {};
    return (prop.anyOf ?? [prop]).map((b) => b.maximum).find((m) => m !== undefined);
  };
  const budget = component("BudgetIn");
  for (const [id, field] of [["#max-seconds", "max_seconds"], ["#max-candidates", "max_candidates"],
    ["#max-iterations", "max_iterations"]]) {
    const max = limit(budget, field);
    const fallback = budget.properties?.[field]?.default; // the deployment's default, as its API states it
    $(id).placeholder = [fallback != null && `${fallback}`, max !== undefined && `≤ ${max}`]
      .filter(Boolean).join(" · ");
    if (fallback != null) $(id).title = `empty: ${fallback} (the default)`;
  }
  const images = limit(component("JobCreate"), "num_images");
  if (images !== undefined) $("#num-images").title = `1 to ${images}`;
}

async function loadModels() {
  try {
    state.models = await api.json("GET", "v1/models");
  } catch (err) {
    showError(err);
    return;
  }
  const chosen = $("#model").value;
  $("#model").replaceChildren(...state.models.map((m) => el("option", {
    value: m.id, text: m.id,
  })));
  if (state.models.some((m) => m.id === chosen)) $("#model").value = chosen;
  $("#token-model").replaceChildren(el("option", { value: "", text: "any" }),
    ...state.models.map((m) => el("option", { value: m.id, text: m.id })));
  modelChanged();
}

function modelChanged() {
  const model = state.models.find((m) => m.id === $("#model").value);
  const object = $("#object").value;
  $("#object").replaceChildren(el("option", { value: "", text: "auto" }),
    ...(model?.classes ?? []).map((c) => el("option", { value: c, text: c })));
  if (model?.classes?.includes(object)) $("#object").value = object;
  $("#policy").options[0].textContent = model ? `default (${model.default_policy})` : "default";
  if (model) $("#count").title = `1 to ${model.max_count}`;
  const workers = model?.live_workers.length ?? 0;
  const wait = model?.estimated_wait_s ? ` · ~${Math.round(model.estimated_wait_s)} s wait` : "";
  $("#model-info").textContent = model
    ? `${workers} live worker${workers === 1 ? "" : "s"} · ${model.queue_depth} queued${wait} · counts 1 to ${model.max_count}` : "";
}

// ------------------------------------------------------------------------------------------ submit
/** The form as a JobCreate body: an empty field is left out (the API's default); numbers are sent as typed,
 *  so the API, not the page, says what is allowed. */
function jobBody() {
  const number = (id) => {
    const raw = $(id).value.trim();
    return raw === "" ? undefined : Number(raw);
  };
  const budget = {
    max_seconds: number("#max-seconds"), max_candidates: number("#max-candidates"),
    max_iterations: number("#max-iterations"),
  };
  const body = {
    prompt: $("#prompt").value, count: number("#count"), object: $("#object").value || undefined,
    model: $("#model").value || undefined, policy: $("#policy").value || undefined,
    num_images: number("#num-images"), seed: number("#seed"),
    budget: Object.values(budget).some((v) => v !== undefined) ? budget : undefined,
    queue_if_offline: $("#queue-if-offline").checked || undefined,
  };
  return JSON.parse(JSON.stringify(body)); // drops the undefined fields
}

async function submitJob(event) {
  event.preventDefault();
  clearError();
  const button = $("#submit");
  button.disabled = true;
  try {
    const accepted = await api.json("POST", "v1/jobs", { json: jobBody() });
    location.hash = `#/jobs/${accepted.id}`;
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------- one job, live
function closeJob() {
  const job = state.job;
  if (!job) return;
  job.controller.abort();
  for (const url of job.images.values()) URL.revokeObjectURL(url);
  state.job = null;
}

async function openJob(id) {
  if (state.job?.id === id) return;
  closeJob();
  const job = { id, record: null, points: [], events: [], controller: new AbortController(), images: new Map() };
  state.job = job;
  $("#event-log").replaceChildren();
  $("#results").replaceChildren();
  try {
    job.record = await api.json("GET", `v1/jobs/${encodeURIComponent(id)}`, { signal: job.controller.signal });
  } catch (err) {
    if (state.job === job) state.job = null;
    $("#job").hidden = true;
    $("#job-empty").hidden = false;
    showError(err);
    return;
  }
  $("#job").hidden = false;
  $("#job-empty").hidden = true;
  renderJob(job);
  follow(job); // from the stream's start: a finished job replays its history (the chart included)
}

/** Reads the job's event stream until its final event; a dropped stream is resumed after its last event. */
async function follow(job) {
  const signal = job.controller.signal;
  let lastId = null;
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      for await (const message of api.events(`v1/jobs/${encodeURIComponent(job.id)}/events`, lastId, signal)) {
        if (message.id) lastId = message.id;
        attempt = 0;
        const data = JSON.parse(message.data);
        if (message.event === "progress") onProgress(job, data);
        else if (message.event === "final") return onFinal(job, data);
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) {
        return showError(err);
      }
    }
    if (!signal.aborted) logEvent(job, "connection lost; resuming");
    await sleep(Math.min(500 * 2 ** attempt, 10000));
  }
}

function onProgress(job, event) {
  const record = job.record;
  if (!TERMINAL.has(record.status)) { // a finished job's replayed events rebuild its history, not its state
    record.status = event.status;
    if ("stage" in event) record.stage = event.stage;
    if (event.progress) record.progress = event.progress;
  }
  const p = event.progress;
  if (event.stage === "refining" && p && typeof p.loss === "number") {
    job.points = job.points.filter((q) => q.iteration !== p.iterations);
    job.points.push({ iteration: p.iterations, loss: p.loss, counts: p.detected_counts ?? [] });
  }
  const parts = [event.status, event.stage, p && `${p.candidates} candidates`, p && `${p.images_verified} verified`,
    p && event.stage === "refining" && `iteration ${p.iterations}, loss ${format(p.loss)}`,
    event.requeued && "back in the queue", event.cancel_requested && "cancel requested"];
  logEvent(job, parts.filter(Boolean).join(" · "), event.time);
  renderJob(job);
}

function onFinal(job, record) {
  if (record.status === "expired") {
    job.record.status = "expired";
    renderJob(job);
    return;
  }
  job.record = record;
  logEvent(job, `final: ${record.status}`);
  renderJob(job);
  renderResults(job);
}

function format(value) {
  return typeof value === "number" ? value.toFixed(3) : "–";
}

function logEvent(job, text, when) {
  if (state.job !== job) return;
  const stamp = typeof when === "number" ? new Date(when * 1000) : new Date();
  job.events.push(text);
  $("#event-log").append(el("li", {}, el("time", { text: stamp.toLocaleTimeString() }), ` ${text}`));
  $("#event-count").textContent = String(job.events.length);
}

function renderJob(job) {
  if (state.job !== job) return;
  const r = job.record;
  $("#job-id").textContent = r.id;
  $("#job-id").title = r.id;
  const status = $("#job-status");
  status.textContent = r.status;
  status.className = `pill ${r.status}`;
  status.dataset.status = r.status;
  $("#job-cancel").hidden = TERMINAL.has(r.status);
  const what = [r.prompt && `“${r.prompt}”`, `${r.count} × ${r.object ?? "object"}`, r.model, `policy ${r.policy}`,
    r.seed !== undefined && `seed ${r.seed}`];
  $("#job-prompt").textContent = what.filter(Boolean).join(" · ");
  const progress = r.progress ?? {};
  $("#job-stage").textContent = r.stage ?? (r.status === "queued" && r.queue_position != null
    ? `queued (#${r.queue_position + 1})` : "–");
  $("#job-candidates").textContent = String(progress.candidates ?? 0);
  $("#job-iterations").textContent = String(progress.iterations ?? 0);
  $("#job-verified").textContent = TERMINAL.has(r.status) && r.results?.length
    ? `${r.results.filter((x) => x.verified).length} / ${r.results.length}` : String(progress.images_verified ?? 0);
  $("#job-seconds").textContent = r.cost ? r.cost.seconds.toFixed(1) : "–";

  const notes = [];
  if (r.error) notes.push(`${r.error.code}: ${r.error.message}`);
  if (r.budget_exhausted) notes.push("The budget ran out before every image was verified; the closest misses are shown.");
  if (r.token?.library_hit) notes.push(`Used the library token ${r.token.key}.`);
  else if (r.token?.learning_scheduled) notes.push(`No library token yet: learning ${r.token.key} in the background.`);
  if (r.status === "expired") notes.push("This job's record has expired.");
  $("#job-note").textContent = notes.join(" ");
  $("#job-note").hidden = !notes.length;
  $("#job-note").classList.toggle("bad", Boolean(r.error));

  $("#chart").hidden = !job.points.length;
  if (job.points.length) renderChart($("#chart-svg"), job.points, r.count);
}

// ---------------------------------------------------------------------------------------- images
function imagePath(jobId, index, boxes) {
  return `v1/jobs/${encodeURIComponent(jobId)}/images/${index}${boxes ? "?boxes=true" : ""}`;
}

/** An object URL of image ``index`` (fetched with the key: an <img src> could not send it), cached. */
async function imageUrl(job, index, boxes) {
  const cacheKey = `${index}:${boxes}`;
  if (!job.images.has(cacheKey)) {
    const blob = await api.blob(imagePath(job.id, index, boxes), { signal: job.controller.signal });
    job.images.set(cacheKey, URL.createObjectURL(blob));
  }
  return job.images.get(cacheKey);
}

function renderResults(job) {
  const results = job.record.results ?? [];
  $("#results-head").hidden = !results.length;
  $("#results").replaceChildren(...results.map((r) => resultCard(job, r)));
  showImages(job);
}

function resultCard(job, result) {
  const object = job.record.object ?? "object";
  const badge = result.verified
    ? el("span", { class: "badge verified", "data-testid": "badge", text: "✓ verified" })
    : el("span", { class: "badge unverified", "data-testid": "badge",
      text: `not verified${result.reason ? ` · ${result.reason.replaceAll("_", " ")}` : ""}` });
  const img = el("img", { alt: `Image ${result.index}: ${result.detected_count} ${object} detected`, width: 192,
    height: 192, "data-index": result.index });
  const link = el("a", { class: "download", href: "#", text: "Download", "data-testid": "download",
    download: `${job.id}-${result.index}.png` });
  const reuse = el("button", { type: "button", class: "quiet", "data-testid": "use-seed", text: "Use this seed",
    title: "Fill the form with this job's request and this image's seed: submitted, this image comes first",
    onclick: () => useSeed(job.record, result.seed) });
  link.addEventListener("click", (event) => {
    if (!link.href.startsWith("blob:")) event.preventDefault(); // not loaded yet
  });
  return el("figure", { class: "result", "data-testid": "result", "data-verified": result.verified },
    el("div", { class: "frame" }, img),
    el("figcaption", {},
      badge,
      el("span", { class: "detected", "data-testid": "detected", text: `${result.detected_count} detected` }),
      doubtNote(result),
      el("span", { class: "seed", text: `seed ${result.seed}` }),
      reuse, link));
}

/** The form holds the job's request again, with ``seed``: the image of that seed is the first candidate. */
function useSeed(record, seed) {
  $("#prompt").value = record.prompt_as_typed ?? record.prompt ?? "";
  $("#count").value = record.count;
  if (state.models.some((m) => m.id === record.model)) $("#model").value = record.model;
  modelChanged();
  $("#object").value = record.object ?? "";
  $("#policy").value = record.policy;
  $("#seed").value = seed;
  $("#prompt").scrollIntoView({ block: "center" });
  $("#prompt").focus();
}

/** The doubt beside the confident count (ambiguous, unclear, other objects, the cross-check's count), if any. */
function doubtNote(result) {
  const parts = [["ambiguous", result.ambiguous], ["unclear", result.unclear], ["other", result.other_class]]
    .filter(([, n]) => n).map(([name, n]) => `${n} ${name}`);
  if (result.crosscheck_count != null && result.crosscheck_count !== result.detected_count) {
    parts.push(`cross-check ${result.crosscheck_count}`);
  }
  if (result.stated_count != null) parts.push(`drawn stating ${result.stated_count}`);
  return el("span", { class: "doubt", "data-testid": "doubt", text: parts.length ? `(${parts.join(", ")})` : "" });
}

async function showImages(job) {
  const boxes = $("#boxes").checked;
  for (const figure of $("#results").querySelectorAll("figure.result")) {
    const img = figure.querySelector("img");
    const index = Number(img.dataset.index);
    try {
      const url = await imageUrl(job, index, boxes);
      if (state.job !== job) return;
      img.src = url;
      img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 256), { once: true });
      const link = figure.querySelector("a.download");
      link.href = url;
      link.download = `${job.id}-${index}${boxes ? "-boxes" : ""}.png`; // as the API and `tally submit` name it
    } catch (err) {
      if (state.job === job) showError(err);
      return;
    }
  }
}

async function cancelJob() {
  const job = state.job;
  if (!job) return;
  await guarded(async () => {
    job.record = await api.json("DELETE", `v1/jobs/${encodeURIComponent(job.id)}`);
    renderJob(job);
  });
}

// ------------------------------------------------------------------------------------------- jobs
/** The job's first image into ``img``, fetched with the key (an <img src> could not send it). */
async function thumbnail(img, jobId) {
  try {
    img.src = URL.createObjectURL(await api.blob(imagePath(jobId, 0, false)));
  } catch {
    img.remove(); // expired or gone: the row says enough
  }
}

async function loadJobs(reset = true) {
  if (reset) state.jobsCursor = null;
  const page = await guarded(() => api.json("GET", "v1/jobs", {
    query: { limit: 20, cursor: state.jobsCursor, status: $("#jobs-status").value },
  }));
  if (!page) return;
  const rows = page.jobs.map((j) => {
    const verified = j.results.length ? `${j.results.filter((r) => r.verified).length} / ${j.num_images}` : "–";
    const thumb = el("img", { class: "thumb pixelated", alt: "", width: 40, height: 40, "data-testid": "job-thumb" });
    if (j.results.length) thumbnail(thumb, j.id);
    const row = el("tr", { class: "clickable", "data-job-id": j.id, "data-testid": "job-row" },
      el("td", {}, j.results.length ? thumb : ""),
      el("td", {}, el("a", { href: `#/jobs/${j.id}`, title: j.id }, el("code", { text: shortId(j.id) }))),
      el("td", { text: time(j.timings?.submitted) }),
      el("td", { text: j.model }),
      el("td", { class: "prompt", text: `${j.prompt_as_typed ?? j.prompt ?? ""} (${j.count} × ${j.object ?? "?"})` }),
      el("td", { text: j.policy }),
      el("td", {}, el("span", { class: `pill ${j.status}`, text: j.status })),
      el("td", { text: verified }));
    row.addEventListener("click", (event) => {
      if (!event.target.closest("a")) location.hash = `#/jobs/${j.id}`;
    });
    return row;
  });
  if (reset) $("#jobs-body").replaceChildren(...rows);
  else $("#jobs-body").append(...rows);
  state.jobsCursor = page.next_cursor;
  $("#jobs-more").hidden = !page.next_cursor;
  $("#jobs-empty").hidden = $("#jobs-body").children.length > 0;
}

// ------------------------------------------------------------------------------------- token library
function validationText(metadata) {
  const v = metadata?.validation?.admission ?? metadata?.validation;  // the gate's figures where recorded
  if (v?.base && v?.token) {
    const gain = typeof metadata.gain === "number" ? ` (gain ${metadata.gain >= 0 ? "+" : ""}${percent(metadata.gain)})` : "";
    const mae = typeof v.token.mae === "number" ? ` · MAE ${v.base.mae?.toFixed?.(2) ?? "–"} → ${v.token.mae.toFixed(2)}` : "";
    return `exact ${percent(v.base.exact)} → ${percent(v.token.exact)}${gain}${mae}`;
  }
  const simple = Object.entries(metadata ?? {}).filter(([, value]) => ["string", "number", "boolean"].includes(typeof value));
  return simple.length ? simple.map(([k, value]) => `${k}: ${value}`).join(" · ") : "–";
}

function modelName(fingerprint) {
  return state.models.find((m) => m.fingerprint === fingerprint)?.id ?? shortId(fingerprint);
}

async function loadTokens() {
  const count = $("#token-count").value.trim();
  const tokens = await guarded(() => api.json("GET", "v1/tokens", {
    query: { model: $("#token-model").value, object: $("#token-object").value.trim(), count },
  }));
  if (!tokens) return;
  const admin = state.me?.scope === "admin";
  $("#tokens-body").replaceChildren(...tokens.map((t) => el("tr", { "data-testid": "token-row", "data-key": t.key },
    el("td", {}, el("code", { text: t.key })),
    el("td", { text: modelName(t.model), title: t.model }),
    el("td", { text: t.object }),
    el("td", { text: String(t.count) }),
    el("td", { class: "figures", "data-testid": "token-validation", text: validationText(t.metadata) }),
    el("td", { text: bytes(t.size) }),
    el("td", { class: "actions" },
      el("button", { type: "button", class: "quiet", "data-testid": "token-download", onclick: () => downloadToken(t.key),
        text: "Download" }),
      admin ? el("button", { type: "button", class: "quiet danger", "data-testid": "token-delete",
        onclick: () => deleteToken(t.key), text: "Delete" }) : null))));
  $("#tokens-empty").hidden = tokens.length > 0;
}

async function downloadToken(key) {
  await guarded(async () => {
    const url = URL.createObjectURL(await api.blob(`v1/tokens/${encodeURIComponent(key)}/file`));
    download(url, `${key}.safetensors`);
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
}

async function deleteToken(key) {
  if (!window.confirm(`Delete the token ${key} from the library?`)) return;
  clearError();
  const done = await guarded(async () => {
    await api.json("DELETE", `v1/tokens/${encodeURIComponent(key)}`);
    return true;
  });
  if (done) {
    await loadTokens();
    $("#tokens-status").textContent = `Deleted ${key}.`;
  }
}

async function importToken(event) {
  event.preventDefault();
  clearError();
  const file = $("#token-file").files[0];
  if (!file) {
    showError(new ApiError(0, "no_file", "choose a token file (.safetensors) to import"));
    return;
  }
  const token = await guarded(async () => api.json("POST", "v1/tokens", {
    body: await file.arrayBuffer(), contentType: "application/octet-stream",
  }));
  if (token) {
    $("#token-file").value = "";
    await loadTokens();
    $("#tokens-status").textContent = `Imported ${token.key}.`;
  }
}

async function loadLearning() {
  const tasks = await guarded(() => api.json("GET", "v1/tokens/learning"));
  if (!tasks) return;
  $("#learning-body").replaceChildren(...tasks.map((t) => el("tr", { "data-testid": "learning-row", "data-key": t.key },
    el("td", {}, el("code", { text: t.key })),
    el("td", { text: t.object }),
    el("td", { text: String(t.count) }),
    el("td", {}, el("span", { class: `pill ${t.status}`, text: t.status.replaceAll("_", " ") })),
    el("td", { text: `${t.iterations} / ${t.max_iterations}` }),
    el("td", { text: t.validation?.base && t.validation?.token
      ? `${percent(t.validation.base.exact)} → ${percent(t.validation.token.exact)}` : "–" }),
    el("td", { text: time(t.updated) }))));
  $("#learning-empty").hidden = tasks.length > 0;
}

// ------------------------------------------------------------------------------------------ routing
/** ``#/`` generate, ``#/jobs`` the list, ``#/jobs/<id>`` one job (beside the form), ``#/tokens`` the library. */
function route() {
  const [, view = "", id] = location.hash.replace(/^#/, "").split("/");
  const shown = view === "tokens" ? "tokens" : view === "jobs" && !id ? "jobs" : "generate";
  for (const name of ["generate", "jobs", "tokens"]) {
    $(`#view-${name}`).hidden = name !== shown;
    const link = $(`#nav-${name}`);
    if (name === shown) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (shown === "jobs") loadJobs();
  if (shown === "tokens") {
    loadTokens();
    loadLearning();
  }
  if (view === "jobs" && id) openJob(decodeURIComponent(id));
}

async function start() {
  $("#api-key").value = api.key;
  $("#key-form").addEventListener("submit", useKey);
  $("#key-forget").addEventListener("click", () => {
    api.key = "";
    $("#api-key").value = "";
    refreshIdentity();
  });
  $("#error-close").addEventListener("click", clearError);
  $("#job-form").addEventListener("submit", submitJob);
  $("#model").addEventListener("change", modelChanged);
  $("#job-cancel").addEventListener("click", cancelJob);
  $("#boxes").addEventListener("change", () => state.job && showImages(state.job));
  $("#jobs-refresh").addEventListener("click", () => loadJobs());
  $("#jobs-status").addEventListener("change", () => loadJobs());
  $("#jobs-more").addEventListener("click", () => loadJobs(false));
  $("#token-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    clearError();
    loadTokens();
  });
  $("#token-import").addEventListener("submit", importToken);
  $("#learning-refresh").addEventListener("click", loadLearning);
  window.addEventListener("hashchange", route);

  await loadSchema();
  if (await refreshIdentity()) await loadModels();
  route();
  document.body.dataset.ready = "true"; // for tests: the page has read the API once
}

start();
