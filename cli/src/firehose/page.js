// The firehose's web view. Everything from the bus goes into the page as
// text (textContent, element attributes we choose), never as markup: message
// bodies are untrusted input.
"use strict";

const MAX_ROWS = 200;
const receipts = new Map(); // msg_id -> {row, chips: Map(name -> span), state cell}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function chip(text, state) {
  const span = document.createElement("span");
  span.className = "chip state-" + state;
  span.textContent = text;
  return span;
}

function setChip(span, text, state) {
  span.className = "chip state-" + state;
  span.textContent = text;
}

function filterText() {
  return document.getElementById("filter").value.trim();
}

// ACKs and heartbeats are bus messages too; they are counted in the
// receipts and heartbeat tables, and listed only on request.
function plumbing(topic) {
  const t = String(topic);
  return t.endsWith(".gilmsg.ack") || t.endsWith(".gilmsg.heartbeat");
}

function shown(topic, isMessage) {
  const f = filterText();
  if (isMessage && plumbing(topic) && !document.getElementById("plumbing").checked) return false;
  return f === "" || String(topic).includes(f);
}

function applyFilter() {
  for (const id of ["messages", "receipts"]) {
    for (const row of document.querySelectorAll("#" + id + " tbody tr")) {
      row.hidden = !shown(row.dataset.topic, id === "messages");
    }
  }
}

function prepend(tbodySelector, row) {
  const tbody = document.querySelector(tbodySelector);
  tbody.insertBefore(row, tbody.firstChild);
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
}

function onMessage(m) {
  const row = document.createElement("tr");
  row.dataset.topic = m.topic;
  row.dataset.msgId = m.msg_id;
  row.className = "message";
  const when = typeof m.timestamp === "number" ? new Date(m.timestamp * 1000).toISOString() : "-";
  cell(row, when);
  cell(row, m.topic);
  const verdict = cell(row, "");
  verdict.appendChild(chip(m.verdict + (m.reason ? " (" + m.reason + ")" : ""), m.verdict));
  cell(row, m.signer || (m.claimed_signer ? m.claimed_signer + " (unverified)" : "-"));
  cell(row, JSON.stringify(m.msg), "body");
  row.hidden = !shown(m.topic, true);
  prepend("#messages tbody", row);
}

function onReceipt(e) {
  let entry = receipts.get(e.msg_id);
  if (e.event === "waiting") {
    if (entry) return;
    const row = document.createElement("tr");
    row.dataset.topic = e.topic;
    row.dataset.msgId = e.msg_id;
    row.className = "receipt";
    cell(row, e.topic);
    cell(row, e.msg_id);
    cell(row, e.publisher);
    const stateCell = cell(row, "");
    const state = chip("waiting", "waiting");
    state.classList.add("receipt-state");
    stateCell.appendChild(state);
    const list = cell(row, "");
    const chips = new Map();
    for (const name of e.recipients) {
      const c = chip(name + ": waiting", "waiting");
      c.dataset.recipient = name;
      chips.set(name, c);
      list.appendChild(c);
    }
    entry = { row, chips, state };
    receipts.set(e.msg_id, entry);
    row.hidden = !shown(e.topic, false);
    prepend("#receipts tbody", row);
    if (receipts.size > MAX_ROWS * 2) {
      for (const [id, old] of receipts) {
        if (!old.row.isConnected) receipts.delete(id);
      }
    }
    return;
  }
  if (!entry) return;
  if (e.event === "acked") {
    const c = entry.chips.get(e.recipient);
    if (c) setChip(c, e.recipient + ": acked", "acked");
  } else if (e.event === "complete") {
    setChip(entry.state, "complete", "complete");
    entry.state.classList.add("receipt-state");
  } else if (e.event === "incomplete") {
    for (const name of e.missing) {
      const c = entry.chips.get(name);
      if (c) setChip(c, name + ": missing", "missing");
    }
    setChip(entry.state, e.forgotten ? "incomplete (forgotten)" : "incomplete", "incomplete");
    entry.state.classList.add("receipt-state");
  }
}

function onStatus(s) {
  const tbody = document.querySelector("#status tbody");
  const rows = [];
  for (const id of s.identities) {
    const row = document.createElement("tr");
    row.dataset.identity = id.name;
    cell(row, id.name);
    const state = cell(row, "");
    state.appendChild(chip(id.state, id.state));
    cell(row, id.last_seen ? id.last_seen + " (" + id.age_seconds.toFixed(1) + " s ago)" : "never");
    rows.push(row);
  }
  tbody.replaceChildren(...rows);
}

function parse(handler) {
  return (event) => {
    let data;
    try { data = JSON.parse(event.data); } catch (_) { return; }
    handler(data);
  };
}

function connect() {
  const conn = document.getElementById("connection");
  const source = new EventSource("/events");
  source.addEventListener("open", () => { conn.textContent = "live"; conn.className = "state-connected"; });
  source.addEventListener("error", () => { conn.textContent = "reconnecting"; conn.className = "state-disconnected"; });
  source.addEventListener("message", parse(onMessage));
  source.addEventListener("receipt", parse(onReceipt));
  source.addEventListener("status", parse(onStatus));
}

document.getElementById("filter").addEventListener("input", applyFilter);
document.getElementById("plumbing").addEventListener("change", applyFilter);
const initial = new URLSearchParams(location.search).get("topic");
if (initial) document.getElementById("filter").value = initial;
connect();
