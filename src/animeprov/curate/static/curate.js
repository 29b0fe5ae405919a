// Keyboard-driven two-round curation. Every decision is POSTed (and stored) before the next image shows.
"use strict";

const state = { round: 1, rounds: 1, reasons: [], item: null, history: [], busy: false };
const $ = (id) => document.getElementById(id);

function roundFromUrl() {
  const value = parseInt(new URLSearchParams(location.search).get("round") || "1", 10);
  return Number.isFinite(value) && value >= 1 ? value : 1;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

function showCounts(counts) {
  const rate = counts.decided ? Math.round((100 * counts.accepted) / counts.decided) + "%" : "-";
  $("counts").textContent =
    `round ${state.round}: ${counts.decided} of ${counts.eligible} decided, ` +
    `${counts.accepted} accepted (${rate}), ${counts.left} left`;
}

function show(result) {
  showCounts(result.counts);
  state.item = result.item;
  const item = result.item;
  $("viewer").hidden = !item;
  $("done").hidden = Boolean(item);
  if (!item) {
    $("done").textContent =
      `Round ${state.round} is done: nothing left to review` +
      (state.round < state.rounds ? ` (round ${state.round + 1} reviews what was accepted here).` : ".");
    return;
  }
  $("image").src = `/api/items/${item.id}/image`;
  $("name").textContent = item.name;
  $("class").textContent = item.class ? `[${item.class}]` : "";
  const previous = item.decision;
  $("previous").textContent = previous
    ? `(decided: ${previous.decision}${previous.reason ? " - " + previous.reason : ""})`
    : "";
}

async function loadNext(after) {
  const query = after ? `&after=${after}` : "";
  show(await api(`/api/next?round=${state.round}${query}`));
}

async function decide(decision, reason) {
  if (state.busy || !state.item) return;
  state.busy = true;
  $("status").textContent = "";
  try {
    const item = state.item;
    await api("/api/decisions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ item_id: item.id, round: state.round, decision, reason: reason || "" }),
    });
    state.history.push(item.id);
    await loadNext(item.id);
  } catch (error) {
    $("status").textContent = `not saved: ${error.message}`;
  } finally {
    state.busy = false;
  }
}

async function back() {
  if (state.busy || !state.history.length) return;
  state.busy = true;
  try {
    show(await api(`/api/items/${state.history.pop()}?round=${state.round}`));
  } catch (error) {
    $("status").textContent = error.message;
  } finally {
    state.busy = false;
  }
}

function onKey(event) {
  if (event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  const reason = state.reasons.find((r) => r.key === key);
  if (key === "a" || key === "enter") decide("accept");
  else if (reason) decide("reject", reason.id);
  else if (key === "u" || key === "backspace") back();
  else return;
  event.preventDefault();
}

async function start() {
  const config = await api("/api/config");
  state.rounds = config.rounds;
  state.reasons = config.reasons;
  const asked = roundFromUrl();
  state.round = Math.min(asked, config.rounds);
  for (let r = 1; r <= config.rounds; r++) {
    const option = new Option(`${r}`, `${r}`, r === state.round, r === state.round);
    $("round").add(option);
  }
  $("round").addEventListener("change", () => {
    location.search = `?round=${$("round").value}`;
  });
  for (const reason of config.reasons) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.decision = "reject";
    button.dataset.reason = reason.id;
    button.innerHTML = `<kbd></kbd> `;
    button.querySelector("kbd").textContent = reason.key;
    button.append(reason.label);
    button.addEventListener("click", () => decide("reject", reason.id));
    $("reasons").append(button);
  }
  $("accept").addEventListener("click", () => decide("accept"));
  $("undo").addEventListener("click", back);
  document.addEventListener("keydown", onKey);
  await loadNext();
  if (asked > config.rounds) {
    $("status").textContent = `There are ${config.rounds} rounds: this is round ${state.round}, not ${asked}.`;
  }
  document.body.dataset.ready = "1";
}

start().catch((error) => {
  $("status").textContent = `could not start: ${error.message}`;
});
