/* TrailGuard collector v1. Pointer movement, buttons, wheel, scroll, viewport, visibility and
   pointer type only: no keys, no DOM text, no query strings. Wire format: docs/wire-format.md */
(function (root) {
  "use strict";
  var VERSION = 1, K_HELLO = 1, K_FRAME = 2, K_BEACON = 3, K_ACK = 0x81;
  var TAGS = { moves: 1, down: 2, up: 3, wheel: 4, scroll: 5, resize: 6, visibility: 7,
    pointer: 8, account: 9, end: 10 };
  var LAYOUT = { down: "uzzb", up: "uzzb", wheel: "uzzzz", scroll: "uzz", resize: "uuu",
    visibility: "ub", pointer: "ub", account: "us", end: "ub" };
  var POINTERS = { mouse: 0, pen: 1, touch: 2 };

  function Writer() { this.b = []; }
  Writer.prototype.u = function (v) {
    while (v >= 128) { this.b.push((v % 128) | 128); v = Math.floor(v / 128); }
    this.b.push(v);
  };
  Writer.prototype.z = function (v) { this.u(v < 0 ? -2 * v - 1 : 2 * v); };
  Writer.prototype.byte = function (v) { this.b.push(v & 255); };
  Writer.prototype.s = function (str) {
    var e = new TextEncoder().encode(str), i;
    this.u(e.length);
    for (i = 0; i < e.length; i++) this.b.push(e[i]);
  };
  Writer.prototype.raw = function (bytes) {
    for (var i = 0; i < bytes.length; i++) this.b.push(bytes[i]);
  };
  Writer.prototype.out = function () { return new Uint8Array(this.b); };

  function head(kind) { var w = new Writer(); w.byte(VERSION); w.byte(kind); return w; }

  function encodeHello(h) {
    var w = head(K_HELLO), i;
    for (i = 0; i < 32; i += 2) w.byte(parseInt(h.sid.substr(i, 2), 16));
    w.s(h.site); w.s(h.path); w.u(h.vw); w.u(h.vh); w.u(Math.round(h.dpr * 100));
    w.byte(h.pointer); w.s(h.account); w.u(h.started);
    return w.out();
  }

  function encodeFrame(f) {
    var w = head(K_FRAME), i, j, r, lay, m, fn;
    w.u(f.seq); w.u(f.t0); w.z(f.x0); w.z(f.y0);
    for (i = 0; i < f.records.length; i++) {
      r = f.records[i];
      w.byte(TAGS[r[0]]);
      if (r[0] === "moves") {
        w.u(r[1].length);
        for (j = 0; j < r[1].length; j++) { m = r[1][j]; w.u(m[0]); w.z(m[1]); w.z(m[2]); }
      } else {
        lay = LAYOUT[r[0]];
        for (j = 0; j < lay.length; j++) {
          fn = lay[j] === "b" ? "byte" : lay[j];
          w[fn](r[j + 1]);
        }
      }
    }
    return w.out();
  }

  function encodeBeacon(messages) {
    var w = head(K_BEACON), i;
    w.u(messages.length);
    for (i = 0; i < messages.length; i++) { w.u(messages[i].length); w.raw(messages[i]); }
    return w.out();
  }

  function decodeAck(bytes) {
    if (bytes[0] !== VERSION || bytes[1] !== K_ACK) return -1;
    var v = 0, mul = 1, i;
    for (i = 2; i < bytes.length; i++) {
      v += (bytes[i] & 127) * mul; mul *= 128;
      if (bytes[i] < 128) return v;
    }
    return -1;
  }

  var codec = { encodeHello: encodeHello, encodeFrame: encodeFrame,
    encodeBeacon: encodeBeacon, decodeAck: decodeAck };
  if (typeof module === "object" && module.exports) { module.exports = codec; return; }

  var w = root, d = w.document, nav = w.navigator, perf = w.performance;
  var script = d.currentScript;
  if (!script || !w.WebSocket) return;
  var site = script.getAttribute("data-site") || "";
  var interval = +script.getAttribute("data-interval") || 8;
  if (interval < 1) interval = 1;
  var base = new URL(script.src, d.baseURI);
  var httpUrl = base.origin + "/collect";
  var wsUrl = httpUrl.replace(/^http/, "ws");
  var FRAME_MS = 250, MAX_UNACKED = 480, MAX_RUN = 1000;

  var rnd = new Uint8Array(16), sid = "", k;
  w.crypto.getRandomValues(rnd);
  for (k = 0; k < 16; k++) sid += (rnd[k] < 16 ? "0" : "") + rnd[k].toString(16);
  var start = perf.now();
  var hello = { sid: sid, site: site, path: w.location.pathname, vw: w.innerWidth,
    vh: w.innerHeight, dpr: w.devicePixelRatio || 1, pointer: 0, account: "",
    started: Date.now() };

  var seq = 0, frame = null, run = null, lastT = 0, lastX = 0, lastY = 0, lastSample = -1e9;
  var pending = null, unacked = [], ws = null, attempt = 0, stopped = false, ended = false, ptype = "mouse";

  function now(ts) {
    var t = Math.round(((ts === undefined ? perf.now() : ts) - start) * 10);
    return t < lastT ? lastT : t;
  }
  function begin(t, x, y) {
    if (!frame) { frame = { seq: seq++, t0: t, x0: x, y0: y, records: [] }; lastT = t; lastX = x; lastY = y; }
  }
  function delta(t, x, y) {
    var out = [t - lastT, x - lastX, y - lastY];
    lastT = t; lastX = x; lastY = y;
    return out;
  }
  // The last move skipped by the interval is kept, so a resting pointer's final position is
  // recorded before a click and at each frame's end.
  function settle() {
    var p = pending;
    pending = null;
    if (p) move(p[0], p[1], p[2]);
  }
  function record(name, t, x, y, rest) {
    settle();
    if (x === undefined) { x = lastX; y = lastY; }
    begin(t, x, y);
    run = null;
    var dl = delta(t, x, y), r = [name, dl[0]];
    if (name === "down" || name === "up" || name === "wheel") r.push(dl[1], dl[2]);
    frame.records.push(r.concat(rest));
  }
  function move(t, x, y) {
    begin(t, x, y);
    if (!run || run.length >= MAX_RUN) { run = []; frame.records.push(["moves", run]); }
    run.push(delta(t, x, y));
  }

  function flush() {
    settle();
    if (!frame) return;
    var bytes = encodeFrame(frame), s = frame.seq;
    frame = null; run = null;
    unacked.push({ seq: s, bytes: bytes });
    if (unacked.length > MAX_UNACKED) unacked.shift();
    if (ws && ws.readyState === 1) ws.send(bytes);
  }

  function connect() {
    if (stopped) return;
    ws = new w.WebSocket(wsUrl);
    ws.binaryType = "arraybuffer";
    ws.onopen = function () {
      attempt = 0;
      ws.send(encodeHello(hello));
      for (var i = 0; i < unacked.length; i++) ws.send(unacked[i].bytes);
    };
    ws.onmessage = function (e) {
      var s = decodeAck(new Uint8Array(e.data)), i;
      for (i = 0; i < unacked.length; i++) if (unacked[i].seq === s) { unacked.splice(i, 1); break; }
    };
    ws.onclose = function (e) {
      ws = null;
      // 4xxx, 1003, 1007, 1009: the server rejected our data; retrying would only repeat it.
      if ((e.code >= 4000 && e.code < 5000) || e.code === 1003 || e.code === 1009) stopped = true;
      if (stopped || ended) return;
      var delay = Math.min(30000, 500 * Math.pow(2, attempt++));
      setTimeout(connect, delay / 2 + Math.random() * delay / 2);
    };
  }

  // Browsers allow ~64 KB of beacons in flight: send the newest frames that fit.
  function beacon() {
    flush();
    if (!unacked.length || !nav.sendBeacon) return;
    var msgs = [], size = 100, i, b;
    for (i = unacked.length - 1; i >= 0; i--) {
      b = unacked[i].bytes;
      if (size + b.length + 3 > 60000) break;
      msgs.unshift(b); size += b.length + 3;
    }
    msgs.unshift(encodeHello(hello));
    nav.sendBeacon(httpUrl, encodeBeacon(msgs));
  }

  function pointerType(t, type) {
    if (type && type !== ptype && POINTERS[type] !== undefined) {
      ptype = type; hello.pointer = POINTERS[type];
      record("pointer", t, undefined, undefined, [POINTERS[type]]);
    }
  }
  function onMove(e) {
    var list = e.getCoalescedEvents ? e.getCoalescedEvents() : [], i, ev, t, cur;
    if (!list.length) list = [e];
    pointerType(now(e.timeStamp), e.pointerType);
    for (i = 0; i < list.length; i++) {
      ev = list[i];
      t = ev.timeStamp - start;
      cur = [now(ev.timeStamp), Math.round(ev.clientX), Math.round(ev.clientY)];
      if (t - lastSample < interval) { pending = cur; continue; }
      if (pending && cur[0] - pending[0] >= interval * 10) settle();
      pending = cur;
      lastSample = t;
      settle();
    }
  }
  function onButton(name) {
    return function (e) {
      if (e.button > 2) return;
      pointerType(now(e.timeStamp), e.pointerType);
      record(name, now(e.timeStamp), Math.round(e.clientX), Math.round(e.clientY), [e.button]);
    };
  }
  var opts = { passive: true, capture: true };
  if (w.PointerEvent) {
    w.addEventListener("pointermove", onMove, opts);
    w.addEventListener("pointerdown", onButton("down"), opts);
    w.addEventListener("pointerup", onButton("up"), opts);
  } else {
    w.addEventListener("mousemove", onMove, opts);
    w.addEventListener("mousedown", onButton("down"), opts);
    w.addEventListener("mouseup", onButton("up"), opts);
  }
  w.addEventListener("wheel", function (e) {
    record("wheel", now(e.timeStamp), Math.round(e.clientX), Math.round(e.clientY),
      [Math.round(e.deltaX), Math.round(e.deltaY)]);
  }, opts);
  w.addEventListener("scroll", function () {
    record("scroll", now(), undefined, undefined, [Math.round(w.scrollX), Math.round(w.scrollY)]);
  }, opts);
  w.addEventListener("resize", function () {
    hello.vw = w.innerWidth; hello.vh = w.innerHeight;
    record("resize", now(), undefined, undefined, [w.innerWidth, w.innerHeight]);
  }, opts);
  d.addEventListener("visibilitychange", function () {
    var visible = d.visibilityState === "visible";
    record("visibility", now(), undefined, undefined, [visible ? 1 : 0]);
    if (!visible) beacon();
  }, opts);
  w.addEventListener("pagehide", function () {
    if (ended) return;
    ended = true;
    record("end", now(), undefined, undefined, [0]);
    beacon();
    if (ws && ws.readyState === 1) ws.close(1000);
  }, opts);

  function command(c) {
    if (!c || !c.length) return;
    var id = c[0] === "identify" && c[1] != null ? String(c[1]).slice(0, 200) : "";
    if (id && id !== hello.account) {
      hello.account = id;
      if (ws || frame || seq) record("account", now(), undefined, undefined, [hello.account]);
    } else if (c[0] === "sessionId" && typeof c[1] === "function") {
      c[1](sid);
    }
  }
  var queue = w.trailguard || [];
  w.trailguard = { push: command, sessionId: sid };
  for (k = 0; k < queue.length; k++) command(queue[k]);
  w.setInterval(flush, FRAME_MS);
  connect();
})(typeof window !== "undefined" ? window : this);
