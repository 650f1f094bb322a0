"use strict";
// Encore's page. Every panel calls the service's own HTTP API (README, "The HTTP API") with the key its user
// gives, and shows what comes back; an error is shown in words, from the JSON error's message and field.

const KEY_STORE = "encore.apiKey";
const USERS_STORE = "encore.recentUsers";
const RECENT_USERS = 10;
const PITCH_CLASSES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
const TONICS = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"];
const SVG = "http://www.w3.org/2000/svg";
const objectUrls = {};

const $ = (id) => document.getElementById(id);

/** An answer of the API that is not a success, as its JSON error describes it. */
class ApiError extends Error {
  constructor(message, { code = "http_error", field = null, status = 0, requestId = null } = {}) {
    super(message);
    Object.assign(this, { code, field, status, requestId });
  }
}

/** Call the API with the tab's key; resolves to the JSON answer, rejects with an ApiError. */
async function api(path, { method = "GET", json, form } = {}) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers["X-API-Key"] = key;
  let body = form;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (error) {
    throw new ApiError(`the service could not be reached (${error.message})`, { code: "network" });
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // Not JSON (a proxy's error page, say): described by its status below.
  }
  if (response.ok && data !== null) return data;
  const error = data && data.error;
  if (!error) {
    throw new ApiError(`the service answered ${response.status} ${response.statusText} with no explanation`,
      { status: response.status });
  }
  throw new ApiError(error.message, {
    code: error.code, field: error.field, status: response.status, requestId: error.request_id,
  });
}

const ADVICE = {
  401: "Enter a valid API key at the top of the page.",
  403: "This key is not allowed to do this; ask for a key with the right scope.",
  429: "This key has made too many requests; wait a moment and try again.",
  503: "The service is busy or the model is not available yet; try again shortly.",
};

/** An error in words: what the service said, the field it names, and what to do. */
function describe(error) {
  if (!(error instanceof ApiError)) return `This page failed: ${error.message}.`;
  const parts = [`The service could not answer: ${error.message}.`];
  if (error.field) parts.push(`The field at fault: “${error.field}”.`);
  if (ADVICE[error.status]) parts.push(ADVICE[error.status]);
  if (error.status) parts.push(`(HTTP ${error.status}, ${error.code}${error.requestId ? `, request ${error.requestId}` : ""})`);
  return parts.join(" ");
}

function showError(regionId, error) {
  $(regionId).textContent = typeof error === "string" ? error : describe(error);
}

/** A new element with properties and children (strings become text, never markup). */
function el(tag, properties = {}, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function fill(listId, items) {
  $(listId).replaceChildren(...items);
}

const number = (value, digits = 3) => Number(value).toFixed(digits);
const modelName = (model) => `${model.kind} ${model.version}`;

// ---- the key -------------------------------------------------------------------------------------

function showKeyStatus(extra = "") {
  const words = sessionStorage.getItem(KEY_STORE) ? "A key is in use in this tab." : "No key yet.";
  $("key-status").textContent = extra ? `${words} ${extra}` : words;
}

async function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  $("api-key").value = "";
  showKeyStatus();
  await loadModelChoices();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORE);
  showKeyStatus();
}

// ---- the model choices ---------------------------------------------------------------------------

/** Fill each model select with its family's aliases, kinds and versions from GET /v1/models. */
async function loadModelChoices() {
  let catalogue;
  try {
    catalogue = await api("/v1/models");
  } catch (error) {
    showKeyStatus(`The lists of models could not be read, so each panel uses the service's own: ${describe(error)}`);
    return;
  }
  for (const select of document.querySelectorAll(".model-select")) {
    const family = select.dataset.family;
    const aliases = catalogue.aliases.filter((alias) => alias.family === family);
    const versions = catalogue.versions.filter((version) => version.family === family);
    const kinds = [...new Set(versions.map((version) => version.kind))];
    select.replaceChildren(
      select.options[0],
      el("optgroup", { label: "Aliases" },
        ...aliases.map((a) => el("option", { value: a.alias, textContent: `${a.alias} (${a.kind} ${a.version})` }))),
      el("optgroup", { label: "Kinds, newest version" },
        ...kinds.map((kind) => el("option", { value: kind, textContent: `${kind} (newest)` }))),
      el("optgroup", { label: "Versions" },
        ...versions.map((v) => el("option", { value: v.version, textContent: v.version }))),
    );
  }
  showKeyStatus(`Models listed: ${catalogue.versions.length} of ${catalogue.versions_total} versions.`);
  describeComposer(catalogue);
}

/** What the service's composer learnt from, and the terms its music inherits from that data. */
function describeComposer(catalogue) {
  const alias = catalogue.aliases.find((a) => a.alias === "composer-production");
  const version = alias && catalogue.versions.find((v) => v.version === alias.version);
  if (!version) {
    $("composer-about").textContent = "No composer is published as composer-production yet.";
    return;
  }
  const learnt = version.trained_on ? `learnt from ${version.trained_on}` : "records nothing of what it learnt from";
  const terms = version.terms ? ` Terms of its data: ${version.terms}.` : "";
  $("composer-about").textContent = `The composer (${version.version}) ${learnt}.${terms}`;
}

// ---- Listen --------------------------------------------------------------------------------------

function rememberUser(user) {
  const users = [user, ...JSON.parse(sessionStorage.getItem(USERS_STORE) || "[]").filter((u) => u !== user)];
  sessionStorage.setItem(USERS_STORE, JSON.stringify(users.slice(0, RECENT_USERS)));
  showRecentUsers();
}

function showRecentUsers() {
  const users = JSON.parse(sessionStorage.getItem(USERS_STORE) || "[]");
  fill("recent-users", users.map((user) => el("option", { value: user })));
}

function itemLine(item, detail) {
  const id = item.item_id === item.name ? null : el("span", { className: "id", textContent: ` ${item.item_id}` });
  return el("li", {}, el("strong", { textContent: item.name }), id, ` — ${detail}`,
    item.because ? el("span", { className: "because", textContent: `; because you listened to ${item.because.join(", ")}` }) : null);
}

/** The user's top items, or null for a user the model never saw. */
async function userTop(user, n, model) {
  try {
    return await api("/v1/users/top", { method: "POST", json: { user_id: user, n, model } });
  } catch (error) {
    if (error.code === "unknown_user") return null;
    throw error;
  }
}

/** Recommendations with reasons if asked; a model that cannot explain answers without them, and a note says so. */
async function recommendations(user, n, model, explain) {
  const request = { user_id: user, n, model, explain };
  try {
    return { answer: await api("/v1/recommend", { method: "POST", json: request }), note: "" };
  } catch (error) {
    if (!(explain && error.code === "not_supported" && error.field === "explain")) throw error;
    const note = `This model cannot say why it recommends an item (the service says: ${error.message}). ` +
      "Its recommendations follow without reasons; choose a model that can explain, such as ALS, to see them.";
    return { answer: await api("/v1/recommend", { method: "POST", json: { ...request, explain: false } }), note };
  }
}

async function listen(event) {
  event.preventDefault();
  showError("listen-error", "");
  const user = $("user-id").value.trim();
  const n = Number($("listen-n").value);
  const model = $("listen-model").value || undefined;
  rememberUser(user);
  try {
    const top = await userTop(user, n, model);
    const { answer, note } = await recommendations(user, n, model, $("listen-explain").checked);
    fill("user-top", top ? top.items.map((item) => itemLine(item, `${number(item.plays, 0)} plays`)) :
      [el("li", { textContent: "This model has no listening history for this user." })]);
    const fallback = answer.fallback === "popular" ? "The model does not know this user: these are the most popular artists. " : "";
    $("listen-note").textContent = `${fallback}${note} From ${modelName(answer.model)}.`;
    fill("recommendations", answer.items.map((item) => itemLine(item, `score ${number(item.score)}`)));
    $("listen-results").hidden = false;
  } catch (error) {
    showError("listen-error", error);
  }
}

async function recommendFromHistory(event) {
  event.preventDefault();
  showError("history-error", "");
  const items = $("history-items").value.split(",").map((item) => item.trim()).filter(Boolean);
  const model = $("listen-model").value || undefined;
  try {
    const answer = await api("/v1/recommend/history", { method: "POST", json: { items, n: Number($("listen-n").value), model } });
    fill("history-results", answer.items.map((item) => itemLine(item, `score ${number(item.score)}`)));
  } catch (error) {
    fill("history-results", []);
    showError("history-error", error);
  }
}

// ---- Hear ----------------------------------------------------------------------------------------

/** A bar chart as a list: each row says its label and value in words; the bar itself is decoration. */
function bars(listId, rows, digits) {
  const top = Math.max(...rows.map(([, value]) => value), 1e-9);
  fill(listId, rows.map(([label, value]) => {
    const bar = el("span", { className: "bar" });
    bar.style.width = `${(100 * value) / top}%`;
    bar.setAttribute("aria-hidden", "true");
    return el("li", {}, el("span", { className: "label", textContent: label }), el("span", {}, bar),
      el("span", { className: "value", textContent: number(value, digits) }));
  }));
}

function uploadForm() {
  const form = new FormData();
  form.append("file", $("audio-file").files[0]);
  return form;
}

async function hear(event) {
  event.preventDefault();
  showError("hear-error", "");
  const model = $("hear-model").value;
  const query = model ? `?model=${encodeURIComponent(model)}` : "";
  const [genres, similar] = await Promise.allSettled([
    api(`/v1/classify${query}`, { method: "POST", form: uploadForm() }),
    api("/v1/similar?n=5", { method: "POST", form: uploadForm() }),
  ]);
  const failures = [genres, similar].filter((outcome) => outcome.status === "rejected");
  showError("hear-error", failures.map((outcome) => describe(outcome.reason)).join(" "));
  if (genres.status === "fulfilled") {
    const answer = genres.value;
    const key = answer.key ? `key ${answer.key} (confidence ${number(answer.key_confidence, 2)})` : "no clear key";
    $("hear-summary").textContent = `${number(answer.duration, 1)} s of audio, tempo ${number(answer.tempo, 0)} BPM, ` +
      `${key}. Most likely genre: ${answer.top_genre}, by ${modelName(answer.model)}.`;
    bars("genre-bars", Object.entries(answer.genres).sort((a, b) => b[1] - a[1]), 3);
    bars("chroma-bars", answer.pitch_classes.map((value, i) => [PITCH_CLASSES[i], value]), 2);
  } else {
    $("hear-summary").textContent = "";
    fill("genre-bars", []);
    fill("chroma-bars", []);
  }
  fill("similar-tracks", similar.status === "fulfilled" ? similar.value.tracks.map((track) =>
    el("li", {}, el("strong", { textContent: track.name }), ` — distance ${number(track.distance, 2)}, ${number(track.duration, 1)} s`)) : []);
  $("hear-results").hidden = genres.status === "rejected" && similar.status === "rejected";
}

// ---- Compose -------------------------------------------------------------------------------------

async function base64Of(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function blobUrl(name, base64, type) {
  if (objectUrls[name]) URL.revokeObjectURL(objectUrls[name]);
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  objectUrls[name] = URL.createObjectURL(new Blob([bytes], { type }));
  return objectUrls[name];
}

/** The notes as an SVG piano roll: time across, pitch up; the primer's notes in grey. */
function pianoRoll(notes, primerBeats) {
  const low = Math.min(...notes.map((note) => note.pitch));
  const high = Math.max(...notes.map((note) => note.pitch));
  const beats = Math.max(...notes.map((note) => note.end));
  const width = beats * 16, rowHeight = 6, height = (high - low + 1) * rowHeight;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.height = `${Math.max(96, (high - low + 1) * 5)}px`;  // five pixels a semitone, whatever the width
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label",
    `Piano roll: ${notes.length} notes over ${number(beats, 1)} beats, MIDI pitches ${low} to ${high}`);
  for (const note of notes) {
    const rect = document.createElementNS(SVG, "rect");
    const attributes = { x: note.start * 16, y: (high - note.pitch) * rowHeight, width: Math.max((note.end - note.start) * 16 - 1, 1), height: rowHeight - 1 };
    for (const [name, value] of Object.entries(attributes)) rect.setAttribute(name, value);
    rect.setAttribute("class", note.start < primerBeats ? "primer" : "note");
    svg.append(rect);
  }
  return svg;
}

async function compose(event) {
  event.preventDefault();
  showError("compose-error", "");
  const primer = $("primer-file").files[0];
  const request = {
    style: $("compose-style").value.trim() || undefined,
    key: $("compose-key").value,
    tempo: Number($("compose-tempo").value),
    bars: Number($("compose-bars").value),
    temperature: $("compose-temperature").value.trim() ? Number($("compose-temperature").value) : undefined,
    seed: Number($("compose-seed").value),
    primer_midi: primer ? await base64Of(primer) : undefined,
    audio: true,
  };
  try {
    const answer = await api("/v1/compose", { method: "POST", json: request });
    const settings = answer.settings;
    $("compose-summary").textContent = `${settings.bars} bars in ${settings.key} at ${settings.tempo} quarter notes a minute` +
      `${settings.primer_steps ? ", after the primer (grey)" : ""}, temperature ${settings.temperature}` +
      `${settings.top_p ? `, top-p ${settings.top_p}` : ""}, seed ${settings.seed}, by ${modelName(answer.model)} ` +
      `in ${number(answer.seconds, 1)} s; sound by ${answer.renderer}.`;
    $("piano-roll").replaceChildren(pianoRoll(answer.notes, settings.primer_steps * settings.step_beats));
    $("compose-audio").src = blobUrl("wav", answer.wav, "audio/wav");
    $("midi-download").href = blobUrl("midi", answer.midi, "audio/midi");
    $("midi-download").hidden = false;
    $("compose-results").hidden = false;
  } catch (error) {
    showError("compose-error", error);
  }
}

// ---- Operate -------------------------------------------------------------------------------------

const HEADLINE = /^(test\.(ndcg@10|recall@20)|test\.accuracy|test\.macro_f1|valid_nll_per_step|tracks)$/;

function metricList(metrics) {
  const entries = Object.entries(metrics);
  const headline = entries.filter(([name]) => HEADLINE.test(name));
  const line = ([name, value]) => el("li", { textContent: `${name}: ${Number.isInteger(value) ? value : number(value, 4)}` });
  return el("div", {}, el("ul", {}, ...(headline.length ? headline : entries.slice(0, 4)).map(line)),
    entries.length > headline.length ? el("details", {}, el("summary", { textContent: `all ${entries.length} metrics` }),
      el("ul", {}, ...entries.map(line))) : null);
}

async function showModels() {
  showError("operate-error", "");
  try {
    const catalogue = await api("/v1/models");
    const versions = Object.fromEntries(catalogue.versions.map((version) => [version.version, version]));
    $("alias-table").tBodies[0].replaceChildren(...catalogue.aliases.map((alias) => el("tr", {},
      el("th", { scope: "row", textContent: alias.alias }), el("td", { textContent: alias.version }),
      el("td", { textContent: alias.kind }), el("td", {}, metricList(versions[alias.version]?.metrics ?? {})))));
    $("versions-summary").textContent = `${catalogue.versions_total} versions in the store; ` +
      `newest: ${catalogue.versions.slice(0, 5).map((version) => version.version).join(", ")}.`;
    $("operate-results").hidden = false;
  } catch (error) {
    showError("operate-error", error);
  }
}

// ---- start ---------------------------------------------------------------------------------------

function start() {
  fill("compose-key", TONICS.flatMap((tonic) => ["major", "minor"].map((mode) =>
    el("option", { value: `${tonic} ${mode}`, textContent: `${tonic} ${mode}` }))));
  $("key-form").addEventListener("submit", useKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("listen-form").addEventListener("submit", listen);
  $("history-form").addEventListener("submit", recommendFromHistory);
  $("hear-form").addEventListener("submit", hear);
  $("compose-form").addEventListener("submit", compose);
  $("models-refresh").addEventListener("click", showModels);
  showRecentUsers();
  showKeyStatus();
  if (sessionStorage.getItem(KEY_STORE)) loadModelChoices();
}

start();
