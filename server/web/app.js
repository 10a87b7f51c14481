// The dreamstream page: one dream at a time over the gateway's JSON and Server-Sent Events API.
// POST /api/dreams answers with the dream's events as they are made (queued, started, progress,
// frame, done or error); each frame is one octave's picture, shown as it arrives.
"use strict";

const $ = (id) => document.getElementById(id);
const MIME = { IMAGE_FORMAT_PNG: "image/png", IMAGE_FORMAT_JPEG: "image/jpeg", IMAGE_FORMAT_WEBP: "image/webp" };
const SUFFIX = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };
let models = [];
let running = null; // { abort: AbortController, requestId }

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function refusalMessage(response) {
  try {
    const body = await response.json();
    return `${body.message} (${body.reason}, HTTP ${response.status})`;
  } catch {
    return `the server answered HTTP ${response.status}`;
  }
}

async function loadModels() {
  const response = await fetch("api/models", { headers: authHeaders() });
  if (response.status === 401) {
    $("token-label").hidden = false;
    showError(`${await refusalMessage(response)}: enter the token, then pick the model again`);
    return;
  }
  if (!response.ok) {
    showError(await refusalMessage(response));
    return;
  }
  showError("");
  const listing = await response.json();
  models = listing.models;
  $("model").replaceChildren(...models.map((model) => new Option(model.name, model.name)));
  $("model").value = listing.default_model;
  fillLayers();
}

function fillLayers() {
  const model = models.find((candidate) => candidate.name === $("model").value);
  const layers = model ? model.layers : [];
  const defaults = model ? Object.keys(model.default_layers).join(", ") : "";
  $("layer").replaceChildren(
    new Option(`default (${defaults})`, ""),
    ...layers.map((layer) => new Option(`${layer.name} (${layer.channels} channels)`, layer.name)),
  );
}

function formOf() {
  const form = new FormData();
  form.append("image", $("picture").files[0]);
  for (const input of ["model", "octaves", "steps", "step-size", "octave-scale", "max-size", "seed"].map($)) {
    if (input.value !== "") form.append(input.name, input.value);
  }
  if ($("original-colors").checked) form.append("original_colors", "true");
  if ($("layer").value) form.append("layers", JSON.stringify({ [$("layer").value]: 1 }));
  return form;
}

// Splits a text/event-stream body into {event, data} objects as they arrive.
async function* serverEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

function secondsText(seconds) {
  return seconds >= 60 ? `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s` : `${seconds.toFixed(1)} s`;
}

function showProgress(progress) {
  const done = progress.done;
  $("progress").value = done;
  const left = done > 0 ? (progress.elapsed_seconds * (1 - done)) / done : NaN;
  const round = progress.round > 1 ? `, round ${progress.round}` : "";
  $("status").textContent =
    `octave ${progress.octave}/${progress.octaves}, step ${progress.step}/${progress.steps_per_octave}${round}` +
    ` · ${Math.round(done * 100)} %` +
    (Number.isFinite(left) ? ` · about ${secondsText(left)} left` : "");
}

function showFrame(frame) {
  const mime = MIME[frame.format] || "image/png";
  const url = `data:${mime};base64,${frame.image}`;
  const item = document.createElement("li");
  item.dataset.octave = frame.octave;
  const picture = new Image();
  picture.src = url;
  picture.alt = `octave ${frame.octave} of ${frame.octaves}`;
  const caption = document.createElement("span");
  caption.textContent = `octave ${frame.octave}/${frame.octaves}: ${frame.width}x${frame.height}`;
  item.append(picture, caption);
  $("frames").append(item);
  const download = $("download");
  download.href = url;
  download.download = `dream.${SUFFIX[mime]}`;
  download.hidden = false;
}

function handle({ event, data }) {
  if (event === "queued") {
    $("queue").hidden = false;
    $("queue").textContent = `Waiting for a slot: place ${data.place} of ${data.waiting} in line`;
  } else if (event === "started") {
    running.requestId = data.request_id;
    $("queue").hidden = true;
    const sizes = data.octave_sizes.map((size) => `${size.width}x${size.height}`).join(", ");
    $("status").textContent = `started on ${data.model}: octaves ${sizes}`;
  } else if (event === "progress") {
    showProgress(data);
  } else if (event === "frame") {
    showFrame(data);
  } else if (event === "done") {
    $("progress").value = 1;
    $("status").textContent = `done (${$("frames").children.length} octaves)`;
  } else if (event === "error") {
    showError(`${data.message} (${data.reason})`);
    $("status").textContent = data.code === "CANCELLED" ? "cancelled" : "stopped";
  }
}

async function dream(submitted) {
  submitted.preventDefault();
  if (running) return;
  showError("");
  $("frames").replaceChildren();
  $("download").hidden = true;
  $("progress").value = 0;
  $("status").textContent = "sending the picture...";
  running = { abort: new AbortController(), requestId: null };
  $("dream").disabled = true;
  $("cancel").disabled = false;
  try {
    const response = await fetch("api/dreams", {
      method: "POST",
      body: formOf(),
      headers: authHeaders(),
      signal: running.abort.signal,
    });
    if (!response.ok) {
      showError(await refusalMessage(response));
      $("status").textContent = "refused";
      return;
    }
    running.requestId = response.headers.get("x-request-id");
    for await (const event of serverEvents(response.body)) handle(event);
  } catch (error) {
    if (error.name !== "AbortError") showError(`the connection failed: ${error.message}`);
  } finally {
    running = null;
    $("dream").disabled = false;
    $("cancel").disabled = true;
    $("queue").hidden = true;
  }
}

async function cancel() {
  if (!running) return;
  const { abort, requestId } = running;
  $("status").textContent = "cancelling...";
  // The explicit cancel ends the dream on the server and its stream with an `error` event;
  // closing the stream alone would cancel it too.
  if (requestId) {
    const response = await fetch(`api/dreams/${encodeURIComponent(requestId)}`, {
      method: "DELETE",
      headers: authHeaders(),
    });
    if (response.ok) return;
  }
  abort.abort();
  $("status").textContent = "cancelled";
}

$("controls").addEventListener("submit", dream);
$("cancel").addEventListener("click", cancel);
$("model").addEventListener("change", fillLayers);
$("token").addEventListener("change", loadModels);
loadModels();
