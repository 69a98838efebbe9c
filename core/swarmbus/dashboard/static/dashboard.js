// swarmbus dashboard: fills the page from /api/events (Server-Sent Events: a snapshot, then one
// event per change). Everything a peer wrote is put on the page with textContent, never as HTML.
(function () {
  "use strict";

  var model = {
    agents: new Map(), messages: new Map(), holds: new Map(), quarantine: [], jobs: new Map(),
    tasks: new Map(), malformed: { total: 0, counts: {}, recent: [] }, status: null
  };
  var MAX_QUARANTINE = 200;
  var MAX_MESSAGES = 300;
  var dirty = new Set();
  var timer = null;
  var events = 0;

  var KNOWN = {
    presence: ["online", "offline", "stale", "unknown"],
    task: ["open", "claimed", "completed", "failed"],
    job: ["submitted", "started", "progress", "completed", "error"]
  };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  function cell(row, text, cls) {
    var td = el("td", cls || null, text === null || text === undefined ? "" : text);
    row.appendChild(td);
    return td;
  }

  function badge(kind, value) {
    var known = KNOWN[kind] || [];
    var cls = "badge " + (known.indexOf(value) >= 0 ? kind + "-" + value : "other");
    return el("span", cls, value === null || value === undefined ? "?" : value);
  }

  function when(seconds) {
    if (seconds === null || seconds === undefined) { return ""; }
    var d = new Date(seconds * 1000);
    return isNaN(d.getTime()) ? "" : d.toLocaleTimeString();
  }

  function isoSeconds(text) {
    if (!text) { return null; }
    var t = Date.parse(text);
    return isNaN(t) ? null : t / 1000;
  }

  function ago(seconds) {
    if (seconds === null) { return "unknown"; }
    var s = Math.max(0, Date.now() / 1000 - seconds);
    if (s < 60) { return Math.round(s) + "s ago"; }
    if (s < 3600) { return Math.round(s / 60) + "m ago"; }
    if (s < 86400) { return Math.round(s / 3600) + "h ago"; }
    return Math.round(s / 86400) + "d ago";
  }

  function keyed(row, key) {
    row.setAttribute("data-key", key);
    return row;
  }

  // -- sections ----------------------------------------------------------------------------------
  function renderAgents() {
    var rows = Array.from(model.agents.values()).sort(function (a, b) { return a.agent < b.agent ? -1 : 1; });
    fill("agents", rows, function (a) {
      var tr = keyed(el("tr"), a.agent);
      cell(tr, a.agent, "c-agent");
      cell(tr, null, "c-status").appendChild(badge("presence", a.status));
      cell(tr, a.role, "c-role");
      cell(tr, (a.capabilities || []).join(", "), "c-capabilities");
      cell(tr, a.swarm, "c-swarm");
      var seen = cell(tr, a.last_seen ? ago(isoSeconds(a.last_seen)) : "unknown", "c-seen");
      if (a.last_seen) { seen.title = a.last_seen; }
      cell(tr, a.host ? a.host + (a.pid ? " pid " + a.pid : "") : "", "c-host");
      cell(tr, a.local ? "yes" : "", "c-local");
      return tr;
    });
  }

  function renderTasks() {
    var rows = Array.from(model.tasks.values()).sort(function (a, b) { return a.key < b.key ? -1 : 1; });
    fill("tasks", rows, function (t) {
      var tr = keyed(el("tr"), t.key);
      tr.setAttribute("data-state", t.state);
      cell(tr, t.task_id, "c-task");
      cell(tr, t.type, "c-type");
      cell(tr, t.owner, "c-owner");
      cell(tr, null, "c-state").appendChild(badge("task", t.state));
      cell(tr, t.claimer, "c-claimer");
      cell(tr, t.max_attempts ? t.attempt + " / " + t.max_attempts : String(t.attempt), "c-attempt");
      cell(tr, t.lease_until, "c-lease");
      cell(tr, t.error !== null && t.error !== undefined ? "error: " + t.error : t.result, "c-result");
      var hist = (t.history || []).map(function (h) { return h.state; }).join(" → ");
      cell(tr, hist, "c-history");
      return tr;
    });
  }

  function renderJobs() {
    var rows = Array.from(model.jobs.values()).sort(function (a, b) { return b.updated_at - a.updated_at; });
    fill("jobs", rows, function (j) {
      var tr = keyed(el("tr"), j.job_id);
      tr.setAttribute("data-state", j.state);
      cell(tr, j.job_id, "c-job");
      cell(tr, (j.owner || "?") + " → " + (j.delegate || "anyone") +
        (j.conflict && j.conflict.length ? " (also claimed by " + j.conflict.join(", ") + ")" : ""), "c-parties");
      cell(tr, null, "c-state").appendChild(badge("job", j.state));
      cell(tr, j.prompt !== null && j.prompt !== undefined ? j.prompt : j.payload, "c-prompt");
      var evs = (j.events || []).map(function (e) { return e.event + (e.detail ? " (" + e.detail + ")" : ""); });
      cell(tr, evs.slice(-4).join(" · "), "c-events");
      var o = j.outcome;
      cell(tr, o ? o.event + " by " + o.by + (o.detail ? ": " + o.detail : "") : "", "c-outcome");
      return tr;
    });
  }

  function renderMessages() {
    var rows = Array.from(model.messages.values()).sort(function (a, b) { return b.first_seen - a.first_seen; });
    fill("messages", rows, function (m) {
      var tr = keyed(el("tr"), m.id);
      cell(tr, when(m.first_seen), "c-when").title = m.ts || "";
      cell(tr, (m.from || "?") + " → " + (m.to || "?"), "c-route");
      var subj = cell(tr, m.subject, "c-subject");
      if (m.preview) { subj.appendChild(el("div", "preview", m.preview)); }
      if (m.priority && m.priority !== "normal") { subj.appendChild(el("span", "badge other", m.priority)); }
      var ladder = cell(tr, null, "c-ladder");
      (m.ladder || []).forEach(function (s) {
        var chip = el("span", "step " + (s.reached ? "reached" : "pending"), s.label);
        chip.setAttribute("data-step", s.step);
        chip.title = s.reached ? (s.by.join(", ") + " at " + when(s.at) + (s.detail ? " — " + s.detail : "")) : "not yet";
        ladder.appendChild(chip);
      });
      if (m.held && m.held.length) {
        m.held.forEach(function (h) { ladder.appendChild(el("div", "held", "held by " + h.rule + ": " + h.reason)); });
      }
      if (m.redelivery && !m.redelivery.ended && m.redelivery.attempts) {
        ladder.appendChild(el("div", "muted", "republished " + m.redelivery.attempts + "×"));
      }
      var handlers = (m.handlers || []).map(function (h) {
        return h.agent + " " + h.handler + ": " + h.status + (h.detail && h.status !== "ok" ? " (" + h.detail + ")" : "");
      });
      cell(tr, handlers.join("; "), "c-handlers");
      return tr;
    });
  }

  function renderHolds() {
    var rows = Array.from(model.holds.values()).sort(function (a, b) { return a.key < b.key ? -1 : 1; });
    fill("holds", rows, function (h) {
      var tr = keyed(el("tr"), h.key);
      cell(tr, h.agent, "c-agent");
      cell(tr, h.seq === null ? h.subject : "#" + h.seq + " " + (h.subject || ""), "c-message");
      cell(tr, h.from, "c-from");
      cell(tr, h.until === null ? "until released" : new Date(h.until * 1000).toLocaleString(), "c-until");
      cell(tr, h.rule, "c-rule");
      cell(tr, h.reason, "c-reason");
      return tr;
    });
  }

  function renderQuarantine() {
    var rows = model.quarantine.slice().reverse();
    fill("quarantine", rows, function (q) {
      var tr = keyed(el("tr"), q.key);
      cell(tr, q.agent, "c-agent");
      cell(tr, when(q.received_at), "c-when");
      cell(tr, q.topic, "c-topic");
      cell(tr, q.reason, "c-reason");
      cell(tr, q.preview + (q.size > 120 ? " … (" + q.size + " bytes)" : ""), "c-payload");
      return tr;
    });
  }

  function renderMalformed() {
    var m = model.malformed;
    document.getElementById("malformed-count").textContent = String(m.total || 0);
    var list = document.getElementById("malformed");
    list.replaceChildren();
    (m.recent || []).slice().reverse().forEach(function (r) {
      var li = el("li");
      li.appendChild(el("code", null, r.topic));
      li.appendChild(document.createTextNode(": " + r.reason));
      list.appendChild(li);
    });
  }

  function renderStatus() {
    var s = model.status;
    if (!s) { return; }
    var b = s.broker || {};
    document.getElementById("broker").textContent = "broker " + (b.url || "?") + ": " +
      (b.connected ? "connected" : "disconnected" + (b.error ? " (" + b.error + ")" : "")) +
      (b.refused && b.refused.length ? "; refused: " + b.refused.join(", ") : "");
    var list = document.getElementById("stores");
    list.replaceChildren();
    Object.keys(s.stores || {}).forEach(function (agent) {
      var st = s.stores[agent];
      var c = st.counters || {};
      var line = agent + "'s store: " + (st.ok ? "read" : "cannot be read (" + st.error + ")") +
        " · " + (c.stored || 0) + " stored, " + (c.quarantined || 0) + " quarantined, " + (c.duplicates || 0) + " duplicates";
      list.appendChild(el("li", st.ok ? null : "warn", line));
    });
    var dropped = Object.keys(s.dropped || {});
    if (dropped.length) {
      list.appendChild(el("li", "warn", "left out (too many): " +
        dropped.map(function (k) { return k + " " + s.dropped[k]; }).join(", ")));
    }
  }

  function fill(name, rows, make) {
    var body = document.querySelector("#" + name + " tbody");
    body.replaceChildren.apply(body, rows.map(make));
    document.getElementById(name + "-count").textContent = String(rows.length);
    document.getElementById(name + "-empty").hidden = rows.length > 0;
  }

  var RENDER = {
    agents: renderAgents, tasks: renderTasks, jobs: renderJobs, messages: renderMessages, holds: renderHolds,
    quarantine: renderQuarantine, malformed: renderMalformed, status: renderStatus
  };

  function render() {
    timer = null;
    dirty.forEach(function (name) { RENDER[name](); });
    dirty.clear();
    document.getElementById("counts").textContent = model.agents.size + " agents · " + model.messages.size +
      " messages · " + model.tasks.size + " tasks · " + model.jobs.size + " jobs";
    document.body.setAttribute("data-events", String(events));
  }

  function touch(name) {
    dirty.add(name);
    if (timer === null) { timer = window.setTimeout(render, 30); }
  }

  // -- the stream ----------------------------------------------------------------------------------
  function mapOf(list, key) {
    var m = new Map();
    (list || []).forEach(function (v) { m.set(v[key], v); });
    return m;
  }

  function snapshot(s) {
    model.agents = mapOf(s.agents, "agent");
    model.messages = mapOf(s.messages, "id");
    model.holds = mapOf(s.holds, "key");
    model.quarantine = (s.quarantine || []).slice(-MAX_QUARANTINE);
    model.jobs = mapOf(s.jobs, "job_id");
    model.tasks = mapOf(s.tasks, "key");
    model.malformed = s.malformed || { total: 0, counts: {}, recent: [] };
    model.status = s.status;
    Object.keys(RENDER).forEach(touch);
    document.body.setAttribute("data-ready", "1");
  }

  function trimMessages() {
    if (model.messages.size <= MAX_MESSAGES) { return; }
    var oldest = Array.from(model.messages.values()).sort(function (a, b) { return a.first_seen - b.first_seen; });
    oldest.slice(0, model.messages.size - MAX_MESSAGES).forEach(function (m) { model.messages.delete(m.id); });
  }

  var HANDLERS = {
    snapshot: snapshot,
    agent: function (v) { model.agents.set(v.agent, v); touch("agents"); },
    agent_removed: function (v) { model.agents.delete(v.agent); touch("agents"); },
    message: function (v) { model.messages.set(v.id, v); trimMessages(); touch("messages"); },
    message_removed: function (v) { model.messages.delete(v.id); touch("messages"); },
    hold: function (v) { model.holds.set(v.key, v); touch("holds"); },
    hold_removed: function (v) { model.holds.delete(v.key); touch("holds"); },
    quarantine: function (v) {
      model.quarantine.push(v);
      if (model.quarantine.length > MAX_QUARANTINE) { model.quarantine.shift(); }
      touch("quarantine");
    },
    job: function (v) { model.jobs.set(v.job_id, v); touch("jobs"); },
    job_removed: function (v) { model.jobs.delete(v.job_id); touch("jobs"); },
    task: function (v) { model.tasks.set(v.key, v); touch("tasks"); },
    task_removed: function (v) { model.tasks.delete(v.key); touch("tasks"); },
    malformed: function (v) { model.malformed = v; touch("malformed"); },
    status: function (v) { model.status = v; touch("status"); }
  };

  function live(ok) {
    var pill = document.getElementById("live");
    pill.textContent = ok ? "live" : "reconnecting…";
    pill.className = "pill " + (ok ? "pill-ok" : "pill-wait");
  }

  function connect() {
    var source = new EventSource("api/events");
    Object.keys(HANDLERS).forEach(function (kind) {
      source.addEventListener(kind, function (e) {
        var value;
        try { value = JSON.parse(e.data); } catch (err) { return; }
        events += 1;
        HANDLERS[kind](value);
      });
    });
    source.onopen = function () { live(true); };
    source.onerror = function () { live(false); };
  }

  document.addEventListener("DOMContentLoaded", function () {
    connect();
    window.setInterval(function () { touch("agents"); }, 5000); // "last seen" ages
  });
}());
