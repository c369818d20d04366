// morphbox device page: status, packs (activate, delete, upload by drag and drop),
// recordings. Talks to the JSON API in device/api/server.py; changes and recordings send
// X-Morphbox-Token.
"use strict";
const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("morphbox-token") || "";
tokenInput.addEventListener("change", () => {
  localStorage.setItem("morphbox-token", tokenInput.value.trim());
  refresh();
});

function say(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
}

const CORNERS = ["NW", "NE", "SW", "SE"];
const corners = (c) => CORNERS.filter((k) => c && k in c).map((k) => `${k}: ${c[k]}`);

function mb(n) { return (n / 1e6).toFixed(1) + " MB"; }

async function call(method, path, body) {
  const headers = { "X-Morphbox-Token": tokenInput.value.trim() };
  const resp = await fetch(path, { method, headers, body });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

async function refresh() {
  try {
    const st = await (await fetch("/api/status")).json();
    $("st-pack").textContent = st.pack + "  (" + st.active + ")";
    $("st-corners").textContent = corners(st.corners).join(" · ");
    const a = st.audio || {};
    $("st-audio").textContent = `${a.audio_device} — ${a.blocks} blocks, ` +
      `${a.late_blocks} late, ${a.xruns} xruns, ${a.errors} errors, ${st.voices} voices`;
    $("st-free").textContent = mb(st.free_bytes) + " (largest upload " +
      mb(st.max_upload_bytes) + ")";
    const packs = await (await fetch("/api/packs")).json();
    const body = document.querySelector("#packs tbody");
    body.replaceChildren(...packs.map((p) => {
      const tr = document.createElement("tr");
      tr.dataset.id = p.id;
      if (p.active) tr.classList.add("active");
      if (p.previous) tr.classList.add("previous");
      const cells = [p.name + (p.builtin ? " (built in)" : ""),
        corners(p.corners).join(", "), p.bytes ? mb(p.bytes) : ""];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      const td = document.createElement("td");
      if (!p.active) {
        const b = document.createElement("button");
        b.textContent = "Activate";
        b.className = "activate";
        b.onclick = () => act("POST", `/api/packs/${p.id}/activate`, `${p.name} is playing`);
        td.append(b);
        if (!p.builtin) {
          const d = document.createElement("button");
          d.textContent = "Delete";
          d.className = "delete";
          d.onclick = () => act("DELETE", `/api/packs/${p.id}`, `${p.name} deleted`);
          td.append(d);
        }
      }
      tr.append(td);
      return tr;
    }));
    await listRecordings();
  } catch (e) {
    say("device unreachable: " + e.message, false);
  }
}

// Recordings need the token (someone's playing), so the list and the files are fetched with
// it; a click downloads the file as a blob.
async function listRecordings() {
  const ul = $("recordings");
  const note = (text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  };
  if (!tokenInput.value.trim()) {
    ul.replaceChildren(note("enter the pairing token to list the recordings"));
    return;
  }
  let recs;
  try {
    recs = await call("GET", "/api/recordings");
  } catch (e) {
    ul.replaceChildren(note("recordings: " + e.message));
    return;
  }
  ul.replaceChildren(...(recs.length ? recs : [null]).map((r) => {
    if (!r) return note("no recordings yet");
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = "#";
    a.dataset.name = r.name;
    a.textContent = r.name;
    a.onclick = (ev) => { ev.preventDefault(); download(r.name); };
    li.append(a, ` (${mb(r.bytes)})`);
    return li;
  }));
}

async function recordingBlob(name) {
  const resp = await fetch(`/api/recordings/${encodeURIComponent(name)}`,
    { headers: { "X-Morphbox-Token": tokenInput.value.trim() } });
  if (!resp.ok) {
    const data = await resp.json().catch(() => ({}));
    throw new Error(data.error || `HTTP ${resp.status}`);
  }
  return resp.blob();
}

async function download(name) {
  try {
    const url = URL.createObjectURL(await recordingBlob(name));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    say("download failed: " + e.message, false);
  }
}

async function act(method, path, okText) {
  try {
    await call(method, path);
    say(okText, true);
  } catch (e) {
    say(e.message, false);
  }
  refresh();
}

// The box closes the connection on a refused upload instead of reading the whole file, so
// the token is checked first with a request that has no body: its refusal can be read.
async function upload(file) {
  const bar = $("progress");
  const token = tokenInput.value.trim();
  try {
    const check = await fetch("/api/auth", { headers: { "X-Morphbox-Token": token } });
    if (check.status !== 204) {
      let data = {};
      try { data = await check.json(); } catch (e) { /* not JSON */ }
      say(data.error || `HTTP ${check.status}`, false);
      return;
    }
  } catch (e) {
    say("device unreachable", false);
    return;
  }
  bar.hidden = false;
  bar.value = 0;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/packs?activate=1");
  xhr.setRequestHeader("X-Morphbox-Token", token);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
  xhr.onload = () => {
    bar.hidden = true;
    let data = {};
    try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    if (xhr.status === 201) say(`${file.name} installed and playing (${data.id})`, true);
    else say(data.error || `HTTP ${xhr.status}`, false);
    refresh();
  };
  xhr.onerror = () => {
    bar.hidden = true;
    say("the upload was cut off: the device refused it (too large, busy or stalled) or is " +
        "unreachable", false);
  };
  xhr.send(file);
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const file = e.dataTransfer.files[0];
  if (file) upload(file);
});
$("file").addEventListener("change", (e) => {
  if (e.target.files[0]) upload(e.target.files[0]);
});

refresh();
setInterval(refresh, 2000);
