// The tlvision page: pick or drop images, POST them to /v1/predict, draw the top classes as
// bars and fetch each image's class-map overlay from /v1/maps. No framework, no CDN.
"use strict";

const TOKEN_KEY = "tlvision-token";
const state = { maxUploadBytes: 20 * 1024 * 1024 };

function element(id) {
  return document.getElementById(id);
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function setStatus(text, isError = false) {
  const status = element("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.detail || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// What a person can do about a 401: words for them, not the API's header syntax.
function tokenAdvice(tokenWasSent) {
  return tokenWasSent
    ? "That access token was not accepted. Check it with the person who started the server, " +
        "paste it in the box above and press \u201cUse token\u201d."
    : "This server needs an access token. Ask the person who started it for the token (the " +
        "one they gave with --token or TLVISION_TOKEN), paste it in the box above and press " +
        "\u201cUse token\u201d.";
}

// The accuracy of the weights served: the best val epoch's (they are the ones saved; chosen
// on val, so labelled), and the test split's where the run has one.
function accuracyText(metrics) {
  const parts = [];
  if (metrics.best_val_acc !== undefined && metrics.best_val_acc !== null) {
    const of = metrics.epochs ? ` of ${metrics.epochs}` : "";
    const epoch = metrics.best_epoch === undefined ? "" : `, epoch ${metrics.best_epoch}${of}`;
    parts.push(`val accuracy ${percent(metrics.best_val_acc)} (the weights served: best on val${epoch})`);
  }
  if (metrics.test_acc !== undefined && metrics.test_acc !== null) {
    parts.push(`test accuracy ${percent(metrics.test_acc)} on ${metrics.test_images} images`);
  }
  if (metrics.test_map !== undefined && metrics.test_map !== null) {
    parts.push(`test mAP ${metrics.test_map.toFixed(3)} on ${metrics.test_images} images`);
  }
  return parts.length ? `, ${parts.join(", ")}` : "";
}

// Calls the API; a 401 shows the token box and throws, so callers only see real answers.
async function callApi(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders() });
  if (response.status === 401) {
    element("token-box").hidden = false;
    element("token").focus();
    throw new Error(tokenAdvice(Boolean(sessionStorage.getItem(TOKEN_KEY))));
  }
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    const suffix = retry ? ` (retry in ${retry} s)` : "";
    throw new Error(`${await errorText(response)}${suffix}`);
  }
  return response;
}

// X-Class is percent-encoded UTF-8 (or the raw bytes of a name that is not UTF-8).
function headerText(value) {
  try {
    return value ? decodeURIComponent(value) : "";
  } catch {
    return unescape(value);
  }
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}

async function loadModel() {
  try {
    const info = await (await callApi("/v1/model")).json();
    state.maxUploadBytes = info.limits.max_upload_mb * 1024 * 1024;
    const metrics = info.metrics;
    element("model").textContent =
      `${info.classes.length} classes (${info.classes.join(", ")}): ${info.backbone}, ` +
      `${info.strategy}${accuracyText(metrics)}, ${info.runtime} runtime`;
    element("token-box").hidden = true;
  } catch (error) {
    const asking = !element("token-box").hidden; // the advice is the whole message
    element("model").textContent = asking ? error.message : `model unavailable: ${error.message}`;
  }
}

function newResultCard(file) {
  const card = element("result-template").content.firstElementChild.cloneNode(true);
  const photo = card.querySelector(".photo");
  photo.src = URL.createObjectURL(file);
  photo.alt = file.name;
  card.querySelector(".file-name").textContent = file.name;
  card.querySelector(".predicted-class").textContent = "…";
  element("results").prepend(card);
  return card;
}

// A multi-label model's answer: its labels (the classes over their thresholds) and a bar for
// every class's own probability; a label's bar is marked.
function multiLabelEntries(card, prediction) {
  const labels = prediction.labels;
  card.querySelector(".predicted-class").textContent =
    labels.length ? labels.join(", ") : "no label";
  card.querySelector(".predicted-probability").textContent = labels
    .map((name) => `${name} ${percent(prediction.probabilities[name])}`).join(", ");
  return Object.entries(prediction.probabilities)
    .map(([name, probability]) => ({ class: name, probability, label: labels.includes(name) }))
    .sort((a, b) => b.probability - a.probability);
}

function showPrediction(card, prediction) {
  if (prediction.unknown) {
    // Unlike every training class: no class is given, the bars show the closest ones.
    card.querySelector(".predicted-class").textContent = "unknown";
    card.querySelector(".predicted-probability").textContent = `closest: ${prediction.top[0].class}`;
  } else {
    card.querySelector(".predicted-class").textContent = prediction.class;
    card.querySelector(".predicted-probability").textContent = percent(prediction.probability);
  }
  const entries = prediction.labels ? multiLabelEntries(card, prediction) : prediction.top;
  const bars = card.querySelector(".bars");
  bars.replaceChildren();
  for (const entry of entries) {
    const item = document.createElement("li");
    if (entry.label) item.className = "is-label";
    const label = document.createElement("div");
    label.className = "bar-label";
    const name = document.createElement("span");
    name.textContent = entry.class;
    const value = document.createElement("span");
    value.textContent = percent(entry.probability);
    label.append(name, value);
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = percent(entry.probability);
    track.append(fill);
    item.append(label, track);
    bars.append(item);
  }
}

function showError(card, message) {
  card.querySelector(".predicted-class").textContent = "not classified";
  const error = card.querySelector(".error");
  error.textContent = message;
  error.hidden = false;
}

async function showMap(card, file) {
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await callApi("/v1/maps", { method: "POST", body: form });
    const figure = card.querySelector(".map-figure");
    figure.querySelector(".map").src = URL.createObjectURL(await response.blob());
    figure.querySelector(".map-caption").textContent =
      `where the network sees ${headerText(response.headers.get("X-Class")) || "the top class"}`;
    figure.hidden = false;
  } catch (error) {
    card.querySelector(".map-caption").textContent = `no class map: ${error.message}`;
  }
}

// One request per image: a bad file gets its own error and the others still get answers.
async function classify(file, card, topK) {
  if (file.size > state.maxUploadBytes) {
    showError(card, `${file.name}: larger than the server's upload limit`);
    return false;
  }
  const form = new FormData();
  form.append("files", file);
  form.append("top_k", String(topK));
  try {
    const body = await (await callApi("/v1/predict", { method: "POST", body: form })).json();
    showPrediction(card, body.predictions[0]);
    return true;
  } catch (error) {
    showError(card, error.message);
    return false;
  }
}

async function handleFiles(fileList) {
  const files = Array.from(fileList);
  if (files.length === 0) {
    return;
  }
  const topK = Number(element("top-k").value);
  const withMaps = element("show-maps").checked;
  const cards = files.map(newResultCard);
  setStatus(`classifying ${files.length} image${files.length === 1 ? "" : "s"}…`);
  const outcomes = await Promise.all(files.map((file, i) => classify(file, cards[i], topK)));
  const failed = outcomes.filter((ok) => !ok).length;
  setStatus(
    failed ? `${failed} of ${files.length} images could not be classified` : "done",
    failed > 0,
  );
  if (withMaps) {
    for (let i = 0; i < files.length; i += 1) {
      if (outcomes[i]) {
        await showMap(cards[i], files[i]); // one at a time: each map is a full network pass
      }
    }
  }
}

function setUp() {
  const input = element("file-input");
  input.addEventListener("change", () => {
    handleFiles(input.files);
    input.value = "";
  });
  const zone = element("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    handleFiles(event.dataTransfer.files);
  });
  element("token-save").addEventListener("click", () => {
    sessionStorage.setItem(TOKEN_KEY, element("token").value.trim());
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
