// The scan report's file list: filter, sort, search and page the rows embedded as JSON, in the browser.
// Every value from the data goes in through textContent or an attribute, never as HTML.
"use strict";
(function () {
  const ROWS = JSON.parse(document.getElementById("rows").textContent);
  const $ = (id) => document.getElementById(id);
  const controls = {
    search: $("search"), verdict: $("verdict"), generator: $("generator"),
    pMin: $("p-min"), pMax: $("p-max"), sort: $("sort"), pageSize: $("page-size"),
  };
  const NO_VERDICT = "(no verdict)";
  const VERDICT_ORDER = { ai: 0, unsure: 1, artist: 2, [NO_VERDICT]: 3, unreadable: 4 };
  const verdictOf = (row) => row.verdict || NO_VERDICT;
  let page = 0;
  let shown = ROWS;

  function fillSelect(select, values) {
    for (const value of values) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      select.append(option);
    }
  }
  const verdicts = [...new Set(ROWS.map(verdictOf))].sort((a, b) => VERDICT_ORDER[a] - VERDICT_ORDER[b]);
  fillSelect(controls.verdict, verdicts);
  fillSelect(controls.generator, [...new Set(ROWS.map((r) => r.generator).filter(Boolean))].sort());

  function compare(key) {
    const text = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
    switch (key) {
      case "name": return (a, b) => text(a.name.toLowerCase(), b.name.toLowerCase()) || text(a.source, b.source);
      case "verdict": return (a, b) => VERDICT_ORDER[verdictOf(a)] - VERDICT_ORDER[verdictOf(b)] || (b.p ?? -1) - (a.p ?? -1);
      case "generator": return (a, b) => text(a.generator || "\uffff", b.generator || "\uffff") || (b.p ?? -1) - (a.p ?? -1);
      case "p": return (a, b) => (a.p ?? -1) - (b.p ?? -1);
      default: return (a, b) => a.i - b.i;
    }
  }

  function apply() {
    const query = controls.search.value.trim().toLowerCase();
    const verdict = controls.verdict.value;
    const generator = controls.generator.value;
    const low = parseFloat(controls.pMin.value);
    const high = parseFloat(controls.pMax.value);
    const pFiltered = (!isNaN(low) && low > 0) || (!isNaN(high) && high < 1);
    shown = ROWS.filter((row) => {
      if (query && !row.name.toLowerCase().includes(query)) return false;
      if (verdict && verdictOf(row) !== verdict) return false;
      if (generator && row.generator !== generator) return false;
      if (pFiltered) {
        if (row.p === null || row.p === undefined) return false;
        if (!isNaN(low) && row.p < low) return false;
        if (!isNaN(high) && row.p > high) return false;
      }
      return true;
    });
    const [key, direction] = controls.sort.value.split("-");
    const order = compare(key);
    shown.sort(direction === "desc" ? (a, b) => order(b, a) || a.i - b.i : (a, b) => order(a, b) || a.i - b.i);
    for (const head of document.querySelectorAll(".sort-head")) {
      if (head.dataset.key === key) head.setAttribute("aria-sort", direction === "desc" ? "descending" : "ascending");
      else head.removeAttribute("aria-sort");
    }
    page = 0;
    render();
  }

  function cell(tr, text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (text !== undefined && text !== null) td.textContent = text;
    tr.append(td);
    return td;
  }

  function evidenceText(row) {
    const e = row.evidence || {};
    const parts = [];
    if (e.generators && e.generators.length) parts.push("names " + e.generators.join(", "));
    if (e.indicates_ai === true) parts.push("marks AI");
    else if (e.indicates_ai === false) parts.push("points to a person's tool");
    return parts.join("; ") || (e.items && e.items.length ? e.items.length + " item(s)" : "");
  }

  function render() {
    const size = parseInt(controls.pageSize.value, 10);
    const pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(page, pages - 1);
    const body = $("rows-body");
    const fragment = document.createDocumentFragment();
    for (const row of shown.slice(page * size, (page + 1) * size)) {
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      tr.dataset.index = row.i;
      tr.dataset.verdict = verdictOf(row);
      const imageCell = cell(tr);
      if (row.thumb) {
        const img = document.createElement("img");
        img.className = "thumb";
        img.alt = "";
        img.src = row.thumb;
        imageCell.append(img);
      }
      const name = cell(tr, row.name, "name");
      name.title = row.source;
      cell(tr, verdictOf(row), "verdict v-" + verdictOf(row));
      cell(tr, row.generator || "", "generator");
      const p = cell(tr, row.p === null || row.p === undefined ? "" : row.p.toFixed(3), "p num");
      if (row.p !== null && row.p !== undefined) {
        const bar = document.createElement("span");
        bar.className = "pbar";
        const fill = document.createElement("span");
        fill.style.width = (100 * row.p).toFixed(1) + "%";
        bar.append(fill);
        p.append(bar);
      }
      cell(tr, row.error || row.reason || "", row.error ? "reason error" : "reason");
      cell(tr, evidenceText(row), "evidence");
      tr.addEventListener("click", () => openDetail(row));
      tr.addEventListener("keydown", (event) => { if (event.key === "Enter") openDetail(row); });
      fragment.append(tr);
    }
    body.replaceChildren(fragment);
    $("count").textContent = shown.length === ROWS.length
      ? `${ROWS.length} files`
      : `${shown.length} of ${ROWS.length} files match`;
    $("page-info").textContent = `page ${page + 1} of ${pages}`;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }

  function listItems(list, items) {
    list.replaceChildren(...items.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }));
    if (!items.length) {
      const li = document.createElement("li");
      li.textContent = "none";
      li.className = "muted";
      list.append(li);
    }
  }

  function openDetail(row) {
    $("detail-name").textContent = row.name;
    $("detail-path").textContent = row.source;
    const verdict = verdictOf(row);
    $("detail-verdict").textContent = row.error ? "unreadable"
      : `verdict: ${verdict}` + (row.generator ? ` (generator: ${row.generator})` : "")
        + (row.p !== null && row.p !== undefined ? `; P(generated) = ${row.p.toFixed(4)}` : "");
    $("detail-reason").textContent = row.reason ? "reason: " + row.reason : "";
    $("detail-error").textContent = row.error || "";
    const image = $("detail-image");
    image.hidden = !row.thumb;
    if (row.thumb) image.querySelector("img").src = row.thumb;
    const heatmap = $("detail-heatmap");
    heatmap.hidden = !row.heatmap;
    if (row.heatmap) heatmap.querySelector("img").src = row.heatmap;
    const probs = $("detail-probs").querySelector("tbody");
    probs.replaceChildren(...(row.probabilities || []).map(([name, p]) => {
      const tr = document.createElement("tr");
      cell(tr, name);
      cell(tr, (100 * p).toFixed(1) + "%", "num");
      return tr;
    }));
    $("detail-view").textContent = row.view ? `view: ${row.view}, ${row.n_views} model input(s)` : "";
    const e = row.evidence || {};
    listItems($("detail-evidence"), (e.items || []).map((item) => `${item.source}: ${item.detail}`));
    listItems($("detail-notes"), row.notes || []);
    $("detail").showModal();
  }

  for (const control of Object.values(controls)) {
    control.addEventListener("input", apply);
    control.addEventListener("change", apply);
  }
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("controls").addEventListener("reset", () => setTimeout(apply, 0));
  for (const head of document.querySelectorAll(".sort-head")) {
    head.addEventListener("click", () => {
      const key = head.dataset.key;
      const current = controls.sort.value;
      const next = current === `${key}-asc` ? `${key}-desc` : `${key}-asc`;
      if (![...controls.sort.options].some((o) => o.value === next)) {
        const option = document.createElement("option");
        option.value = next;
        option.textContent = `${key}, ${next.endsWith("desc") ? "descending" : "ascending"}`;
        controls.sort.append(option);
      }
      controls.sort.value = next;
      apply();
    });
  }
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });
  apply();
  document.body.dataset.ready = "true";
})();
