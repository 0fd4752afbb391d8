// The Live page: fetch the latest picture a few times a second and the door's state twice a second.
// Everything else in the console is plain forms; this file only keeps the Live page current.
"use strict";

(function () {
  const page = document.getElementById("live-page");
  if (!page) return;
  const img = document.getElementById("live");
  const interval = 1000 / Math.max(0.2, parseFloat(page.dataset.fps) || 4);
  let lastUrl = null;

  function text(id, value, cls) {
    const el = document.getElementById(id);
    if (!el) return;
    el.textContent = value;
    if (cls !== undefined) el.className = cls;
  }

  async function nextFrame() {
    try {
      const answer = await fetch("/live/frame.jpg", { cache: "no-store", credentials: "same-origin" });
      if (answer.status === 401) { location.href = "/login"; return; }
      if (answer.ok) {
        const frame = answer.headers.get("X-Frame");
        if (frame !== img.dataset.frame) {
          const url = URL.createObjectURL(await answer.blob());
          img.src = url;
          img.dataset.frame = frame;
          if (lastUrl) URL.revokeObjectURL(lastUrl);
          lastUrl = url;
        }
      }
    } catch (e) { /* the door restarts or the network blinks: try again */ }
    setTimeout(nextFrame, interval);
  }

  function showCapture(capture) {
    const box = document.getElementById("capture");
    const start = document.getElementById("capture-start");
    if (!capture) { box.hidden = true; start.hidden = false; return; }
    const running = capture.state === "collecting" || capture.state === "enrolling";
    box.hidden = false;
    box.dataset.state = capture.state;
    start.hidden = running;
    document.getElementById("capture-cancel").hidden = capture.state !== "collecting";
    document.getElementById("capture-progress").value = capture.good;
    document.getElementById("capture-progress").max = capture.wanted;
    const advice = capture.state === "collecting" ? capture.advice + " (" + capture.good + " of " + capture.wanted + ")"
      : capture.state === "enrolling" ? "checking and enrolling " + capture.name + "…" : "";
    text("capture-advice", advice);
    text("capture-message", capture.message);
  }

  function showDecisions(decisions) {
    const list = document.getElementById("decisions");
    list.replaceChildren();
    if (!decisions.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "none yet";
      list.append(li);
    }
    for (const d of decisions) {
      const li = document.createElement("li");
      li.dataset.event = d.event;
      li.dataset.label = d.label || "";
      const when = new Date(d.time).toLocaleTimeString();
      li.textContent = when + "  " + d.event + (d.label ? ": " + d.label : "") + (d.reason ? " (" + d.reason + ")" : "");
      list.append(li);
    }
  }

  async function nextState() {
    try {
      const answer = await fetch("/live/state.json", { cache: "no-store", credentials: "same-origin" });
      if (answer.status === 401) { location.href = "/login"; return; }
      if (answer.ok) {
        const s = await answer.json();
        text("lock", s.lock, s.lock === "unlocked" ? "open" : "good");
        text("cloud", s.cloud, s.cloud === "reachable" ? "good" : "bad");
        text("broker", s.broker, s.broker === "connected" ? "good" : "bad");
        text("camera", s.camera, s.camera === "ok" ? "good" : "bad");
        text("face", s.face);
        if (s.false_open) text("false-open", s.false_open + " (" + s.enrolled + " enrolled)");
        showDecisions(s.decisions);
        showCapture(s.capture);
      }
    } catch (e) { /* try again */ }
    setTimeout(nextState, 500);
  }

  nextFrame();
  nextState();
})();
