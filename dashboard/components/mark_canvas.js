// The review canvas. Every mark stays in the browser as a list of drawing operations in image
// coordinates, kept per image ("doc"); each change sends the lists of every image Python has not
// confirmed yet, each under its doc, so a mark always lands on the image it was drawn on, however
// fast the reviewer moves on and however the page reruns meanwhile. The component keeps one key for
// the whole queue: its state is never dropped because the page opened another image.
// Data from Python only initialises an image's marks (after a reload, from the server-side draft) or
// changes the picture and the settings. Another image is shown only once its picture has loaded and
// no stroke is in progress: until then, whatever is drawn belongs to the image on the screen.
//
// The operations and the rule that turns them into pixels (a pixel belongs to a shape when its
// centre lies inside it) mirror dashboard/masks.py's apply_ops exactly: what the page shows is what
// the mask file gets.

const STORE = (window.__hitlMarkCanvas ||= {
  marks: new Map(),   // doc -> {ops, revision, undone}: survives a remount of the element
  tool: localStorage.getItem("hitl-tool") || "grid",
  target: localStorage.getItem("hitl-target") || "forbidden",
  brush: Number(localStorage.getItem("hitl-brush")) || 2,
  active: null,       // the view now on the page (hotkeys and the leave warning go to it)
});
const COLORS = { forbidden: [230, 30, 30], relevant: [20, 170, 70] };
const TOOLS = [
  ["grid", "Squares", "G", "Click a square to mark it, click it again to unmark it."],
  ["rect", "Rectangle", "R", "Drag a rectangle."],
  ["brush", "Brush", "B", "Paint with the mouse; [ and ] change its size."],
  ["eraser", "Eraser", "E", "Paint over marks to remove them; [ and ] change its size."],
];
const TARGETS = [
  ["forbidden", "must NOT use", "1", "What the model must not rely on (a ruler, a text label, a border)."],
  ["relevant", "should use", "2",
    "What the model should rely on. Under the default penalty everything outside green marks then " +
    "counts as must-not-use for this image."],
];
const MIN_RADIUS = 0.71;
const BRUSH_SIZES = [1, 16];
const ZOOMS = [1, 32];
const COMMAND_KEYS = { ArrowRight: "next", ArrowLeft: "previous", n: "next", p: "previous", s: "skip",
  w: "wrong_label", m: "mark", Enter: "done" };
const KEY_HELP = [
  ["← →  or  P N", "previous / next image"],
  ["Enter", "next image nobody answered"],
  ["G R B E", "tool: squares, rectangle, brush, eraser"],
  ["1  2", "red: must not use / green: should use"],
  ["[  ]", "brush and eraser smaller / larger"],
  ["Z  or  Ctrl+Z", "undo"],
  ["Ctrl+Y  Ctrl+Shift+Z", "redo"],
  ["Y", "mark the yellow outline (where the model looks most)"],
  ["+  −  0", "zoom in / out / whole image (or the mouse wheel)"],
  ["Space + drag", "move the zoomed image (or drag with the middle button)"],
  ["hold O", "the image as it is, without saliency and marks"],
  ["S  W  M", "skip / the label is wrong / mark regions"],
  ["Ctrl+Enter", "send all answers"],
  ["?", "show or hide this list"],
];

export default function (component) {
  const { parentElement, data } = component;
  let view = parentElement.__hitlView;
  if (!view) view = parentElement.__hitlView = new MarkCanvas(parentElement);
  view.update(data, component.setStateValue, component.setTriggerValue);
  // keys go to the canvas on the page: while the page reruns, a previous element may linger
  if (!STORE.active?.root.isConnected || STORE.active !== view && view.root.isConnected) STORE.active = view;
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
        <span class="gap"></span>
        <button data-do="help" title="All the keys (?)">?</button>
      </div>
      <div class="stage"><canvas tabindex="0" aria-label="the image: draw on it"></canvas></div>
      <div class="keyhelp" hidden role="dialog" aria-label="keys">
        <b>Keys</b> <small>(? or Esc closes)</small><button data-do="closehelp" aria-label="close">×</button>
        <table>${KEY_HELP.map(([k, v]) => `<tr><th>${k}</th><td>${v}</td></tr>`).join("")}</table>
      </div>
      <div class="bar">
        <button data-do="undo" title="Undo the last mark (Z or Ctrl+Z)">Undo <kbd>Z</kbd></button>
        <button data-do="redo" title="Redo what Undo took back (Ctrl+Shift+Z or Ctrl+Y)">Redo</button>
        <button data-do="clear" title="Remove every mark on this image (undo brings them back)">Clear</button>
        <button data-do="suggested" title="Mark what the dashed yellow outline holds (where the model looks most) as what the model must not use (Y)">Mark outline</button>
        <button data-do="original" title="Hold to see the image without saliency and marks (hold O)">Original</button>
        <span class="gap"></span>
        <span class="size" title="Brush and eraser size in image pixels ([ smaller, ] larger)">⌀<button data-do="smaller" aria-label="smaller brush">−</button><output class="brush-size"></output><button data-do="bigger" aria-label="larger brush">+</button></span>
        <span class="gap"></span>
        <span class="zoombox" title="Zoom: + − or the mouse wheel; 0 or a click on the percentage shows the whole image; Space+drag (or the middle button) moves the image"><button data-do="zoomout" aria-label="zoom out">−</button><button data-do="fit" class="zoom" aria-label="whole image"></button><button data-do="zoomin" aria-label="zoom in">+</button></span>
      </div>
      <div class="help"></div>
      <div class="keys">Keys: <kbd>←</kbd><kbd>→</kbd> image · <kbd>G</kbd><kbd>R</kbd><kbd>B</kbd><kbd>E</kbd> tool ·
        <kbd>1</kbd><kbd>2</kbd> red/green · <kbd>Z</kbd> undo · <kbd>+</kbd><kbd>−</kbd> zoom ·
        <kbd>S</kbd> skip · <kbd>W</kbd> wrong label · <kbd>Enter</kbd> next unanswered ·
        <kbd>Ctrl</kbd>+<kbd>Enter</kbd> send · <kbd>Y</kbd> mark outline · hold <kbd>O</kbd> original · <kbd>?</kbd> all keys</div>`;
    this.canvas = root.querySelector("canvas");
    this.stage = root.querySelector(".stage");
    this.ctx = this.canvas.getContext("2d");
    this.help = root.querySelector(".help");
    this.keyhelp = root.querySelector(".keyhelp");
    this.drag = null;
    this.showOriginal = false;
    this.pictures = {};
    this.view = { s: 1, tx: 0, ty: 0 };
    this.scale = 1;  // device pixels of the canvas per image pixel
    root.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => this.setTool(b.dataset.tool)));
    root.querySelectorAll("[data-target]").forEach((b) => b.addEventListener("click", () => this.setTarget(b.dataset.target)));
    const on = (name, f) => root.querySelector(`[data-do=${name}]`).addEventListener("click", f);
    on("undo", () => this.undo());
    on("redo", () => this.redo());
    on("clear", () => this.push({ kind: "clear" }));
    on("suggested", () => this.markSuggested());
    on("smaller", () => this.setBrush(STORE.brush - 1));
    on("bigger", () => this.setBrush(STORE.brush + 1));
    on("zoomin", () => this.zoomBy(1.5));
    on("zoomout", () => this.zoomBy(1 / 1.5));
    on("fit", () => this.setView(1, 0, 0));
    on("help", () => this.toggleHelp());
    on("closehelp", () => this.toggleHelp(false));
    const original = root.querySelector("[data-do=original]");
    original.addEventListener("pointerdown", () => this.setOriginal(true));
    ["pointerup", "pointerleave", "pointercancel"].forEach((e) => original.addEventListener(e, () => this.setOriginal(false)));
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.down(e));
    c.addEventListener("pointermove", (e) => this.move(e));
    c.addEventListener("pointerup", (e) => this.up(e));
    c.addEventListener("pointercancel", (e) => this.up(e));
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    c.addEventListener("auxclick", (e) => e.preventDefault());
    this.stage.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
    new ResizeObserver(() => this.fit()).observe(root);
  }

  // ------------------------------------------------------------------ data from Python

  update(data, setStateValue, setTriggerValue) {
    this.send = setStateValue;
    this.trigger = setTriggerValue;
    this.known = data.known || {};
    this.incoming = data;
    const token = (this.loading = {});
    const pictures = {};
    const loads = ["picture", "original"].map((which) => {
      const current = this.pictures[which];
      if (current?.src === data[which]) return (pictures[which] = current), Promise.resolve();
      const image = (pictures[which] = new Image());
      image.src = data[which];
      return image.decode().catch(() => {});
    });
    // the same image with other settings (saliency, grid): at once; another image: once its
    // picture is there, so nothing is ever drawn on one image while the screen shows another
    if (this.data && this.data.doc === data.doc) {
      this.apply(data, this.pictures);
      Promise.all(loads).then(() => {
        if (this.loading !== token) return;
        this.pictures = pictures;
        this.draw();
      });
    } else {
      Promise.all(loads).then(() => {
        if (this.loading !== token) return;
        this.pending = [data, pictures];
        this.applyPending();
      });
    }
  }

  applyPending() {
    if (!this.pending || this.drag) return;  // never under a stroke: it ends on its own image
    const [data, pictures] = this.pending;
    this.pending = null;
    this.apply(data, pictures);
  }

  apply(data, pictures) {
    const opened = this.data?.doc !== data.doc;
    this.data = data;
    this.pictures = pictures;
    this.canvas.dataset.doc = data.doc;  // which image this is, for tests and tools
    const kept = STORE.marks.get(data.doc);
    if (!kept || kept.revision < data.revision) STORE.marks.set(data.doc, { ops: [...data.ops], revision: data.revision, undone: [] });
    this.w = data.width;
    this.h = data.height;
    this.root.classList.toggle("readonly", !!data.readonly);
    if (opened) {
      this.view = { s: 1, tx: 0, ty: 0 };
      this.sizeKey = null;
      // a proposal opened from the grid below: bring the canvas into view
      if (data.back) document.querySelector("[data-testid=stMain]")?.scrollTo({ top: 0 });
    }
    this.relabel();
    this.refreshBar();
    this.fit();
  }

  get marks() {
    return STORE.marks.get(this.data.doc);
  }

  fit() {
    // as large as the window allows: the image and the tools below it visible without scrolling,
    // whole image pixels on screen where the image is small
    if (!this.data || this.drag) return;  // never resize under the pointer
    const main = document.querySelector("[data-testid=stMain]");
    const stageBox = this.stage.getBoundingClientRect();
    const top = stageBox.top + (main ? main.scrollTop : window.scrollY);
    const below = this.root.getBoundingClientRect().bottom - stageBox.bottom;
    const height = Math.max(320, window.innerHeight - top - below - 12);
    const width = this.root.clientWidth || this.w;
    let k = Math.min(width / this.w, height / this.h);
    if (k >= 2 && Math.floor(k) / k > 0.95) k = Math.floor(k);  // whole screen pixels per image pixel
    const cssW = Math.max(1, Math.floor(this.w * k)), cssH = Math.max(1, Math.floor(this.h * k));
    this.canvas.style.width = `${cssW}px`;
    this.canvas.style.height = `${cssH}px`;
    this.stage.style.width = `${cssW}px`;
    this.stage.style.height = `${cssH}px`;
    const scale = Math.max(1, Math.ceil(k * (window.devicePixelRatio || 1)));
    const key = `${this.w}x${this.h}@${scale}`;
    if (key !== this.sizeKey) {
      this.sizeKey = key;
      this.scale = scale;
      this.canvas.width = this.w * scale;
      this.canvas.height = this.h * scale;
    }
    this.cssSize = [cssW, cssH];
    this.setView(this.view.s, this.view.tx, this.view.ty);
    this.draw();
  }

  // ------------------------------------------------------------------ zoom and pan (the canvas is
  // scaled and moved as a whole: pointer positions go through its on-screen box, so marks stay in
  // image pixels whatever the zoom)

  setView(s, tx, ty) {
    const [W, H] = this.cssSize || [0, 0];
    s = Math.min(Math.max(s, ZOOMS[0]), ZOOMS[1]);
    tx = Math.min(0, Math.max(W * (1 - s), tx));
    ty = Math.min(0, Math.max(H * (1 - s), ty));
    this.view = { s, tx, ty };
    this.canvas.style.transform = s === 1 ? "" : `translate(${tx}px, ${ty}px) scale(${s})`;
    this.root.classList.toggle("zoomed", s > 1);
    const label = this.root.querySelector("button.zoom");
    if (label) label.textContent = `${Math.round(s * 100)}%`;
  }

  zoomBy(factor, px, py) {
    // about a point of the stage (its centre unless the pointer gives one): that point stays put
    const [W, H] = this.cssSize || [0, 0];
    if (px === undefined) [px, py] = [W / 2, H / 2];
    const { s, tx, ty } = this.view;
    const s2 = Math.min(Math.max(s * factor, ZOOMS[0]), ZOOMS[1]);
    this.setView(s2, px - (px - tx) * s2 / s, py - (py - ty) * s2 / s);
  }

  wheel(e) {
    if (!this.data) return;
    e.preventDefault();
    const box = this.stage.getBoundingClientRect();
    this.zoomBy(Math.exp(-e.deltaY * 0.002), e.clientX - box.left, e.clientY - box.top);
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

  setBrush(size) {
    STORE.brush = Math.min(Math.max(Math.round(size), BRUSH_SIZES[0]), BRUSH_SIZES[1]);
    localStorage.setItem("hitl-brush", String(STORE.brush));
    this.refreshBar();
  }

  setOriginal(on) {
    if (this.showOriginal !== on) {
      this.showOriginal = on;
      this.draw();
    }
  }

  toggleHelp(show = this.keyhelp.hidden) {
    this.keyhelp.hidden = !show;
  }

  refreshBar() {
    if (!this.data) return;
    this.root.querySelectorAll("[data-tool]").forEach((b) => b.classList.toggle("on", b.dataset.tool === STORE.tool));
    this.root.querySelectorAll("[data-target]").forEach((b) => {
      b.classList.toggle("on", b.dataset.target === STORE.target);
      b.disabled = STORE.tool === "eraser";
    });
    const readonly = !!this.data.readonly;
    const marks = this.marks;
    this.root.querySelector("output.brush-size").textContent = String(STORE.brush);
    this.root.querySelector(".size").classList.toggle("idle", STORE.tool !== "brush" && STORE.tool !== "eraser");
    this.root.querySelector("[data-do=undo]").disabled = !marks.ops.length || readonly;
    this.root.querySelector("[data-do=redo]").disabled = !marks.undone.length || readonly;
    this.root.querySelector("[data-do=clear]").disabled = !this.labels?.some((v) => v) || readonly;
    this.root.querySelector("[data-do=suggested]").disabled = !this.suggestion().squares.length || readonly;
    this.help.textContent = readonly
      ? "Marks are not sent for this image. Choose Mark regions (M) to draw."
      : TOOLS.find(([id]) => id === STORE.tool)[3] + " " + TARGETS.find(([id]) => id === STORE.target)[3];
  }

  suggestion() {
    const s = this.data.suggested;
    return s && !Array.isArray(s) ? s : { cells: this.data.cells, squares: s || [] };
  }

  // ------------------------------------------------------------------ marks

  push(op, doc = this.data.doc) {
    if (this.data.readonly && doc === this.data.doc) return;
    const marks = STORE.marks.get(doc);
    this.commit(doc, [...marks.ops, op], []);
  }

  undo() {
    const marks = this.marks;
    if (this.data.readonly || !marks.ops.length) return;
    this.commit(this.data.doc, marks.ops.slice(0, -1), [...marks.undone, marks.ops[marks.ops.length - 1]]);
  }

  redo() {
    const marks = this.marks;
    if (this.data.readonly || !marks.undone.length) return;
    this.commit(this.data.doc, [...marks.ops, marks.undone[marks.undone.length - 1]], marks.undone.slice(0, -1));
  }

  markSuggested() {
    const { cells, squares } = this.suggestion();
    if (squares.length) this.push({ kind: "cells", cells, squares, target: "forbidden" });
  }

  commit(doc, ops, undone) {
    const marks = STORE.marks.get(doc);
    STORE.marks.set(doc, { ops, revision: marks.revision + 1, undone });
    if (doc === this.data.doc) {
      this.relabel();
      this.refreshBar();
    }
    this.sendMarks();
  }

  unconfirmed() {
    // the images of this queue whose marks Python has not confirmed (known: doc -> its revision)
    const prefix = this.data.doc.slice(0, this.data.doc.lastIndexOf("|") + 1);
    return [...STORE.marks].filter(([doc, m]) => doc.startsWith(prefix) && m.revision > (this.known[doc] ?? 0));
  }

  sendMarks() {
    const docs = {};
    for (const [doc, m] of this.unconfirmed()) docs[doc] = { ops: m.ops, revision: m.revision };
    if (Object.keys(docs).length) this.send("marks", { docs });
  }

  get unsent() {
    return this.data?.unsent || !!this.labels?.some((v) => v) || this.unconfirmed().length > 0;
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
    if (!this.data) return;
    if (e.button === 1 || (e.button === 0 && STORE.space)) {  // move the image
      e.preventDefault();
      this.canvas.setPointerCapture(e.pointerId);
      this.drag = { kind: "pan", x: e.clientX, y: e.clientY, tx: this.view.tx, ty: this.view.ty, doc: this.data.doc };
      this.root.classList.add("panning");
      return;
    }
    if (e.button !== 0 || this.data.readonly) return;
    e.preventDefault();
    this.canvas.focus({ preventScroll: true });
    this.canvas.setPointerCapture(e.pointerId);
    const [x, y] = this.toImage(e);
    const tool = STORE.tool;
    const doc = this.data.doc;  // the image on the screen now: the mark is its, whatever opens meanwhile
    if (tool === "grid") {
      const [row, col] = cellAt(this.h, this.w, this.data.cells, x, y);
      this.push({ kind: "cell", cells: this.data.cells, row, col, target: STORE.target }, doc);
    } else if (tool === "rect") {
      this.drag = { kind: "rect", x0: x, y0: y, x1: x, y1: y, target: STORE.target, doc };
    } else {
      this.drag = { kind: "stroke", points: [[x, y]], radius: STORE.brush / 2,
        target: tool === "eraser" ? "erase" : STORE.target, doc };
    }
  }

  move(e) {
    const drag = this.drag;
    if (!drag) return;
    if (drag.kind === "pan") {
      this.setView(this.view.s, drag.tx + e.clientX - drag.x, drag.ty + e.clientY - drag.y);
      return;
    }
    const [x, y] = this.toImage(e);
    if (drag.kind === "rect") [drag.x1, drag.y1] = [x, y];
    else drag.points.push([x, y]);
    this.draw();
  }

  up(e) {
    if (!this.drag) return;
    if (this.drag.kind === "pan") {
      this.drag = null;
      this.root.classList.remove("panning");
      return this.applyPending();
    }
    this.move(e);
    const { doc, ...op } = this.drag;
    this.drag = null;
    if (op.kind === "rect" && !rectPixels(this.h, this.w, op).length) this.draw();
    else this.push(op, doc);
    this.applyPending();
  }

  // ------------------------------------------------------------------ picture

  draw() {
    const { ctx, scale } = this;
    if (!this.data) return;
    const picture = this.pictures[this.showOriginal ? "original" : "picture"];
    if (!picture?.complete || !this.labels || this.canvas.width !== this.w * scale) return;
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.drawImage(picture, 0, 0, this.canvas.width, this.canvas.height);
    if (this.showOriginal) return;
    if (STORE.tool === "grid") {
      const ys = gridEdges(this.h, this.data.cells).map((v) => v * scale);
      const xs = gridEdges(this.w, this.data.cells).map((v) => v * scale);
      ctx.strokeStyle = "rgba(255,255,255,0.45)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      xs.slice(1, -1).forEach((x) => { ctx.moveTo(x + 0.5, 0); ctx.lineTo(x + 0.5, this.canvas.height); });
      ys.slice(1, -1).forEach((y) => { ctx.moveTo(0, y + 0.5); ctx.lineTo(this.canvas.width, y + 0.5); });
      ctx.stroke();
    }
    this.drawSuggestion();
    this.drawMarks();
    this.drawDrag();
  }

  drawSuggestion() {
    // the outline of the suggested region (dashed yellow on a dark halo: visible on any colour)
    const { cells, squares } = this.suggestion();
    if (!squares.length) return;
    const inside = new Uint8Array(this.w * this.h);
    for (const i of cellPixels(this.h, this.w, cells, squares)) inside[i] = 1;
    const edges = outline(inside, this.w, this.h, this.scale);
    const { ctx } = this;
    ctx.lineCap = "square";
    ctx.setLineDash([]);
    ctx.strokeStyle = "rgba(0,0,0,0.8)";
    ctx.lineWidth = Math.max(3, this.scale / 3);
    ctx.stroke(edges);
    ctx.strokeStyle = "rgb(255,214,0)";
    ctx.lineWidth = Math.max(1.5, this.scale / 7);
    ctx.setLineDash([Math.max(3, this.scale / 2), Math.max(2, this.scale / 3)]);
    ctx.stroke(edges);
    ctx.setLineDash([]);
  }

  drawMarks() {
    const { ctx, scale, w, h, labels } = this;
    for (const [code, name] of [[1, "forbidden"], [2, "relevant"]]) {
      const [r, g, b] = COLORS[name];
      ctx.fillStyle = `rgba(${r},${g},${b},0.45)`;
      const mine = new Uint8Array(w * h);
      for (let i = 0; i < w * h; i++) if (labels[i] === code) {
        mine[i] = 1;
        ctx.fillRect((i % w) * scale, Math.floor(i / w) * scale, scale, scale);
      }
      const edges = outline(mine, w, h, scale);
      // a dark halo under a bright line: the outline reads on any background, red on red included
      ctx.lineCap = "square";
      ctx.strokeStyle = "rgba(0,0,0,0.85)";
      ctx.lineWidth = Math.max(3, scale / 3);
      ctx.stroke(edges);
      ctx.strokeStyle = name === "forbidden" ? "rgb(255,90,90)" : "rgb(80,255,140)";
      ctx.lineWidth = Math.max(1.5, scale / 7);
      ctx.stroke(edges);
    }
  }

  drawDrag() {
    const { ctx, scale, drag } = this;
    if (!drag || drag.kind === "pan") return;
    const [r, g, b] = drag.target === "erase" ? [255, 255, 255] : COLORS[drag.target];
    ctx.strokeStyle = `rgba(${r},${g},${b},0.8)`;
    if (drag.kind === "rect") {
      ctx.lineWidth = 2;
      ctx.strokeRect(drag.x0 * scale, drag.y0 * scale, (drag.x1 - drag.x0) * scale, (drag.y1 - drag.y0) * scale);
      return;
    }
    ctx.lineWidth = Math.max(2 * MIN_RADIUS, 2 * drag.radius) * scale;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    drag.points.forEach(([x, y], i) => (i ? ctx.lineTo(x * scale, y * scale) : ctx.moveTo(x * scale, y * scale)));
    if (drag.points.length === 1) ctx.lineTo(drag.points[0][0] * scale, drag.points[0][1] * scale);
    ctx.stroke();
  }

  // ------------------------------------------------------------------ keys

  key(e) {
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) return this.command("submit");
    if (e.ctrlKey || e.metaKey) {
      if (k === "z" && e.shiftKey || k === "y") { this.redo(); return true; }
      if (k === "z") { this.undo(); return true; }
      return false;
    }
    if (e.altKey) return false;
    if (e.key === "?") { this.toggleHelp(); return true; }
    if (e.key === "Escape" && !this.keyhelp.hidden) { this.toggleHelp(false); return true; }
    if (e.key === "Escape" && this.data.back) return this.command("back");  // an open proposal: back to the questions
    if (e.key === "+" || e.key === "=") { this.zoomBy(1.5); return true; }
    if (e.key === "-" || e.key === "_") { this.zoomBy(1 / 1.5); return true; }
    if (e.key === "0") { this.setView(1, 0, 0); return true; }
    if (e.key === "[" || e.key === "]") { this.setBrush(STORE.brush + (e.key === "]" ? 1 : -1)); return true; }
    if (k === "z" && e.shiftKey) { this.redo(); return true; }
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

function outline(inside, w, h, scale) {
  // the border of a set of pixels, as a path at ``scale`` canvas pixels per image pixel
  const edges = new Path2D();
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    if (!inside[y * w + x]) continue;
    const X = x * scale, Y = y * scale;
    if (y === 0 || !inside[(y - 1) * w + x]) { edges.moveTo(X, Y); edges.lineTo(X + scale, Y); }
    if (y === h - 1 || !inside[(y + 1) * w + x]) { edges.moveTo(X, Y + scale); edges.lineTo(X + scale, Y + scale); }
    if (x === 0 || !inside[y * w + x - 1]) { edges.moveTo(X, Y); edges.lineTo(X, Y + scale); }
    if (x === w - 1 || !inside[y * w + x + 1]) { edges.moveTo(X + scale, Y); edges.lineTo(X + scale, Y + scale); }
  }
  return edges;
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
// In the capture phase of the window: the keys reach the canvas before any widget of the page (the
// image picker's buttons move their focus ring with the arrows), whatever has the focus, except
// where the reviewer types or adjusts a value (text fields, sliders, lists).

function deepActive() {
  let el = document.activeElement;
  while (el?.shadowRoot?.activeElement) el = el.shadowRoot.activeElement;
  return el;
}

function typing(e) {
  const el = e.composedPath()[0] || deepActive();
  if (!(el instanceof Element)) return false;
  if (el.closest("textarea, select, [contenteditable=''], [contenteditable=true]")) return true;
  if (el.tagName === "INPUT" && !["button", "checkbox", "radio", "submit", "reset", "range"].includes(el.type)) return true;
  return !!el.closest("[role=slider], [role=combobox], [role=listbox], [role=spinbutton], [role=textbox], [role=dialog]:not(.keyhelp)");
}

function keyboardFocusedControl(e) {
  // a button or link the reviewer reached with Tab: Enter and Space keep their usual meaning there
  const el = e.composedPath()[0];
  return el instanceof Element && el.matches("button, a[href], [role=button], [role=tab], [role=radio]") &&
    el.matches(":focus-visible") && el.tagName !== "CANVAS";
}

if (!window.__hitlMarkCanvasListeners) {
  window.__hitlMarkCanvasListeners = true;
  const live = () => (STORE.active && STORE.active.root.isConnected ? STORE.active : null);
  window.addEventListener("keydown", (e) => {
    const view = live();
    if (!view || !view.data || typing(e)) return;
    if (e.key === " ") {
      if (keyboardFocusedControl(e)) return;
      STORE.space = true;
      view.root.classList.add("space");
      e.preventDefault();
      return;
    }
    if (e.repeat && e.key.toLowerCase() === "o") return e.preventDefault();
    if (e.key === "Enter" && !e.ctrlKey && !e.metaKey && keyboardFocusedControl(e)) return;
    if (view.key(e)) {
      e.preventDefault();
      e.stopPropagation();
    }
  }, true);
  window.addEventListener("keyup", (e) => {
    if (e.key.toLowerCase() === "o") live()?.setOriginal(false);
    if (e.key === " ") {
      STORE.space = false;
      live()?.root.classList.remove("space");
    }
  }, true);
  window.addEventListener("resize", () => live()?.fit());
  window.addEventListener("blur", () => {  // a key released elsewhere
    STORE.space = false;
    live()?.setOriginal(false);
  });
  window.addEventListener("beforeunload", (e) => {
    if (live()?.unsent) {
      e.preventDefault();
      e.returnValue = "";
    }
  });
}
