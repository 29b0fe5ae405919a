// The participant page: consent -> one image per screen -> done. The server holds the order and every
// answer; the browser keeps only the participant id (localStorage), so a reload resumes at the next image.
"use strict";

const $ = (id) => document.getElementById(id);
const KEYS = { "1": "artist", a: "artist", "2": "ai", i: "ai", "3": "unsure", u: "unsure" };
let storageKey = null;
let participantId = null;
let current = null; // {stimulus_id, position}
let shownAt = null; // performance.now() when the current image finished loading
let confidence = null;
let busy = false;

function show(section) {
  for (const id of ["loading", "consent", "trial", "done"]) $(id).hidden = id !== section;
}

function fail(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  return { status: response.status, data };
}

function render(state) {
  $("progress").max = state.n_total;
  $("progress").value = state.n_answered;
  if (state.done) {
    show("done");
    current = null;
    return;
  }
  current = state.next;
  $("progress-text").textContent = `Image ${state.n_answered + 1} of ${state.n_total}`;
  setConfidence(null);
  shownAt = null;
  const img = $("stimulus");
  delete img.dataset.ready;
  img.dataset.stimulusId = current.stimulus_id;
  img.src = `/api/stimuli/${encodeURIComponent(current.stimulus_id)}`;
  show("trial");
}

function setConfidence(value) {
  confidence = value;
  for (const button of document.querySelectorAll(".conf")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.confidence) === value));
  }
}

async function submit(answer) {
  if (busy || !current || shownAt === null) return;
  busy = true;
  try {
    const { status, data } = await api("POST", "/api/answers", {
      participant_id: participantId,
      stimulus_id: current.stimulus_id,
      answer,
      confidence,
      response_ms: Math.round(performance.now() - shownAt),
    });
    if (status === 200 || status === 201) {
      $("error").hidden = true;
      render(data.state);
    } else {
      fail(`Your answer could not be saved (${status}); please reload the page.`);
    }
  } catch (error) {
    fail("The server cannot be reached; your earlier answers are safe. Please try again.");
  } finally {
    busy = false;
  }
}

async function start(event) {
  event.preventDefault();
  const familiarity = $("familiarity").value || null;
  const { status, data } = await api("POST", "/api/participants", { consent: true, familiarity });
  if (status !== 201) return fail(`Could not start (${status}).`);
  participantId = data.participant_id;
  localStorage.setItem(storageKey, participantId);
  render(data);
}

async function main() {
  const { data: info } = await api("GET", "/api/study");
  document.title = info.title;
  $("title").textContent = info.title;
  $("n-images").textContent = info.n_stimuli;
  storageKey = info.storage_key;
  participantId = localStorage.getItem(storageKey);
  if (participantId) {
    const { status, data } = await api("GET", `/api/participants/${encodeURIComponent(participantId)}`);
    if (status === 200) return render(data);
    localStorage.removeItem(storageKey); // unknown here (e.g. a new study database): start afresh
    participantId = null;
  }
  show("consent");
}

// Answers count only once the image is on screen; the response time starts there.
$("stimulus").addEventListener("load", () => {
  shownAt = performance.now();
  $("stimulus").dataset.ready = "1";
});
$("consent-box").addEventListener("change", (e) => { $("start").disabled = !e.target.checked; });
$("consent-form").addEventListener("submit", start);
for (const button of document.querySelectorAll(".answer")) {
  button.addEventListener("click", () => {
    button.blur(); // a later Enter must not answer the next image with this button
    submit(button.dataset.answer);
  });
}
for (const button of document.querySelectorAll(".conf")) {
  button.addEventListener("click", () => {
    const value = Number(button.dataset.confidence);
    setConfidence(confidence === value ? null : value);
  });
}
document.addEventListener("keydown", (event) => {
  // A held-down key (event.repeat) must not answer several images.
  if ($("trial").hidden || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  const answer = KEYS[event.key.toLowerCase()];
  if (answer) {
    event.preventDefault();
    submit(answer);
  }
});
main().catch(() => fail("The study could not be loaded; please reload the page."));
