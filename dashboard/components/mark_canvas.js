// The review canvas. Every mark stays in the browser as a list of drawing operations in image
// coordinates; each change sends the whole list (with a revision number) to Python, so however fast
// the reviewer draws, and however the page reruns meanwhile, the last message holds every mark.
// The canvas is never replaced while an image is open: data from Python only initialises it (after a
// reload, from the server-side draft) or changes the picture and the settings.
//
// The operations and the rule that turns them into pixels (a pixel belongs to a shape when its
// centre lies inside it) mirror dashboard/masks.py's apply_ops exactly: what the page shows is what
// the mask file gets.

const STORE = (window.__hitlMarkCanvas ||= {
  marks: new Map(),   // doc -> {ops, revision}: survives a remount of the element
  tool: localStorage.getItem("hitl-tool") || "grid",
  target: localStorage.getItem("hitl-target") || "forbidden",
  active: null,       // the view now on the page (hotkeys and the leave warning go to it)
});
const COLORS = { forbidden: [230, 30, 30], relevant: [20, 170, 70] };
const TOOLS = [
  ["grid", "Squares", "G", "Click a square to mark it, click it again to unmark it."],
  ["rect", "Rectangle", "R", "Drag a rectangle."],
  ["brush", "Brush", "B", "Paint with the mouse."],
  ["eraser", "Eraser", "E", "Paint over marks to remove them."],
];
const TARGETS = [
  ["forbidden", "must NOT use", "1", "What the model must not rely on (a ruler, a text label, a border)."],
  ["relevant", "should use", "2",
    "What the model should rely on. Under the default penalty everything outside green marks then " +
    "counts as must-not-use for this image."],
];
const MIN_RADIUS = 0.71;
const COMMAND_KEYS = { ArrowRight: "next", ArrowLeft: "previous", n: "next", p: "previous", s: "skip",
  w: "wrong_label", m: "mark", Enter: "done" };

export default function (component) {
  const { parentElement, data } = component;
  let view = parentElement.__hitlView;
  if (!view) view = parentElement.__hitlView = new MarkCanvas(parentElement);
  const opened = view.data?.doc !== data.doc;
  view.update(data, component.setStateValue, component.setTriggerValue);
  // keys go to the image opened last: while the page reruns, the previous image's element may
  // linger (and be updated) until Streamlit removes it
  if (opened || !STORE.active?.root.isConnected) STORE.active = view;
}

class MarkCanvas {
  constructor(parent) {
    // the parent may be a shadow root: everything lives in a wrapper element of ours
    const root = (this.root = document.createElement("div"));
    root.className = "mark-canvas";
    parent.appendChild(root);
    root.innerHTML = `
      <div class="bar" role="toolbar">
        ${TOOLS.map(([id, name, key, help]) =>
          `<button data-tool="${id}" title="${help} (${key})">${name}</button>`).join("")}
        <span class="gap"></span>
        ${TARGETS.map(([id, name, key, help]) =>
          `<button data-target="${id}" title="${help} (${key})"><i class="swatch ${id}"></i>${name}</button>`).join("")}
      </div>
      <div class="stage"><canvas tabindex="0" aria-label="the image: draw on it"></canvas></div>
      <div class="bar">
        <button data-do="undo" title="Undo the last mark (Z or Ctrl+Z)">Undo <kbd>Z</kbd></button>
        <button data-do="clear" title="Remove every mark on this image (undo brings them back)">Clear</button>
        <button data-do="suggested" title="Mark the outlined squares as what the model must not use (Y)">Mark the yellow squares <kbd>Y</kbd></button>
        <button data-do="original" title="Hold to see the image without saliency and marks (hold O)">Original <kbd>O</kbd></button>
      </div>
      <div class="help"></div>
      <div class="keys">Keys: <kbd>←</kbd><kbd>→</kbd> image · <kbd>G</kbd><kbd>R</kbd><kbd>B</kbd><kbd>E</kbd> tool ·
        <kbd>1</kbd><kbd>2</kbd> red/green · <kbd>Z</kbd> undo · hold <kbd>O</kbd> original ·
        <kbd>S</kbd> skip · <kbd>W</kbd> wrong label · <kbd>M</kbd> mark · <kbd>Enter</kbd> next unanswered ·
        <kbd>Ctrl</kbd>+<kbd>Enter</kbd> send</div>`;
    this.canvas = root.querySelector("canvas");
    this.ctx = this.canvas.getContext("2d");
    this.help = root.querySelector(".help");
    this.drag = null;
    this.showOriginal = false;
    this.pictures = {};
    root.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => this.setTool(b.dataset.tool)));
    root.querySelectorAll("[data-target]").forEach((b) => b.addEventListener("click", () => this.setTarget(b.dataset.target)));
    root.querySelector("[data-do=undo]").addEventListener("click", () => this.undo());
    root.querySelector("[data-do=clear]").addEventListener("click", () => this.push({ kind: "clear" }));
    root.querySelector("[data-do=suggested]").addEventListener("click", () => this.markSuggested());
    const original = root.querySelector("[data-do=original]");
    original.addEventListener("pointerdown", () => this.setOriginal(true));
    ["pointerup", "pointerleave", "pointercancel"].forEach((e) => original.addEventListener(e, () => this.setOriginal(false)));
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.down(e));
    c.addEventListener("pointermove", (e) => this.move(e));
    c.addEventListener("pointerup", (e) => this.up(e));
    c.addEventListener("pointercancel", (e) => this.up(e));
    c.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  update(data, setStateValue, setTriggerValue) {
    this.send = setStateValue;
    this.trigger = setTriggerValue;
    this.data = data;
    this.canvas.dataset.doc = data.doc;  // which image this is, for tests and tools
    const kept = STORE.marks.get(data.doc);
    this.marks = kept && kept.revision >= data.revision ? kept : { ops: [...data.ops], revision: data.revision };
    STORE.marks.set(data.doc, this.marks);
    this.w = data.width;
    this.h = data.height;
    this.zoom = Math.max(1, Math.ceil(data.display_width / this.w));
    this.canvas.width = this.w * this.zoom;
    this.canvas.height = this.h * this.zoom;
    this.canvas.style.maxWidth = `min(100%, ${data.display_width}px)`;
    this.root.classList.toggle("readonly", !!data.readonly);
    for (const which of ["picture", "original"]) {
      if (this.pictures[which]?.src !== data[which]) {
        const image = new Image();
        image.onload = () => this.draw();
        image.src = data[which];
        this.pictures[which] = image;
      }
    }
    this.relabel();
    this.refreshBar();
    requestAnimationFrame(() => this.fit());
  }

  fit() {
    // as large as the window allows: the image and the tools below it visible without scrolling
    if (this.drag) return;  // never resize under the pointer
    const main = document.querySelector("[data-testid=stMain]");
    const canvasBox = this.canvas.getBoundingClientRect();
    const top = canvasBox.top + (main ? main.scrollTop : window.scrollY);
    const below = this.root.getBoundingClientRect().bottom - canvasBox.bottom;
    this.canvas.style.maxHeight = `${Math.max(320, Math.floor(window.innerHeight - top - below - 12))}px`;
  }

  // ------------------------------------------------------------------ tools

  setTool(tool) {
    STORE.tool = tool;
    localStorage.setItem("hitl-tool", tool);
    this.refreshBar();
    this.draw();
  }

  setTarget(target) {
    STORE.target = target;
    localStorage.setItem("hitl-target", target);
    this.refreshBar();
  }

  setOriginal(on) {
    if (this.showOriginal !== on) {
      this.showOriginal = on;
      this.draw();
    }
  }

  refreshBar() {
    this.root.querySelectorAll("[data-tool]").forEach((b) => b.classList.toggle("on", b.dataset.tool === STORE.tool));
    this.root.querySelectorAll("[data-target]").forEach((b) => {
      b.classList.toggle("on", b.dataset.target === STORE.target);
      b.disabled = STORE.tool === "eraser";
    });
    this.root.querySelector("[data-do=undo]").disabled = !this.marks.ops.length || this.data.readonly;
    this.root.querySelector("[data-do=clear]").disabled = !this.labels.some((v) => v) || this.data.readonly;
    this.root.querySelector("[data-do=suggested]").disabled = !this.data.suggested.length || this.data.readonly;
    this.help.textContent = this.data.readonly
      ? "Marks are not sent for this image. Choose Mark regions (M) to draw."
      : TOOLS.find(([id]) => id === STORE.tool)[3] + " " + TARGETS.find(([id]) => id === STORE.target)[3];
  }

  // ------------------------------------------------------------------ marks

  push(op) {
    if (this.data.readonly) return;
    this.commit([...this.marks.ops, op]);
  }

  undo() {
    if (this.data.readonly || !this.marks.ops.length) return;
    this.commit(this.marks.ops.slice(0, -1));
  }

  markSuggested() {
    if (this.data.suggested.length)
      this.push({ kind: "cells", cells: this.data.cells, squares: this.data.suggested, target: "forbidden" });
  }

  commit(ops) {
    this.marks = { ops, revision: this.marks.revision + 1 };
    STORE.marks.set(this.data.doc, this.marks);
    this.relabel();
    this.refreshBar();
    this.send("marks", this.marks);
  }

  get unsent() {
    return this.data.unsent || this.labels.some((v) => v);
  }

  relabel() {
    // 0 nothing, 1 must not use, 2 should use: the fold of masks.apply_ops
    const labels = new Uint8Array(this.w * this.h);
    for (const op of this.marks.ops) {
      let target = op.target || "forbidden";
      let pixels;
      if (op.kind === "clear") { labels.fill(0); continue; }
      if (op.kind === "cell") {
        pixels = cellPixels(this.h, this.w, op.cells, [[op.row, op.col]]);
        const code = target === "forbidden" ? 1 : 2;
        if (target !== "erase" && pixels.every((i) => labels[i] === code)) target = "erase";
      } else if (op.kind === "cells") pixels = cellPixels(this.h, this.w, op.cells, op.squares);
      else if (op.kind === "rect") pixels = rectPixels(this.h, this.w, op);
      else if (op.kind === "stroke") pixels = strokePixels(this.h, this.w, op.points, op.radius);
      else continue;
      const value = target === "erase" ? 0 : target === "forbidden" ? 1 : 2;
      for (const i of pixels) labels[i] = value;
    }
    this.labels = labels;
    this.draw();
  }

  // ------------------------------------------------------------------ pointer

  toImage(e) {
    const box = this.canvas.getBoundingClientRect();
    return [(e.clientX - box.left) / box.width * this.w, (e.clientY - box.top) / box.height * this.h];
  }

  down(e) {
    if (e.button !== 0 || this.data.readonly) return;
    e.preventDefault();
    this.canvas.focus({ preventScroll: true });
    this.canvas.setPointerCapture(e.pointerId);
    const [x, y] = this.toImage(e);
    const tool = STORE.tool;
    if (tool === "grid") {
      const [row, col] = cellAt(this.h, this.w, this.data.cells, x, y);
      this.push({ kind: "cell", cells: this.data.cells, row, col, target: STORE.target });
    } else if (tool === "rect") {
      this.drag = { kind: "rect", x0: x, y0: y, x1: x, y1: y, target: STORE.target };
    } else {
      this.drag = { kind: "stroke", points: [[x, y]], radius: this.data.brush / 2,
        target: tool === "eraser" ? "erase" : STORE.target };
    }
  }

  move(e) {
    if (!this.drag) return;
    const [x, y] = this.toImage(e);
    if (this.drag.kind === "rect") [this.drag.x1, this.drag.y1] = [x, y];
    else this.drag.points.push([x, y]);
    this.draw();
  }

  up(e) {
    if (!this.drag) return;
    this.move(e);
    const op = this.drag;
    this.drag = null;
    if (op.kind === "rect" && !rectPixels(this.h, this.w, op).length) return this.draw();
    this.push(op);
  }

  // ------------------------------------------------------------------ picture

  draw() {
    const { ctx, zoom } = this;
    const picture = this.pictures[this.showOriginal ? "original" : "picture"];
    if (!picture?.complete || !this.labels) return;
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.drawImage(picture, 0, 0, this.canvas.width, this.canvas.height);
    if (this.showOriginal) return;
    const ys = gridEdges(this.h, this.data.cells).map((v) => v * zoom);
    const xs = gridEdges(this.w, this.data.cells).map((v) => v * zoom);
    if (STORE.tool === "grid") {
      ctx.strokeStyle = "rgba(255,255,255,0.45)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      xs.slice(1, -1).forEach((x) => { ctx.moveTo(x + 0.5, 0); ctx.lineTo(x + 0.5, this.canvas.height); });
      ys.slice(1, -1).forEach((y) => { ctx.moveTo(0, y + 0.5); ctx.lineTo(this.canvas.width, y + 0.5); });
      ctx.stroke();
    }
    ctx.strokeStyle = "rgb(255,200,0)";
    ctx.lineWidth = 2;
    for (const [r, c] of this.data.suggested) ctx.strokeRect(xs[c] + 2, ys[r] + 2, xs[c + 1] - xs[c] - 4, ys[r + 1] - ys[r] - 4);
    this.drawMarks();
    this.drawDrag();
  }

  drawMarks() {
    const { ctx, zoom, w, h, labels } = this;
    for (const [code, name] of [[1, "forbidden"], [2, "relevant"]]) {
      const [r, g, b] = COLORS[name];
      ctx.fillStyle = `rgba(${r},${g},${b},0.45)`;
      const edges = new Path2D();
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
        if (labels[y * w + x] !== code) continue;
        ctx.fillRect(x * zoom, y * zoom, zoom, zoom);
        const X = x * zoom, Y = y * zoom;
        if (y === 0 || labels[(y - 1) * w + x] !== code) { edges.moveTo(X, Y); edges.lineTo(X + zoom, Y); }
        if (y === h - 1 || labels[(y + 1) * w + x] !== code) { edges.moveTo(X, Y + zoom); edges.lineTo(X + zoom, Y + zoom); }
        if (x === 0 || labels[y * w + x - 1] !== code) { edges.moveTo(X, Y); edges.lineTo(X, Y + zoom); }
        if (x === w - 1 || labels[y * w + x + 1] !== code) { edges.moveTo(X + zoom, Y); edges.lineTo(X + zoom, Y + zoom); }
      }
      // a dark halo under a bright line: the outline reads on any background, red on red included
      ctx.lineCap = "square";
      ctx.strokeStyle = "rgba(0,0,0,0.85)";
      ctx.lineWidth = Math.max(3, zoom / 3);
      ctx.stroke(edges);
      ctx.strokeStyle = name === "forbidden" ? "rgb(255,90,90)" : "rgb(80,255,140)";
      ctx.lineWidth = Math.max(1.5, zoom / 7);
      ctx.stroke(edges);
    }
  }

  drawDrag() {
    const { ctx, zoom, drag } = this;
    if (!drag) return;
    const [r, g, b] = drag.target === "erase" ? [255, 255, 255] : COLORS[drag.target];
    ctx.strokeStyle = `rgba(${r},${g},${b},0.8)`;
    if (drag.kind === "rect") {
      ctx.lineWidth = 2;
      ctx.strokeRect(drag.x0 * zoom, drag.y0 * zoom, (drag.x1 - drag.x0) * zoom, (drag.y1 - drag.y0) * zoom);
      return;
    }
    ctx.lineWidth = Math.max(2 * MIN_RADIUS, 2 * drag.radius) * zoom;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    drag.points.forEach(([x, y], i) => (i ? ctx.lineTo(x * zoom, y * zoom) : ctx.moveTo(x * zoom, y * zoom)));
    if (drag.points.length === 1) ctx.lineTo(drag.points[0][0] * zoom, drag.points[0][1] * zoom);
    ctx.stroke();
  }

  // ------------------------------------------------------------------ keys

  key(e) {
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) return this.command("submit");
    if (e.ctrlKey || e.metaKey || e.altKey) {
      if (k === "z") { this.undo(); return true; }
      return false;
    }
    const tool = { g: "grid", r: "rect", b: "brush", e: "eraser" }[k];
    if (tool) { this.setTool(tool); return true; }
    if (k === "1" || k === "2") { this.setTarget(k === "1" ? "forbidden" : "relevant"); return true; }
    if (k === "z" || k === "u") { this.undo(); return true; }
    if (k === "y") { this.markSuggested(); return true; }
    if (k === "o") { this.setOriginal(true); return true; }
    if (COMMAND_KEYS[k]) return this.command(COMMAND_KEYS[k]);
    return false;
  }

  command(name) {
    // the image it is meant for and a number used once: Python acts on each key press exactly once,
    // and only for the image it was pressed on
    STORE.sequence = (STORE.sequence || Date.now()) + 1;
    this.trigger("command", { name, doc: this.data.doc, sequence: STORE.sequence });
    return true;
  }
}

// ---------------------------------------------------------------------- pixels (masks.py's rules)

function roundHalfEven(v) {
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function gridEdges(length, cells) {
  const n = Math.min(cells, length);
  const step = length / n;
  return Array.from({ length: n + 1 }, (_, i) => (i === n ? length : roundHalfEven(i * step)));
}

function searchRight(edges, v) {
  let i = 0;
  while (i < edges.length && edges[i] <= v) i++;
  return i;
}

function cellAt(h, w, cells, x, y) {
  const ys = gridEdges(h, cells), xs = gridEdges(w, cells);
  const clip = (v, hi) => Math.min(Math.max(v, 0), hi);
  return [clip(searchRight(ys, y) - 1, ys.length - 2), clip(searchRight(xs, x) - 1, xs.length - 2)];
}

function cellPixels(h, w, cells, squares) {
  const ys = gridEdges(h, cells), xs = gridEdges(w, cells);
  const out = [];
  for (const [r, c] of squares)
    for (let y = ys[r]; y < ys[r + 1]; y++) for (let x = xs[c]; x < xs[c + 1]; x++) out.push(y * w + x);
  return out;
}

function rectPixels(h, w, { x0, y0, x1, y1 }) {
  const out = [];
  const [lx, hx, ly, hy] = [Math.min(x0, x1), Math.max(x0, x1), Math.min(y0, y1), Math.max(y0, y1)];
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const cx = x + 0.5, cy = y + 0.5;
    if (cx >= lx && cx < hx && cy >= ly && cy < hy) out.push(y * w + x);
  }
  return out;
}

function strokePixels(h, w, points, radius) {
  radius = Math.max(radius, MIN_RADIUS);
  const out = new Set();
  const segments = points.length > 1 ? points.slice(1).map((p, i) => [points[i], p]) : points.map((p) => [p, p]);
  for (const [[ax, ay], [bx, by]] of segments) {
    const dx = bx - ax, dy = by - ay, length2 = dx * dx + dy * dy;
    const [x0, x1] = [Math.max(0, Math.floor(Math.min(ax, bx) - radius - 1)), Math.min(w, Math.ceil(Math.max(ax, bx) + radius + 1))];
    const [y0, y1] = [Math.max(0, Math.floor(Math.min(ay, by) - radius - 1)), Math.min(h, Math.ceil(Math.max(ay, by) + radius + 1))];
    for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) {
      const cx = x + 0.5, cy = y + 0.5;
      const t = length2 === 0 ? 0 : Math.min(Math.max(((cx - ax) * dx + (cy - ay) * dy) / length2, 0), 1);
      const ex = cx - ax - t * dx, ey = cy - ay - t * dy;
      if (ex * ex + ey * ey <= radius * radius) out.add(y * w + x);
    }
  }
  return [...out];
}

// ---------------------------------------------------------------------- page-wide listeners, once

if (!window.__hitlMarkCanvasListeners) {
  window.__hitlMarkCanvasListeners = true;
  const live = () => (STORE.active && STORE.active.root.isConnected ? STORE.active : null);
  const typing = (e) => e.target.closest?.("input, textarea, select, [contenteditable=true]") ||
    e.composedPath().some((el) => el.tagName === "INPUT" || el.tagName === "TEXTAREA");
  document.addEventListener("keydown", (e) => {
    const view = live();
    if (!view || e.repeat && e.key.toLowerCase() === "o" || typing(e)) return;
    if (view.key(e)) e.preventDefault();
  });
  document.addEventListener("keyup", (e) => {
    if (e.key.toLowerCase() === "o") live()?.setOriginal(false);
  });
  window.addEventListener("resize", () => live()?.fit());
  window.addEventListener("blur", () => live()?.setOriginal(false));  // a key released elsewhere
  window.addEventListener("beforeunload", (e) => {
    if (live()?.unsent) {
      e.preventDefault();
      e.returnValue = "";
    }
  });
}
