// jobwarden web console: live updates without re-fetching the list. The pages work without
// this script (server-rendered, forms for the actions); with it, time-left bars and elapsed
// times tick every second, and each event from GET /v1/events refreshes only the row (or the
// job page section) it concerns. After a daemon restart the stream reconnects and the page
// re-reads what it shows once.
"use strict";
(function () {
  const body = document.body;
  const skew = Number(body.dataset.now || Date.now()) - Date.now();
  const now = () => Date.now() + skew;
  const status = document.getElementById("live");

  function fmt(ms) {
    let s = Math.round(Math.abs(ms) / 1000);
    const parts = [];
    for (const [unit, n] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
      if (s >= n) { parts.push(Math.floor(s / n) + unit); s %= n; }
    }
    return parts.length ? parts.slice(0, 2).join(" ") : "0s";
  }

  function tick() {
    const t = now();
    for (const m of document.querySelectorAll("meter[data-due]")) {
      const from = Number(m.dataset.from), due = Number(m.dataset.due);
      m.value = Math.max(0, Math.min(1, (due - t) / Math.max(due - from, 1)));
    }
    for (const el of document.querySelectorAll(".left[data-due]")) {
      const left = Number(el.dataset.due) - t;
      const step = el.dataset.step || "";
      el.textContent = left >= 0 ? step + " in " + fmt(left) : step + " overdue " + fmt(-left);
      el.classList.toggle("overdue", left < 0);
    }
    for (const el of document.querySelectorAll("[data-since]")) {
      el.textContent = fmt(t - Number(el.dataset.since));
    }
  }
  setInterval(tick, 1000);
  tick();

  // data-live="rows": the jobs table (one row re-read per event); data-live="main": the page's
  // main section re-read on an event about data-job (or, with data-kinds, of those kinds).
  const live = body.dataset.live;
  const tbody = document.querySelector("#jobs tbody");
  const onlyJob = body.dataset.job || null;
  const kinds = (body.dataset.kinds || "step stage task").split(" ");
  if (!window.EventSource || !live) { return; }

  function say(text) { if (status) { status.textContent = text; } }

  function filters() {
    const q = new URLSearchParams(location.search);
    const out = new URLSearchParams();
    for (const k of ["org", "type", "stage"]) { if (q.get(k)) { out.set(k, q.get(k)); } }
    return out;
  }
  function firstPage() {
    const p = new URLSearchParams(location.search).get("page");
    return !p || p === "1";
  }

  async function fetchHtml(url) {
    const r = await fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" });
    if (r.status === 204) { return ""; }
    if (!r.ok) { throw new Error(url + ": HTTP " + r.status); }
    return r.text();
  }

  const pending = new Set();
  let timer = null;
  function later(id) {
    pending.add(id);
    if (!timer) { timer = setTimeout(flush, 100); }
  }
  async function flush() {
    timer = null;
    const ids = [...pending];
    pending.clear();
    try {
      if (live === "main") {
        await refreshMain();
      } else {
        for (const id of ids) { await refreshRow(id); }
      }
      tick();
    } catch (e) { say("Live updates: " + e.message); }
  }
  async function refreshRow(id) {
    const row = document.getElementById("job-" + id);
    const html = await fetchHtml("/jobs/" + encodeURIComponent(id) + "/row?" + filters());
    if (!html) { if (row) { row.remove(); } return; }
    const tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    const tr = tpl.content.firstElementChild;
    if (row) { row.replaceWith(tr); } else if (firstPage() && tbody) { tbody.prepend(tr); }
  }
  async function refreshMain() {
    const q = new URLSearchParams(location.search);
    q.set("fragment", "main");
    document.querySelector("main").innerHTML = await fetchHtml(location.pathname + "?" + q);
  }
  async function resync() {
    try {
      if (live === "rows" && tbody) {
        const q = new URLSearchParams(location.search);
        q.set("fragment", "rows");
        tbody.innerHTML = await fetchHtml(location.pathname + "?" + q);
      } else {
        await refreshMain();
      }
      tick();
    } catch (e) { say("Live updates: " + e.message); }
  }

  let lost = false;
  let source = null;
  function connect() {
    source = new EventSource("/v1/events");
    source.addEventListener("hello", () => {
      say("Live updates: on");
      if (lost) { lost = false; resync(); }
    });
    source.addEventListener("error", () => {
      lost = true;
      say("Live updates: reconnecting…");
      if (source.readyState === EventSource.CLOSED) { setTimeout(connect, 2000); }
    });
    source.addEventListener("resync", resync);
    for (const kind of ["step", "stage", "task"]) {
      source.addEventListener(kind, (e) => {
        if (!kinds.includes(kind)) { return; }
        let d;
        try { d = JSON.parse(e.data); } catch (_) { return; }
        if (onlyJob && d.job_id !== onlyJob) { return; }
        if (live === "rows" && !d.job_id) { return; }
        later(d.job_id || "");
      });
    }
  }
  connect();
})();
