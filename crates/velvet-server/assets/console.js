// Velvet console: the token filter, and the three-stage rotation modal with its live
// per-subscriber table and timeline, fed by the job's event stream (SSE).
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    const e = new Error(data?.message ?? `HTTP ${r.status}`);
    e.code = data?.error;
    throw e;
  }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

// The tokens list filter: rows whose text does not contain the query are hidden.
const filter = document.getElementById("token-filter");
if (filter) {
  filter.addEventListener("input", () => {
    const q = filter.value.trim().toLowerCase();
    for (const tr of document.querySelectorAll("#tokens tbody tr")) {
      tr.hidden = q !== "" && !tr.textContent.toLowerCase().includes(q);
    }
  });
}

const dialog = document.getElementById("rotation");
if (dialog) rotationModal(dialog);

function rotationModal(dialog) {
  const token = dialog.dataset.token;
  const kickoff = dialog.querySelector("#kickoff");
  const stages = dialog.querySelectorAll("ol.stages li");
  const status = dialog.querySelector("#job-status");
  const actions = dialog.querySelector("#actions");
  const gate = dialog.querySelector("#gate");
  const gateText = dialog.querySelector("#gate-requires");
  const gateTotp = dialog.querySelector("#gate-totp");
  const rows = dialog.querySelector("#subscribers tbody");
  const timeline = dialog.querySelector("#timeline");
  const error = dialog.querySelector("#rotation-error");
  const consumers = new Map(); // name -> {kind, status, attempts, last_error, fingerprint, first, last}
  let job = null;
  let source = null;

  document.getElementById("open-rotation")?.addEventListener("click", () => dialog.showModal());
  dialog.querySelector("#close-rotation").addEventListener("click", () => dialog.close());

  kickoff.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    const body = {};
    if (kickoff.elements.flow.value) body.flow_type = kickoff.elements.flow.value;
    const reason = kickoff.elements.reason.value.trim();
    if (reason) body.reason = reason;
    try {
      const j = await api("POST", `/api/v1/tokens/${encodeURIComponent(token)}/rotate`, body);
      history.replaceState(null, "", `/console/rotations/${j.job_id}`);
      follow(j.job_id);
    } catch (x) {
      error.textContent = x.message;
    }
  });

  if (dialog.dataset.job) {
    dialog.showModal();
    follow(dialog.dataset.job);
  }

  function follow(id) {
    kickoff.hidden = true;
    source?.close();
    // The browser reconnects by itself and sends Last-Event-ID, so nothing is missed or repeated.
    source = new EventSource(`/api/v1/rotations/${id}/events`);
    source.addEventListener("job", (e) => renderJob(JSON.parse(e.data)));
    source.addEventListener("consumer", (e) => renderConsumer(JSON.parse(e.data)));
    source.addEventListener("end", () => {
      source.close();
      dialog.dataset.ended = "true";
    });
  }

  async function act(action, extra = {}) {
    error.textContent = "";
    try {
      renderJob(await api("POST", `/api/v1/rotations/${job.job_id}/stage`, { action, ...extra }));
    } catch (x) {
      error.textContent = x.message;
    }
  }

  const terminal = (x) => ["succeeded", "aborted", "rolled_back"].includes(x?.status);

  function renderJob(j) {
    // An action's answer and the stream race: never show an older state over a newer one
    // (a late "running" answer after the stream's "succeeded" would strand the modal).
    if (job && job.job_id === j.job_id
        && (terminal(job) || Date.parse(j.updated_at) < Date.parse(job.updated_at))) {
      return;
    }
    job = j;
    dialog.dataset.status = j.status;
    dialog.dataset.stage = j.stage;
    const order = ["mint", "distribute", "revoke"];
    const at = j.stage === "done" ? 3 : order.indexOf(j.stage);
    stages.forEach((li, i) => {
      li.className = i < at ? "done" : i === at ? (j.status === "failed" ? "failed" : "current") : "";
      if (i === at) li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
    });
    const waiting = j.awaiting ? `, waiting for ${j.awaiting.replace("_", " ")}` : "";
    const why = j.reason ? ` Reason: ${j.reason}.` : "";
    status.textContent = `Job ${j.job_id}: ${j.stage} — ${j.status.replaceAll("_", " ")}${waiting}${j.error ? ` (${j.error})` : ""}.${why}${summary(j)}`;
    actions.replaceChildren();
    const button = (label, action, cls = "") => {
      const b = el("button", { type: "button", class: cls }, label);
      b.addEventListener("click", () => act(action));
      actions.append(b);
    };
    if (j.awaiting === "proceed_distribute") {
      button("Proceed to distribute", "proceed_distribute");
      button("Abort", "abort", "secondary");
    }
    if (j.status === "failed") {
      button("Retry failed", "retry_failed");
      button("Roll back", "rollback", "secondary");
    }
    if (j.awaiting === "proceed_revoke") {
      button("Roll back", "rollback", "secondary");
    }
    renderGate(j);
    for (const c of j.consumers ?? []) renderConsumer({ ...c, job_id: j.job_id });
  }

  // Once a job has ended: how many consumers hold the new value and how long it took.
  function summary(j) {
    if (!terminal(j)) return "";
    const list = j.consumers ?? [];
    const verified = list.filter((c) => c.status === "verified").length;
    const took = j.finished_at ? ` in ${((Date.parse(j.finished_at) - Date.parse(j.created_at)) / 1000).toFixed(1)} s` : "";
    return ` Finished${took}: ${verified} of ${list.length} consumer(s) verified.`;
  }

  function renderGate(j) {
    const awaitingRevoke = j.awaiting === "proceed_revoke";
    gate.hidden = !awaitingRevoke;
    if (!awaitingRevoke) return;
    // Events carry the job as stored; the gate and its approvals come with the job's own page.
    if (!("gate" in j) || (j.gate === null && !j.gateChecked)) {
      api("GET", `/api/v1/rotations/${j.job_id}`)
        .then((full) => { if (job?.job_id === full.job_id) renderGate({ ...full, gateChecked: true }); })
        .catch((x) => { error.textContent = x.message; });
      return;
    }
    const g = j.gate;
    const needs = [];
    if (g?.requires?.totp) needs.push("a fresh TOTP code from you");
    if (g?.requires?.approvals) needs.push(`${g.requires.approvals} approval(s) by other operators`);
    if (g?.requires?.roles?.length) needs.push(`role ${g.requires.roles.join(" or ")}`);
    const who = (g?.approvals ?? []).map((a) => a.operator).join(", ") || "none yet";
    const hint = g?.requires?.totp || g?.requires?.approvals
      ? " Enter the code your authenticator shows now; each code counts once per operator, so the one you logged in with is spent: wait for the next."
      : "";
    gateText.textContent = g
      ? `Revocation gate “${g.name}” needs ${needs.join(", ") || "nothing more"}. Approvals: ${who}.${hint}`
      : "No revocation gate applies: revoking retires the previous value.";
    dialog.querySelector("#gate-approve").hidden = !(g?.requires?.approvals > 0);
    gateTotp.closest(".field").hidden = !(g?.requires?.totp || g?.requires?.approvals > 0);
  }

  dialog.querySelector("#gate-approve").addEventListener("click", async () => {
    error.textContent = "";
    try {
      renderJob(await api("POST", `/api/v1/rotations/${job.job_id}/approvals`, { totp: gateTotp.value.trim() }));
      gateTotp.value = "";
    } catch (x) {
      error.textContent = x.message;
    }
  });
  dialog.querySelector("#gate-revoke").addEventListener("click", () => {
    const totp = gateTotp.value.trim();
    gateTotp.value = "";
    act("proceed_revoke", totp ? { totp } : {});
  });

  function renderConsumer(c) {
    const seen = consumers.get(c.consumer) ?? { first: null, last: null, done: null };
    const at = Date.parse(c.updated_at);
    // The stored start survives a reload; a bar ends when its consumer first finished (later
    // changes, such as the revoke, would otherwise stretch every bar to the end).
    if (c.started_at) seen.first = Date.parse(c.started_at);
    else if (c.status === "in_progress" && seen.first === null) seen.first = at;
    const finished = ["verified", "failed", "rolled_back"].includes(c.status);
    if (finished && seen.done === null) seen.done = at;
    if (!finished) seen.done = null;
    seen.last = seen.done ?? at;
    Object.assign(seen, c);
    consumers.set(c.consumer, seen);
    let tr = rows.querySelector(`tr[data-consumer="${CSS.escape(c.consumer)}"]`);
    if (!tr) {
      tr = el("tr", { "data-consumer": c.consumer });
      rows.append(tr);
    }
    const took = seen.first !== null && ["verified", "failed", "rolled_back"].includes(c.status)
      ? `${((seen.last - seen.first) / 1000).toFixed(2)} s` : "";
    tr.replaceChildren(
      el("td", {}, c.consumer),
      el("td", {}, c.kind),
      el("td", { class: `status ${c.status}` }, c.status.replaceAll("_", " ")),
      el("td", {}, c.attempts),
      el("td", {}, c.last_error ?? ""),
      el("td", { class: "mono" }, c.fingerprint ?? ""),
      el("td", {}, took),
    );
    drawTimeline();
  }

  // One bar per consumer from its first attempt to its last change; failures in red.
  function drawTimeline() {
    const list = [...consumers.values()].filter((c) => c.first !== null);
    const ns = "http://www.w3.org/2000/svg";
    timeline.replaceChildren();
    if (list.length === 0) return;
    const start = Math.min(...list.map((c) => c.first));
    const end = Math.max(...list.map((c) => c.last), start + 1);
    const width = 800, label = 140, row = 18;
    timeline.setAttribute("viewBox", `0 0 ${width} ${list.length * row + 20}`);
    list.forEach((c, i) => {
      const y = i * row + 4;
      const x = label + ((c.first - start) / (end - start)) * (width - label - 10);
      const w = Math.max(3, ((c.last - c.first) / (end - start)) * (width - label - 10));
      const text = document.createElementNS(ns, "text");
      text.setAttribute("x", "4"); text.setAttribute("y", String(y + 11));
      text.textContent = c.consumer;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", String(x)); rect.setAttribute("y", String(y));
      rect.setAttribute("width", String(w)); rect.setAttribute("height", String(row - 6));
      rect.setAttribute("class", c.status === "verified" ? "ok" : ["failed", "rolled_back"].includes(c.status) ? "bad" : "busy");
      const title = document.createElementNS(ns, "title");
      title.textContent = `${c.consumer}: ${c.status}`;
      rect.append(title);
      timeline.append(text, rect);
    });
    const axis = document.createElementNS(ns, "text");
    axis.setAttribute("x", String(label)); axis.setAttribute("y", String(list.length * row + 16));
    axis.textContent = `${((end - start) / 1000).toFixed(2)} s from the first write to the last change`;
    timeline.append(axis);
  }
}
