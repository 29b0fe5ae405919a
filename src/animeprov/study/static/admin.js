// Admin page: the token stays in this tab (sessionStorage) and goes in a header, never in the URL.
"use strict";

const $ = (id) => document.getElementById(id);

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

async function load() {
  const token = sessionStorage.getItem("animeprov-admin-token") || "";
  if (!token) return;
  const response = await fetch("/api/admin/progress", { headers: { "X-Admin-Token": token } });
  if (response.status !== 200) {
    $("error").textContent = response.status === 401 ? "Wrong token." : `Error ${response.status}.`;
    $("error").hidden = false;
    return;
  }
  $("error").hidden = true;
  const data = await response.json();
  $("counts").textContent =
    `${data.n_participants} participants (${data.n_done} finished, ${data.n_simulated} simulated), ` +
    `${data.n_answers} answers, ${data.n_stimuli} images each.`;
  const rows = $("rows");
  rows.replaceChildren();
  for (const p of data.participants) {
    const tr = document.createElement("tr");
    const last = p.last_answer ? new Date(p.last_answer * 1000).toISOString().slice(0, 19) : "";
    for (const text of [p.participant_id, p.simulated ? "yes" : "no", p.familiarity || "",
      `${p.n_answered} / ${data.n_stimuli}`, p.done ? "yes" : "no", last]) tr.appendChild(cell(text));
    rows.appendChild(tr);
  }
  $("summary").hidden = false;
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("animeprov-admin-token", $("token").value);
  load();
});
load();
setInterval(load, 10000);
