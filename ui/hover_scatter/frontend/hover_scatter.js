/*
 * Frontend of ui/hover_scatter: scatter panels drawn on a 2-D canvas, a photo tooltip on hover.
 *
 * Why a renderer of our own rather than plotly.js: these maps need markers, hover, click, box and lasso
 * selection, zoom, pan, a legend and a colour bar, nothing else, and plotly.js (even its 1.6 MB gl2d bundle)
 * cost a new tab 0.26 s to evaluate and 0.3-0.4 s to draw two 1,360-point panels in headless Chromium on the
 * project's 2-core machine, which kept the Explorer above its 1.5 s goal (issue 14). This file draws both
 * panels in a few milliseconds, 100,000 points in ~30 ms (each marker style rendered once, then stamped per
 * point into one pixel buffer: see stampFrom), and finds the hovered point through a grid index instead of
 * testing every point.
 *
 * Speaks Streamlit's v1 component protocol by postMessage (no build step, no npm). Hover is handled
 * here entirely (no round trip); only clicks and box/lasso selections go back to Python, as
 * {event, points: [{customdata: [row]}], seq} (core.maps.projection.selection_to_rows reads them).
 * Every string from Python (class names, file names, titles) is shown through textContent, so it
 * always shows as literal text. window.hoverScatter exposes hooks for browser tests (see the package
 * docstring).
 */
"use strict";
(function () {
  const LATENCY_SAMPLES = 200;
  const TOOLTIP_OFFSET = 14;
  const HOVER_PX = 20; // the nearest point this close to the pointer is hovered (plotly's default hoverdistance)
  const HIGHLIGHT_RADIUS = 8; // half the star marker: anywhere on a star means that star
  const POINT_PX = 6; // marker diameters, as the plotly figures had them
  const STAR_PX = 15;
  const SELECTED_RING_PX = 13;
  const POINT_OPACITY = 0.85; // overlapping points stay readable as density
  const TITLE_PX = 24; // the title line above each plot (see .panel-title)
  const PLOT_MARGIN_PX = 8; // inside the canvas around the plot area: more than half a star, so edge stars show whole
  const AUTORANGE_PAD = 0.03; // of the data's span on each side, so the outermost markers clear the margin
  const CLICK_SLOP_PX = 4; // a press that moves less than this is a click, not a drag
  const WHEEL_ZOOM_RATE = 0.0015; // per wheel delta pixel: one notch (100 px) zooms by ~14 %
  const DOUBLE_CLICK_MS = 300; // a second legend click this soon isolates the class instead (plotly's delay)
  const COLOUR_STEPS = 64; // per-point values are drawn in this many shades: more is invisible on 6 px dots
  const GRID_POINTS_PER_CELL = 8; // hover index density: a query visits a handful of cells of ~8 points
  const PREFETCH_PARALLEL = 4; // sheets fetched at once (of the browser's 6 connections a host)
  const SHEET_RETRY_MS = 3000; // a missing sheet is asked for again on a hover this long after it failed
  // Plotly's (matplotlib's) Viridis stops: perceptually uniform and readable by colour-blind users.
  const COLOUR_SCALES = {
    Viridis: ["#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e", "#26828e", "#21918c",
      "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219", "#fde725"],
  };
  const MODES = [
    // [mode, label, what the button says on hover]
    ["zoom", "zoom", "Drag a box to zoom in; the wheel zooms too; double-click resets"],
    ["pan", "pan", "Drag to move the map"],
    ["select", "box", "Drag a box to select its photos"],
    ["lasso", "lasso", "Draw round the photos to select"],
  ];

  const state = {
    renderKey: null,
    spec: null,
    panels: [], // see buildPanel
    selected: [], // rows from Python (selected_rows), ringed in every panel that shows them
    selectedKey: "",
    mode: "zoom", // shared by all panels, so both maps answer a drag the same way
    background: "#ffffff",
    ringColour: "#111111",
    hidden: new Set(), // legend names toggled off, shared by all panels, kept across reruns
    sheets: [], // {url, bytes, status: "idle" | "loading" | "ok" | "error", image}
    tipRow: null,
    hoverPanel: null,
    ready: false,
    latencies: [],
    drawTimes: [], // {panel, points, ms} per canvas redraw (first draw, zoom, pan, legend, selection)
    backgroundWord: null,
    sprites: new Map(),
    drag: null,
  };

  const tip = document.getElementById("tooltip");
  const tipThumb = tip.querySelector(".thumb");
  const tipClass = tip.querySelector(".cls");
  const tipFile = tip.querySelector(".file");
  const tipPrediction = tip.querySelector(".pred");
  const statusLine = document.getElementById("status");

  function sendToStreamlit(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data), "*");
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function applyTheme(theme) {
    state.background = (theme && theme.backgroundColor) || "#ffffff";
    state.backgroundWord = null; // backgroundWord() reads it again
    state.ringColour = (theme && theme.textColor) || "#111111"; // contrasts with the background in any theme
    if (!theme) return;
    const root = document.documentElement.style;
    if (theme.textColor) root.setProperty("--text", theme.textColor);
    if (theme.backgroundColor) root.setProperty("--background", theme.backgroundColor);
    if (theme.backgroundColor) root.setProperty("--tooltip-background", theme.backgroundColor);
    if (theme.font) document.body.style.fontFamily = theme.font;
  }

  // ---- colours and marker sprites -----------------------------------------------------------------

  function hexToRgb(hex) {
    const value = parseInt(hex.slice(1), 16);
    return [(value >> 16) & 255, (value >> 8) & 255, value & 255];
  }

  // The colour at t in [0, 1] of a named scale, linearly between its evenly spaced stops.
  function scaleColour(stops, t) {
    const position = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const low = Math.floor(position);
    const high = Math.min(stops.length - 1, low + 1);
    const a = hexToRgb(stops[low]);
    const b = hexToRgb(stops[high]);
    const mix = (i) => Math.round(a[i] + (b[i] - a[i]) * (position - low));
    return "rgb(" + mix(0) + ", " + mix(1) + ", " + mix(2) + ")";
  }

  // One stamp per (symbol, colour, pixel ratio): the marker is drawn once on a small canvas and read back as
  // pixels (stampFrom), so drawing a point is then only blending those pixels (blend).
  function sprite(symbol, colour) {
    const ratio = window.devicePixelRatio || 1;
    const key = symbol + "|" + colour + "|" + ratio;
    const known = state.sprites.get(key);
    if (known) return known;
    const diameter = symbol === "star" ? STAR_PX : symbol === "ring" ? SELECTED_RING_PX : POINT_PX;
    const size = diameter + 4; // room for outlines
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = Math.ceil(size * ratio);
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.translate(size / 2, size / 2);
    const r = diameter / 2;
    if (symbol === "circle") {
      ctx.globalAlpha = POINT_OPACITY;
      ctx.fillStyle = colour;
      ctx.beginPath();
      ctx.arc(0, 0, r, 0, 2 * Math.PI);
      ctx.fill();
    } else if (symbol === "x") {
      ctx.globalAlpha = POINT_OPACITY;
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.lineCap = "round";
      ctx.beginPath();
      ctx.moveTo(-r, -r);
      ctx.lineTo(r, r);
      ctx.moveTo(r, -r);
      ctx.lineTo(-r, r);
      ctx.stroke();
    } else if (symbol === "star") {
      ctx.beginPath();
      for (let i = 0; i < 10; i += 1) {
        const radius = i % 2 ? r * 0.45 : r;
        const angle = -Math.PI / 2 + (i * Math.PI) / 5;
        ctx.lineTo(radius * Math.cos(angle), radius * Math.sin(angle));
      }
      ctx.closePath();
      ctx.fillStyle = colour;
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#111111";
      ctx.stroke();
    } else {
      ctx.lineWidth = 2;
      ctx.strokeStyle = colour;
      ctx.beginPath();
      ctx.arc(0, 0, r - 1, 0, 2 * Math.PI);
      ctx.stroke();
    }
    const made = stampFrom(canvas);
    state.sprites.set(key, made);
    return made;
  }

  // A canvas as a stamp: its non-transparent pixels' offsets and premultiplied colours. Blending stamps into one
  // pixel buffer and writing it with a single putImageData is ~10x faster than a drawImage per point where the
  // canvas is drawn in software (no GPU, as in headless Chromium): 100,000 points took ~270 ms a redraw that way,
  // too slow to zoom or pan smoothly.
  function stampFrom(canvas) {
    const width = canvas.width;
    const height = canvas.height;
    const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
    const offsets = [];
    const colours = []; // per pixel: r, g, b premultiplied by alpha, then 1 - alpha (what shows through)
    for (let y = 0; y < height; y += 1) {
      for (let x = 0; x < width; x += 1) {
        const alpha = data[(y * width + x) * 4 + 3] / 255;
        if (alpha === 0) continue;
        offsets.push(x, y);
        for (let c = 0; c < 3; c += 1) colours.push(data[(y * width + x) * 4 + c] * alpha);
        colours.push(1 - alpha);
      }
    }
    return { width: width, height: height, offsets: Int16Array.from(offsets), colours: Float32Array.from(colours) };
  }

  // Per point: the stamp it is drawn with (its symbol, and its shade when the trace carries values).
  function traceStamps(trace, colourBar) {
    if (trace.highlight) return () => sprite("star", trace.colour);
    const stops = trace.values && colourBar ? COLOUR_SCALES[colourBar.scale] || COLOUR_SCALES.Viridis : null;
    const span = colourBar ? colourBar.high - colourBar.low : 0;
    const shades = stops
      ? Array.from({ length: COLOUR_STEPS }, (unused, i) => scaleColour(stops, i / (COLOUR_STEPS - 1)))
      : null;
    return (i) => {
      const symbol = trace.correct && !trace.correct[i] ? "x" : "circle";
      if (!shades) return sprite(symbol, trace.colour);
      const t = span > 0 ? (trace.values[i] - colourBar.low) / span : 0.5;
      return sprite(symbol, shades[Math.round(Math.min(1, Math.max(0, t)) * (COLOUR_STEPS - 1))]);
    };
  }

  // ---- panels ---------------------------------------------------------------------------------------

  function autorange(values) {
    let low = Infinity;
    let high = -Infinity;
    for (const value of values) {
      if (value < low) low = value;
      if (value > high) high = value;
    }
    if (!Number.isFinite(low)) return [-1, 1];
    const span = high - low || Math.abs(low) || 1; // one point, or all on a line: still a visible range
    return [low - span * AUTORANGE_PAD - (high === low ? span / 2 : 0), high + span * AUTORANGE_PAD + (high === low ? span / 2 : 0)];
  }

  // The points of all traces in flat arrays (drawn in trace order: later traces on top), and a grid over
  // the data's whole range for hover: built once per spec, valid at any zoom.
  function indexPoints(panel, traces, colourBar) {
    const n = traces.reduce((total, trace) => total + trace.rows.length, 0);
    panel.xs = new Float64Array(n);
    panel.ys = new Float64Array(n);
    panel.rowOf = new Int32Array(n);
    panel.traceOf = new Int32Array(n);
    panel.stampOf = new Array(n);
    let at = 0;
    panel.traces = traces.map((trace, traceIndex) => {
      const stampFor = traceStamps(trace, colourBar);
      const start = at;
      trace.rows.forEach((row, i) => {
        panel.xs[at] = trace.x[i];
        panel.ys[at] = trace.y[i];
        panel.rowOf[at] = row;
        panel.traceOf[at] = traceIndex;
        panel.stampOf[at] = stampFor(i);
        if (!panel.positions.has(row)) panel.positions.set(row, at);
        if (trace.highlight) panel.highlighted.push(at);
        at += 1;
      });
      return { name: trace.name, colour: trace.colour, highlight: trace.highlight, start: start, end: at };
    });
    const [x0, x1] = autorange(panel.xs);
    const [y0, y1] = autorange(panel.ys);
    panel.full = { x0: x0, x1: x1, y0: y0, y1: y1 };
    panel.view = Object.assign({}, panel.full);
    const cells = Math.max(1, Math.min(512, Math.ceil(Math.sqrt(n / GRID_POINTS_PER_CELL))));
    const cellOf = new Int32Array(n);
    const counts = new Int32Array(cells * cells + 1);
    const column = (x) => Math.min(cells - 1, Math.floor(((x - x0) / (x1 - x0)) * cells));
    const line = (y) => Math.min(cells - 1, Math.floor(((y - y0) / (y1 - y0)) * cells));
    for (let i = 0; i < n; i += 1) {
      cellOf[i] = line(panel.ys[i]) * cells + column(panel.xs[i]);
      counts[cellOf[i] + 1] += 1;
    }
    for (let c = 0; c < cells * cells; c += 1) counts[c + 1] += counts[c]; // counts[c]: first item of cell c
    const items = new Int32Array(n);
    const filled = counts.slice(0, cells * cells);
    for (let i = 0; i < n; i += 1) items[filled[cellOf[i]]++] = i;
    panel.grid = { cells: cells, start: counts, items: items, column: column, line: line };
  }

  // One set of tools for all panels, at the top of the legend column: the mode is shared, so both maps answer a
  // drag alike, and the titles keep their whole width.
  function buildToolbar() {
    const bar = element("div", "toolbar");
    for (const [mode, label, hint] of MODES) {
      const button = element("button", "tool", label);
      button.type = "button";
      button.title = hint;
      button.dataset.mode = mode;
      button.setAttribute("aria-pressed", String(state.mode === mode));
      button.addEventListener("click", () => setMode(mode));
      bar.append(button);
    }
    const reset = element("button", "tool", "reset");
    reset.type = "button";
    reset.title = "Show every map whole again (double-click a map: that one)";
    reset.addEventListener("click", () => state.panels.forEach(resetView));
    bar.append(reset);
    return bar;
  }

  // Every name of every panel, once, in order of first appearance: with predictions coloured, one map may show a
  // class the other's run never predicts, and it must still be possible to hide it.
  function buildLegend(panels, spec) {
    const legend = element("div", "legend");
    legend.style.height = spec.height + "px";
    legend.append(buildToolbar());
    const seen = new Set();
    const entries = panels.flatMap((panel) => panel.traces).filter((trace) => !seen.has(trace.name) && seen.add(trace.name));
    for (const trace of entries) {
      const item = element("div", "item");
      item.tabIndex = 0;
      item.setAttribute("role", "button");
      item.dataset.name = trace.name;
      item.classList.toggle("off", state.hidden.has(trace.name)); // hidden classes stay hidden across reruns
      item.title = "Click: hide or show this class in every map. Double-click: only this class.";
      const swatch = element("span", trace.highlight ? "swatch star" : "swatch");
      if (trace.highlight) swatch.textContent = "\u2605";
      swatch.style.color = trace.colour;
      if (!trace.highlight) swatch.style.backgroundColor = trace.colour;
      item.append(swatch, element("span", "name", trace.name));
      item.addEventListener("click", () => legendClicked(trace.name));
      item.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          toggleName(trace.name);
        }
      });
      legend.append(item);
    }
    const panel = panels.find((each) => each.colourBar && each.hasValues); // every panel has the same scale
    const bar = panel ? panel.colourBar : null;
    if (bar) {
      const box = element("div", "colour-bar");
      const stops = COLOUR_SCALES[bar.scale] || COLOUR_SCALES.Viridis;
      const gradient = element("div", "gradient");
      gradient.style.background = "linear-gradient(to top, " + stops.join(", ") + ")";
      const ticks = element("div", "ticks");
      [bar.high, (bar.low + bar.high) / 2, bar.low].forEach((value) => ticks.append(element("span", "", formatTick(value))));
      const scale = element("div", "scale");
      scale.append(gradient, ticks);
      box.append(element("div", "bar-title", bar.title), scale);
      legend.append(box);
    }
    return legend;
  }

  function formatTick(value) {
    return Math.abs(value) >= 1000 || (value !== 0 && Math.abs(value) < 0.01) ? value.toExponential(1) : String(Number(value.toPrecision(3)));
  }

  function buildPanel(container, specPanel, index, spec) {
    const last = index === spec.panels.length - 1;
    const column = element("div", last ? "panel with-legend" : "panel");
    // textContent keeps the title literal text; a long one is cut with an ellipsis.
    const plotColumn = element("div", "plot-column");
    const wrap = element("div", "plot");
    wrap.style.height = spec.height - TITLE_PX + "px";
    const canvas = element("canvas", "points");
    const overlay = element("canvas", "overlay"); // the zoom box or the lasso being drawn
    const ring = element("div", "ring");
    ring.hidden = true;
    wrap.append(canvas, overlay, ring);
    plotColumn.append(element("div", "panel-title", specPanel.title), wrap);
    column.append(plotColumn);
    container.append(column);

    const panel = {
      index: index,
      column: column,
      wrap: wrap,
      canvas: canvas,
      overlay: overlay,
      ring: ring,
      colourBar: specPanel.colourBar,
      hasValues: specPanel.traces.some((trace) => Boolean(trace.values)),
      positions: new Map(), // row -> index of its point (a row is one point per panel)
      highlighted: [], // point indices of the highlighted (uploaded) images
      marked: [], // selected rows drawn with a ring
      width: 0,
      height: spec.height - TITLE_PX,
      drawQueued: false,
    };
    indexPoints(panel, specPanel.traces, specPanel.colourBar);
    listen(panel);
    panel.resizeObserver = new ResizeObserver(() => {
      if (sizeCanvas(panel)) draw(panel);
    });
    return panel;
  }

  // Matches the canvases to their column (CSS px x device pixel ratio); true when the size changed.
  function sizeCanvas(panel) {
    const width = panel.wrap.clientWidth;
    const ratio = window.devicePixelRatio || 1;
    if (width === panel.width && ratio === panel.ratio) return false;
    panel.width = width;
    panel.ratio = ratio;
    for (const canvas of [panel.canvas, panel.overlay]) {
      canvas.width = Math.max(1, Math.round(width * ratio));
      canvas.height = Math.max(1, Math.round(panel.height * ratio));
      canvas.style.width = width + "px";
      canvas.style.height = panel.height + "px";
    }
    panel.area = {
      left: PLOT_MARGIN_PX,
      top: PLOT_MARGIN_PX,
      width: Math.max(1, width - 2 * PLOT_MARGIN_PX),
      height: Math.max(1, panel.height - 2 * PLOT_MARGIN_PX),
    };
    hideHover(); // points moved under the rings
    return true;
  }

  function render(spec, digest, selected, theme) {
    const renderKey = digest + JSON.stringify(theme || {});
    if (renderKey === state.renderKey) {
      setSelected(selected); // a rerun with the same data keeps zoom and sheets
      return;
    }
    state.renderKey = renderKey;
    state.selected = selected;
    state.selectedKey = selected.join(",");
    state.ready = false;
    delete document.body.dataset.ready;
    state.spec = spec;
    applyTheme(theme);
    hideHover();
    sendToStreamlit("streamlit:setFrameHeight", { height: spec.height });
    const container = document.getElementById("panels");
    state.panels.forEach((panel) => panel.resizeObserver.disconnect());
    container.replaceChildren();
    resetSheets(spec.thumbs);
    prefetchSheets(); // first: the photos download while the panels are indexed and drawn
    state.panels = spec.panels.map((panel, index) => buildPanel(container, panel, index, spec));
    state.panels[state.panels.length - 1].column.append(buildLegend(state.panels, spec));
    // Sized and drawn once every column is in the page, so each canvas takes its own column's width; the
    // observers redraw when Streamlit later resizes the frame.
    state.panels.forEach((panel) => {
      sizeCanvas(panel);
      markSelected(panel);
      draw(panel);
      panel.resizeObserver.observe(panel.wrap);
    });
    state.ready = true;
    document.body.dataset.ready = "true";
    performance.mark("hover-scatter-drawn"); // for the bench's timelines
  }

  function showError(error) {
    statusLine.textContent = "The scatter plot could not be drawn: " + (error && error.message ? error.message : error);
  }

  // ---- drawing --------------------------------------------------------------------------------------

  function scales(panel) {
    const view = panel.view;
    const area = panel.area;
    return { sx: area.width / (view.x1 - view.x0), sy: area.height / (view.y1 - view.y0), view: view, area: area };
  }

  // Pixel position of point i inside the panel's canvas (CSS px), whether or not it is in view.
  function pixelOf(panel, i, s) {
    s = s || scales(panel);
    return { x: s.area.left + (panel.xs[i] - s.view.x0) * s.sx, y: s.area.top + (s.view.y1 - panel.ys[i]) * s.sy };
  }

  function inArea(panel, position) {
    const area = panel.area;
    return position.x >= area.left && position.x <= area.left + area.width && position.y >= area.top && position.y <= area.top + area.height;
  }

  function visible(panel, i) {
    return !state.hidden.has(panel.traces[panel.traceOf[i]].name);
  }

  function queueDraw(panel) {
    if (panel.drawQueued) return;
    panel.drawQueued = true;
    requestAnimationFrame(() => draw(panel));
  }

  // Blends a stamp onto the buffer with its top-left pixel at (left, top); pixels outside clip are left alone.
  function blend(pixels, rowWidth, clip, left, top, stamp) {
    const inside = left >= clip.x0 && top >= clip.y0 && left + stamp.width <= clip.x1 && top + stamp.height <= clip.y1;
    const offsets = stamp.offsets;
    const colours = stamp.colours;
    for (let k = 0, n = offsets.length / 2; k < n; k += 1) {
      const x = left + offsets[2 * k];
      const y = top + offsets[2 * k + 1];
      if (!inside && (x < clip.x0 || y < clip.y0 || x >= clip.x1 || y >= clip.y1)) continue;
      const i = (y * rowWidth + x) * 4;
      const keep = colours[4 * k + 3];
      pixels[i] = colours[4 * k] + pixels[i] * keep; // Uint8ClampedArray rounds and clamps
      pixels[i + 1] = colours[4 * k + 1] + pixels[i + 1] * keep;
      pixels[i + 2] = colours[4 * k + 2] + pixels[i + 2] * keep;
    }
  }

  // The background as one 32-bit pixel of the buffer (RGBA bytes, read as a little-endian word as on every
  // platform browsers run on), whatever CSS colour the theme gives.
  function backgroundWord() {
    const probe = document.createElement("canvas").getContext("2d");
    probe.fillStyle = state.background;
    probe.fillRect(0, 0, 1, 1);
    const [r, g, b] = probe.getImageData(0, 0, 1, 1).data;
    return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
  }

  function draw(panel) {
    const started = performance.now();
    panel.drawQueued = false;
    const ctx = panel.canvas.getContext("2d");
    const width = panel.canvas.width;
    const height = panel.canvas.height;
    if (!panel.frame || panel.frame.width !== width || panel.frame.height !== height) {
      panel.frame = ctx.createImageData(width, height);
      panel.words = new Uint32Array(panel.frame.data.buffer);
    }
    state.backgroundWord = state.backgroundWord || backgroundWord();
    panel.words.fill(state.backgroundWord);
    const pixels = panel.frame.data;
    const ratio = panel.ratio;
    const s = scales(panel);
    const area = s.area;
    // Device pixels; zoomed in, points past the plot area's edge are cut there.
    const clip = {
      x0: Math.round(area.left * ratio),
      y0: Math.round(area.top * ratio),
      x1: Math.round((area.left + area.width) * ratio),
      y1: Math.round((area.top + area.height) * ratio),
    };
    const reach = STAR_PX; // points just outside the area still show their part inside it
    for (const trace of panel.traces) {
      if (state.hidden.has(trace.name)) continue;
      for (let i = trace.start; i < trace.end; i += 1) {
        const x = area.left + (panel.xs[i] - s.view.x0) * s.sx;
        const y = area.top + (s.view.y1 - panel.ys[i]) * s.sy;
        if (x < area.left - reach || x > area.left + area.width + reach || y < area.top - reach || y > area.top + area.height + reach) continue;
        const stamp = panel.stampOf[i];
        blend(pixels, width, clip, Math.round(x * ratio - stamp.width / 2), Math.round(y * ratio - stamp.height / 2), stamp);
      }
    }
    const ring = sprite("ring", state.ringColour);
    for (const row of panel.marked) {
      const position = pixelOf(panel, panel.positions.get(row), s);
      blend(pixels, width, clip, Math.round(position.x * ratio - ring.width / 2), Math.round(position.y * ratio - ring.height / 2), ring);
    }
    ctx.putImageData(panel.frame, 0, 0);
    state.drawTimes.push({ panel: panel.index, points: panel.rowOf.length, ms: performance.now() - started });
    if (state.drawTimes.length > LATENCY_SAMPLES) state.drawTimes.shift();
  }

  function drawOverlay(panel) {
    const ctx = panel.overlay.getContext("2d");
    ctx.setTransform(panel.ratio, 0, 0, panel.ratio, 0, 0);
    ctx.clearRect(0, 0, panel.width, panel.height);
    const drag = state.drag;
    if (!drag || drag.panel !== panel || !drag.moved) return;
    ctx.lineWidth = 1;
    ctx.strokeStyle = state.ringColour;
    ctx.fillStyle = "rgba(128, 128, 128, 0.15)";
    ctx.setLineDash(drag.mode === "zoom" ? [] : [4, 3]);
    ctx.beginPath();
    if (drag.mode === "lasso") {
      drag.path.forEach((point, i) => (i ? ctx.lineTo(point.x, point.y) : ctx.moveTo(point.x, point.y)));
      ctx.closePath();
    } else {
      const box = dragBox(drag);
      ctx.rect(box.left, box.top, box.right - box.left, box.bottom - box.top);
    }
    ctx.fill();
    ctx.stroke();
  }

  // ---- view: zoom, pan, reset ---------------------------------------------------------------------

  function setView(panel, view) {
    panel.view = view;
    hideHover(); // zoom and pan move the points under the rings
    queueDraw(panel);
  }

  function resetView(panel) {
    setView(panel, Object.assign({}, panel.full));
  }

  function zoomAt(panel, position, factor) {
    const s = scales(panel);
    const x = s.view.x0 + (position.x - s.area.left) / s.sx;
    const y = s.view.y1 - (position.y - s.area.top) / s.sy;
    const v = s.view;
    setView(panel, { x0: x - (x - v.x0) * factor, x1: x + (v.x1 - x) * factor, y0: y - (y - v.y0) * factor, y1: y + (v.y1 - y) * factor });
  }

  // A zoom box thinner than the slop in one direction zooms the other axis only, as in plotly.
  function zoomToBox(panel, box) {
    const s = scales(panel);
    const v = s.view;
    const next = Object.assign({}, v);
    if (box.right - box.left >= CLICK_SLOP_PX) {
      next.x0 = v.x0 + (box.left - s.area.left) / s.sx;
      next.x1 = v.x0 + (box.right - s.area.left) / s.sx;
    }
    if (box.bottom - box.top >= CLICK_SLOP_PX) {
      next.y1 = v.y1 - (box.top - s.area.top) / s.sy;
      next.y0 = v.y1 - (box.bottom - s.area.top) / s.sy;
    }
    setView(panel, next);
  }

  function panBy(panel, start, dx, dy) {
    const s = scales(panel);
    const shiftX = dx / s.sx;
    const shiftY = dy / s.sy;
    setView(panel, { x0: start.x0 - shiftX, x1: start.x1 - shiftX, y0: start.y0 + shiftY, y1: start.y1 + shiftY });
  }

  function setMode(mode) {
    state.mode = mode;
    document.querySelectorAll(".tool[data-mode]").forEach((button) => {
      button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
    });
    document.body.dataset.mode = mode;
  }

  // ---- pointer input -------------------------------------------------------------------------------

  function localPosition(panel, event) {
    const box = panel.canvas.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  }

  function dragBox(drag) {
    return {
      left: Math.min(drag.start.x, drag.now.x),
      right: Math.max(drag.start.x, drag.now.x),
      top: Math.min(drag.start.y, drag.now.y),
      bottom: Math.max(drag.start.y, drag.now.y),
    };
  }

  function listen(panel) {
    const canvas = panel.overlay; // on top of the points canvas, so it receives the pointer
    canvas.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      canvas.setPointerCapture(event.pointerId);
      const position = localPosition(panel, event);
      state.drag = { panel: panel, mode: state.mode, start: position, now: position, path: [position], moved: false, view: panel.view };
    });
    canvas.addEventListener("pointermove", (event) => {
      const drag = state.drag;
      const position = localPosition(panel, event);
      if (!drag || drag.panel !== panel) {
        onHover(panel, position, event);
        return;
      }
      drag.now = position;
      drag.moved = drag.moved || Math.hypot(position.x - drag.start.x, position.y - drag.start.y) >= CLICK_SLOP_PX;
      if (!drag.moved) return;
      hideHover();
      if (drag.mode === "pan") panBy(panel, drag.view, position.x - drag.start.x, position.y - drag.start.y);
      else {
        if (drag.mode === "lasso") drag.path.push(position);
        drawOverlay(panel);
      }
    });
    canvas.addEventListener("pointerup", (event) => {
      const drag = state.drag;
      if (!drag || drag.panel !== panel) return;
      state.drag = null;
      drawOverlay(panel);
      if (!drag.moved) {
        clicked(panel, drag.start, event);
      } else if (drag.mode === "zoom") {
        zoomToBox(panel, dragBox(drag));
      } else if (drag.mode === "select") {
        sendEvent("select", rowsInBox(panel, dragBox(drag)));
      } else if (drag.mode === "lasso") {
        sendEvent("select", rowsInPolygon(panel, drag.path));
      }
    });
    canvas.addEventListener("pointercancel", () => {
      state.drag = null;
      drawOverlay(panel);
    });
    canvas.addEventListener("pointerleave", () => {
      if (!state.drag) hideHover();
    });
    canvas.addEventListener("dblclick", () => {
      resetView(panel);
      if (state.mode === "select" || state.mode === "lasso") sendEvent("select", []); // as plotly: also deselects
    });
    canvas.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault(); // the wheel zooms the map instead of scrolling the page
        const pixels = event.deltaMode === 1 ? event.deltaY * 16 : event.deltaY;
        zoomAt(panel, localPosition(panel, event), Math.exp(pixels * WHEEL_ZOOM_RATE));
      },
      { passive: false },
    );
  }

  // A click on a point sends it; a click on empty space in a selection mode clears the selection.
  function clicked(panel, position, event) {
    const i = pointUnder(panel, position);
    if (i >= 0) sendEvent("click", [panel.rowOf[i]]);
    else if (state.mode === "select" || state.mode === "lasso") sendEvent("select", []);
    else onHover(panel, position, event);
  }

  // ---- hit testing ---------------------------------------------------------------------------------

  // The visible point nearest to position within radius px, or -1; the highlighted (uploaded) images the
  // user aims at win within their star, even over a closer small point under it.
  function pointUnder(panel, position, radius) {
    if (!inArea(panel, position)) return -1;
    const s = scales(panel);
    for (const i of panel.highlighted) {
      if (!visible(panel, i)) continue;
      const p = pixelOf(panel, i, s);
      if (Math.hypot(p.x - position.x, p.y - position.y) <= HIGHLIGHT_RADIUS) return i;
    }
    return nearest(panel, position, radius === undefined ? HOVER_PX : radius, -1, s);
  }

  function nearest(panel, position, radius, except, s) {
    const grid = panel.grid;
    const x = s.view.x0 + (position.x - s.area.left) / s.sx;
    const y = s.view.y1 - (position.y - s.area.top) / s.sy;
    const dx = radius / s.sx;
    const dy = radius / s.sy;
    const full = panel.full;
    if (x + dx < full.x0 || x - dx > full.x1 || y + dy < full.y0 || y - dy > full.y1) return -1;
    const c0 = Math.max(0, grid.column(x - dx));
    const c1 = Math.max(0, grid.column(x + dx));
    const l0 = Math.max(0, grid.line(y - dy));
    const l1 = Math.max(0, grid.line(y + dy));
    let best = -1;
    let bestDistance = radius * radius;
    for (let line = l0; line <= l1; line += 1) {
      for (let column = c0; column <= c1; column += 1) {
        const cell = line * grid.cells + column;
        for (let k = grid.start[cell]; k < grid.start[cell + 1]; k += 1) {
          const i = grid.items[k];
          if (i === except || !visible(panel, i)) continue;
          const px = (panel.xs[i] - x) * s.sx;
          const py = (panel.ys[i] - y) * s.sy;
          const distance = px * px + py * py;
          if (distance < bestDistance || (distance === bestDistance && i > best)) {
            best = i; // ties go to the point drawn on top
            bestDistance = distance;
          }
        }
      }
    }
    return best;
  }

  function selectable(panel, test) {
    const s = scales(panel);
    const rows = [];
    for (let i = 0; i < panel.rowOf.length; i += 1) {
      if (!visible(panel, i)) continue;
      const p = pixelOf(panel, i, s);
      if (inArea(panel, p) && test(p)) rows.push(panel.rowOf[i]);
    }
    return rows;
  }

  function rowsInBox(panel, box) {
    return selectable(panel, (p) => p.x >= box.left && p.x <= box.right && p.y >= box.top && p.y <= box.bottom);
  }

  // Even-odd ray casting: a point is inside when a ray from it crosses the outline an odd number of times.
  function rowsInPolygon(panel, path) {
    const xs = path.map((p) => p.x);
    const ys = path.map((p) => p.y);
    const box = { left: Math.min(...xs), right: Math.max(...xs), top: Math.min(...ys), bottom: Math.max(...ys) };
    return selectable(panel, (p) => {
      if (p.x < box.left || p.x > box.right || p.y < box.top || p.y > box.bottom) return false;
      let inside = false;
      for (let i = 0, j = path.length - 1; i < path.length; j = i, i += 1) {
        const a = path[i];
        const b = path[j];
        if (a.y > p.y !== b.y > p.y && p.x < ((b.x - a.x) * (p.y - a.y)) / (b.y - a.y) + a.x) inside = !inside;
      }
      return inside;
    });
  }

  // ---- thumbnails -------------------------------------------------------------------------------

  function resetSheets(thumbs) {
    state.sheets = thumbs.sheets.map((name, i) => ({
      url: thumbs.base + name,
      bytes: thumbs.bytes[i],
      status: "idle",
      image: null,
    }));
  }

  // A sheet still being built in the background (big datasets) answers 404: ask again after a pause.
  function loadSheet(index) {
    const sheet = state.sheets[index];
    if (sheet.status === "error" && performance.now() - sheet.failedAt > SHEET_RETRY_MS) sheet.status = "idle";
    if (sheet.status !== "idle") return sheet;
    sheet.status = "loading";
    const image = new Image();
    image.onload = () => {
      sheet.status = "ok";
      sheetSettled(index);
    };
    image.onerror = () => {
      sheet.status = "error";
      sheet.failedAt = performance.now();
      sheetSettled(index);
    };
    image.src = sheet.url;
    sheet.image = image; // keeping the element keeps the decoded sheet in the memory cache
    return sheet;
  }

  function sheetSettled(index) {
    if (state.tipRow !== null && sheetOf(state.tipRow) === index) setThumb(state.tipRow);
    prefetchSheets();
  }

  // Sheets load in order, a few at a time, until the byte budget is spent; the rest load when hovered. A few, not
  // all: a hovered sheet then never waits behind a long queue of prefetches (20,000 images: 35 sheets in budget).
  function prefetchSheets() {
    if (!state.spec) return;
    let spent = 0;
    let loading = state.sheets.filter((sheet) => sheet.status === "loading").length;
    for (let i = 0; i < state.sheets.length && loading < PREFETCH_PARALLEL; i += 1) {
      const sheet = state.sheets[i];
      spent += sheet.bytes;
      if (spent > state.spec.thumbs.prefetchBytes) return;
      if (sheet.status === "idle") {
        loadSheet(i);
        loading += 1;
      }
    }
  }

  function sheetOf(row) {
    const thumbs = state.spec.thumbs;
    return row < thumbs.n ? Math.floor(row / thumbs.perSheet) : -1;
  }

  function setThumb(row) {
    const thumbs = state.spec.thumbs;
    const style = tipThumb.style;
    style.width = thumbs.px + "px";
    style.height = thumbs.px + "px";
    const inline = thumbs.inline[row];
    if (inline) {
      style.backgroundImage = 'url("' + inline + '")';
      style.backgroundSize = "100% 100%";
      style.backgroundPosition = "0 0";
      tipThumb.dataset.state = "ok";
      return;
    }
    const sheetIndex = sheetOf(row);
    if (sheetIndex < 0) {
      style.backgroundImage = "none";
      tipThumb.dataset.state = "none";
      return;
    }
    const cell = row % thumbs.perSheet;
    const column = cell % thumbs.columns;
    const line = Math.floor(cell / thumbs.columns);
    const sheet = loadSheet(sheetIndex);
    style.backgroundSize = thumbs.columns * thumbs.px + "px auto"; // the last sheet may be shorter
    style.backgroundPosition = -column * thumbs.px + "px " + -line * thumbs.px + "px";
    style.backgroundImage = sheet.status === "ok" ? 'url("' + sheet.url + '")' : "none";
    tipThumb.dataset.state = sheet.status;
  }

  // ---- hover ------------------------------------------------------------------------------------

  function onHover(panel, position, event) {
    const started = performance.now();
    const i = pointUnder(panel, position);
    panel.overlay.style.cursor = i >= 0 && state.mode !== "pan" ? "pointer" : "";
    if (i < 0) {
      hideHover();
      return;
    }
    const row = panel.rowOf[i];
    if (row === state.tipRow && panel === state.hoverPanel) {
      placeTooltip(event, row);
      return;
    }
    state.hoverPanel = panel;
    showTooltip(row, event);
    showRings(row);
    const shown = performance.now();
    // The pointermove event's timeStamp shares performance.now's clock.
    const input = event && event.timeStamp ? event.timeStamp : started;
    const sample = { row: row, handlerMs: shown - started, inputToShownMs: shown - input, inputToFrameMs: null };
    requestAnimationFrame(() => {
      sample.inputToFrameMs = performance.now() - input;
    });
    state.latencies.push(sample);
    if (state.latencies.length > LATENCY_SAMPLES) state.latencies.shift();
  }

  function showTooltip(row, mouse) {
    const text = state.spec.text;
    const classIndex = text.cls[row];
    const predicted = text.pred ? text.pred[row] : -1;
    state.tipRow = row;
    tip.dataset.row = String(row);
    tipClass.textContent = text.strings[classIndex];
    tipFile.textContent = text.file[row];
    tipPrediction.hidden = predicted < 0;
    tipPrediction.textContent = predicted < 0 ? "" : "predicted: " + text.strings[predicted];
    tipPrediction.classList.toggle("wrong", predicted >= 0 && predicted !== classIndex);
    setThumb(row);
    tip.hidden = false;
    placeTooltip(mouse, row);
  }

  function placeTooltip(mouse, row) {
    let x;
    let y;
    if (mouse && mouse.clientX !== undefined) {
      x = mouse.clientX;
      y = mouse.clientY;
    } else {
      const position = pointClientPosition(0, row) || { x: 0, y: 0 };
      x = position.x;
      y = position.y;
    }
    const width = tip.offsetWidth;
    const height = tip.offsetHeight;
    let left = x + TOOLTIP_OFFSET;
    let top = y + TOOLTIP_OFFSET;
    if (left + width > window.innerWidth) left = x - TOOLTIP_OFFSET - width;
    if (top + height > window.innerHeight) top = window.innerHeight - height - 2;
    tip.style.transform = "translate(" + Math.max(0, left) + "px, " + Math.max(0, top) + "px)";
  }

  function hideHover() {
    state.tipRow = null;
    state.hoverPanel = null;
    tip.hidden = true;
    delete tip.dataset.row;
    state.panels.forEach((panel) => {
      panel.ring.hidden = true;
    });
  }

  // Pixel position of a row inside a panel's canvas, or null when absent, hidden or zoomed out of view.
  function plotPosition(panel, row) {
    const i = panel.positions.get(row);
    if (i === undefined || !panel.area || !visible(panel, i)) return null;
    const position = pixelOf(panel, i);
    return inArea(panel, position) ? position : null;
  }

  function showRings(row) {
    state.panels.forEach((panel) => {
      const position = plotPosition(panel, row);
      panel.ring.hidden = position === null;
      if (position) panel.ring.style.transform = "translate(" + position.x + "px, " + position.y + "px)";
    });
  }

  function pointClientPosition(panelIndex, row) {
    const panel = state.panels[panelIndex];
    const position = panel ? plotPosition(panel, row) : null;
    if (!position) return null;
    const box = panel.canvas.getBoundingClientRect();
    return { x: box.left + position.x, y: box.top + position.y };
  }

  // Rows with no other visible point within minPixels: hovering them surely selects them (tests).
  function isolatedRows(panelIndex, minPixels) {
    const panel = state.panels[panelIndex];
    const s = scales(panel);
    const rows = [];
    panel.positions.forEach((i, row) => {
      const position = plotPosition(panel, row);
      if (position && nearest(panel, position, minPixels, i, s) < 0) rows.push(row);
    });
    return rows;
  }

  // ---- selected rows ------------------------------------------------------------------------------

  // The panel's selected rows whose class is not hidden: each gets a ring.
  function markSelected(panel) {
    panel.marked = state.selected.filter((row) => {
      const i = panel.positions.get(row);
      return i !== undefined && visible(panel, i);
    });
  }

  function setSelected(selected) {
    const key = selected.join(",");
    if (key === state.selectedKey) return;
    state.selected = selected;
    state.selectedKey = key;
    state.panels.forEach((panel) => {
      markSelected(panel);
      queueDraw(panel); // the same view: zoom stays
    });
  }

  // ---- legend and events to Python ---------------------------------------------------------------

  function applyVisibility() {
    document.querySelectorAll(".legend .item").forEach((item) => {
      item.classList.toggle("off", state.hidden.has(item.dataset.name));
    });
    state.panels.forEach((panel) => {
      markSelected(panel); // a hidden class hides its rings too
      queueDraw(panel);
    });
    hideHover();
  }

  // A single click toggles the class once no second click follows within DOUBLE_CLICK_MS; a double click isolates.
  let pendingLegendClick = null;
  function legendClicked(name) {
    if (pendingLegendClick && pendingLegendClick.name === name) {
      clearTimeout(pendingLegendClick.timer);
      pendingLegendClick = null;
      isolateName(name);
      return;
    }
    if (pendingLegendClick) clearTimeout(pendingLegendClick.timer);
    pendingLegendClick = {
      name: name,
      timer: setTimeout(() => {
        pendingLegendClick = null;
        toggleName(name);
      }, DOUBLE_CLICK_MS),
    };
  }

  function toggleName(name) {
    if (state.hidden.has(name)) state.hidden.delete(name);
    else state.hidden.add(name);
    applyVisibility();
  }

  function isolateName(name) {
    const all = new Set();
    state.panels.forEach((panel) => panel.traces.forEach((trace) => all.add(trace.name)));
    const alreadyAlone = !state.hidden.has(name) && [...all].every((other) => other === name || state.hidden.has(other));
    state.hidden = alreadyAlone ? new Set() : new Set([...all].filter((other) => other !== name));
    applyVisibility();
  }

  // seq tells repeated clicks apart; Python maps the points to rows (core.maps.projection.selection_to_rows).
  function sendEvent(kind, rows) {
    sendToStreamlit("streamlit:setComponentValue", {
      value: { event: kind, points: rows.map((row) => ({ customdata: [row] })), seq: Date.now() },
      dataType: "json",
    });
  }

  // ---- test hooks and start-up --------------------------------------------------------------------

  window.hoverScatter = {
    get ready() {
      return state.ready;
    },
    get renderer() {
      return "canvas";
    },
    get mode() {
      return state.mode;
    },
    latencies: () => state.latencies.slice(),
    drawTimes: () => state.drawTimes.slice(),
    pointClientPosition: pointClientPosition,
    rows: (panelIndex) => [...state.panels[panelIndex].positions.keys()],
    isolatedRows: (panelIndex, minPixels) => isolatedRows(panelIndex, minPixels || 8),
    view: (panelIndex) => Object.assign({}, state.panels[panelIndex].view),
    hidden: () => [...state.hidden],
    tooltip: () => ({
      visible: !tip.hidden,
      row: state.tipRow,
      className: tipClass.textContent,
      fileName: tipFile.textContent,
      prediction: tipPrediction.hidden ? null : tipPrediction.textContent,
      thumbState: tipThumb.dataset.state || null,
      box: tip.hidden ? null : tip.getBoundingClientRect().toJSON(),
    }),
    selectedMarks: () =>
      state.panels.map((panel) =>
        panel.marked.map((row) => {
          const i = panel.positions.get(row);
          return { row: row, x: panel.xs[i], y: panel.ys[i] };
        }),
      ),
    rings: () => state.panels.map((panel) => (panel.ring.hidden ? null : panel.ring.getBoundingClientRect().toJSON())),
    sheetStates: () => state.sheets.map((sheet) => sheet.status),
  };

  window.addEventListener("message", (event) => {
    const data = event.data;
    if (event.source !== window.parent || !data || data.type !== "streamlit:render") return;
    try {
      render(data.args.spec, data.args.digest, data.args.selected || [], data.theme);
    } catch (error) {
      showError(error);
    }
  });

  setMode(state.mode);
  sendToStreamlit("streamlit:componentReady", { apiVersion: 1 });
})();
