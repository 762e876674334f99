// The live page of `replica serve --status-addr`: polls /status every two
// seconds and redraws. Everything it needs comes from this server.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

function human(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = Number(n) || 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
}

function count(n) {
  return Number(n || 0).toLocaleString("en-US");
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function clock(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleTimeString("en-GB", { hour12: false });
}

// A round top for the chart's scale: 1, 2 or 5 times a power of ten, in
// the binary unit the figure is shown in (so the labels read 500 KiB/s).
function niceMax(v) {
  if (v <= 0) return 1024;
  let unit = 1;
  while (v / unit >= 1000 && unit < Math.pow(1024, 5)) unit *= 1024;
  const x = v / unit;
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p * unit;
  return 10 * p * unit;
}

function area(points, key, w, h, max, n) {
  const step = w / (n - 1);
  const x0 = w - (points.length - 1) * step;
  let d = "M" + x0.toFixed(1) + "," + h;
  points.forEach((p, i) => {
    const y = h - (p[key] / max) * h;
    d += " L" + (x0 + i * step).toFixed(1) + "," + y.toFixed(1);
  });
  d += " L" + w + "," + h + " Z";
  return d;
}

// The chart spans the history the server has, in whole minutes: from one
// minute after a start up to the ten minutes it keeps.
function drawChart(seconds) {
  const box = $("chart");
  const W = Math.max(300, box.clientWidth), H = box.clientHeight || 200;
  const left = 64, bottom = 20, w = W - left - 8, h = H - bottom - 8;
  const minutes = Math.min(10, Math.max(1, Math.ceil(seconds.length / 60)));
  const n = minutes * 60;
  const pts = seconds.slice(-n);
  const max = niceMax(Math.max(1, ...pts.map((p) => Math.max(p.received, p.reused))));
  $("span").textContent = minutes === 1 ? "minute" : minutes + " minutes";
  let svg = '<svg viewBox="0 0 ' + W + " " + H + '" preserveAspectRatio="none">';
  svg += '<g transform="translate(' + left + ',8)">';
  for (let i = 0; i <= 4; i++) {
    const y = (h * i) / 4;
    svg += '<line class="grid" x1="0" x2="' + w + '" y1="' + y + '" y2="' + y + '"/>';
    svg += '<text class="axis" x="-8" y="' + (y + 4) + '" text-anchor="end">' + human((max * (4 - i)) / 4) + "/s</text>";
  }
  const tick = minutes === 1 ? 15 : minutes <= 5 ? 60 : 120;
  for (let t = 0; t <= n; t += tick) {
    const x = Math.max(0, w - (t * w) / (n - 1));
    const label = t === 0 ? "now" : t < 60 ? "−" + t + " s" : "−" + t / 60 + " min";
    svg += '<text class="axis" x="' + x.toFixed(1) + '" y="' + (h + 16) + '" text-anchor="' + (t === 0 ? "end" : "middle") + '">' + label + "</text>";
  }
  if (pts.length > 1) {
    svg += '<path class="reuse" d="' + area(pts, "reused", w, h, max, n) + '"/>';
    svg += '<path class="recv" d="' + area(pts, "received", w, h, max, n) + '"/>';
  }
  svg += "</g></svg>";
  box.innerHTML = svg; // numbers only: no text from the tree goes here
}

function drawOps(ops) {
  const body = $("ops");
  body.replaceChildren();
  if (ops.length === 0) {
    const tr = body.insertRow();
    const td = tr.insertCell();
    td.colSpan = 5;
    td.className = "empty";
    td.textContent = "none yet";
    return;
  }
  for (const op of ops.slice().reverse()) {
    const tr = body.insertRow();
    const cells = [clock(op.at), op.op, op.path, human(op.received), human(op.reused)];
    cells.forEach((text, i) => {
      const td = tr.insertCell();
      td.textContent = text;
      if (i === 1) td.className = "op-" + op.op;
      if (i === 2) { td.className = "path"; td.title = op.path; }
      if (i >= 3) td.className = "num";
    });
  }
}

function draw(s) {
  $("dest").textContent = s.dest;
  $("files").textContent = count(s.replica_files) + (s.replica_files === 1 ? " file" : " files");
  $("bytes").textContent = human(s.replica_bytes) + " after the last full pass";
  $("free").textContent = s.free_bytes == null ? "unknown" : human(s.free_bytes);
  $("clients").textContent = s.connected_clients + (s.connected_clients === 1 ? " client" : " clients");
  $("sessions").textContent = count(s.sessions) + " sessions, " + count(s.passes) + " passes served";
  $("ago").textContent = ago(s.last_change);
  $("last").textContent = s.last_change ? new Date(s.last_change).toLocaleString("en-GB") : "nothing changed yet";
  $("received").textContent = human(s.bytes_received);
  $("saved").textContent = human(s.bytes_saved_by_dedup) + " saved by dedup";
  $("speed").textContent = human(s.transfer_bytes_per_second) + "/s now";
  drawChart(s.throughput || []);
  drawOps(s.recent || []);
  const st = $("state");
  const busy = s.connected_clients > 0;
  st.className = "state" + (busy ? "" : " idle");
  st.innerHTML = '<span class="dot"></span>';
  st.append((busy ? "serving" : "waiting for clients") + " · up " + Math.floor(s.uptime_seconds / 60) + " min · updated " + new Date().toLocaleTimeString("en-GB", { hour12: false }));
  document.body.dataset.loaded = "yes";
}

async function poll() {
  try {
    const r = await fetch("/status", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    draw(await r.json());
  } catch (e) {
    const st = $("state");
    st.className = "state bad";
    st.innerHTML = '<span class="dot"></span>';
    st.append("server unreachable (" + e.message + "); retrying");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
