/*
 * Frontend of ui/hover_scatter: scatter panels drawn by plotly.js (its gl2d bundle: SVG scatter traces, WebGL
 * scattergl from spec.webglFrom points), a photo tooltip on hover.
 *
 * Plotly draws the markers, zooms, pans, selects (box and lasso), keeps the legend and the colour bar, and greys
 * what a selection leaves out with its own `selected`/`unselected` marker styles. This file adds what Plotly
 * cannot: the photo tooltip (sprite sheets fetched on demand), a ring on the hovered photo in every panel, one
 * legend and one drag mode for all panels, a selection on one panel shown on the others, and, from
 * spec.gridHoverFrom points, hover and click found through a grid index over the data instead of Plotly's own
 * hover (which visits every point of every trace on each mouse move; bench/maps.py measures both).
 *
 * Speaks Streamlit's v1 component protocol by postMessage (no build step, no npm). Hover is handled here entirely
 * (no round trip); clicks and box/lasso selections go back to Python as {event: "click" | "select", rows: [row
 * ids], seq} (ui.hover_scatter.event_from_value reads them). Every string from Python is shown through textContent,
 * or through Plotly with its markup characters turned into entities, so it always shows as literal text.
 * window.hoverScatter exposes hooks for browser tests (see the package docstring).
 */
"use strict";
(function () {
  const LATENCY_SAMPLES = 200;
  const TOOLTIP_OFFSET = 14;
  const HOVER_PX = 20; // the nearest point this close to the pointer is hovered (Plotly's default hoverdistance)
  const HIGHLIGHT_RADIUS = 8; // half the star marker: anywhere on a star means that star
  const POINT_PX = 6;
  const STAR_PX = 15;
  const SELECTED_RING_PX = 13;
  const POINT_OPACITY = 0.85; // overlapping points stay readable as density
  const TITLE_PX = 24; // the title line above each plot (see .panel-title)
  const CLICK_SLOP_PX = 4; // a press that moves less than this is a click, not a drag
  const GRID_POINTS_PER_CELL = 8; // hover index density: a query visits a handful of cells of ~8 points
  const PREFETCH_PARALLEL = 4; // sheets fetched at once (of the browser's 6 connections a host)
  const SHEET_RETRY_MS = 3000; // a missing sheet is asked for again on a hover this long after it failed
  const UNSELECTED = { marker: { color: "#c4c4c4", opacity: 0.35 } }; // what a selection leaves out: grey, not hidden
  const SELECTED = { marker: { opacity: 1 } };
  const MODES = [
    // [mode, label, Plotly's dragmode, what the button says on hover]
    ["zoom", "zoom", "zoom", "Drag a box to zoom in; the wheel zooms too; double-click resets"],
    ["pan", "pan", "pan", "Drag to move the map"],
    ["select", "box", "select", "Drag a box to select its photos (in every map)"],
    ["lasso", "lasso", "lasso", "Draw round the photos to select (in every map)"],
  ];

  const state = {
    renderKey: null,
    spec: null,
    panels: [], // see buildPanel
    names: [], // every legend name of every panel, in order: trace i of each panel is names[i]
    selected: [], // rows from Python (selected_rows)
    dim: false, // true: the selection greys the rest (box/lasso); false: it is ringed (a click)
    selectedKey: "",
    mode: "zoom", // shared by all panels, so both maps answer a drag the same way
    ringColour: "#111111",
    hidden: new Set(), // legend names toggled off, shared by all panels, kept across reruns
    sheets: [], // {url, bytes, status: "idle" | "loading" | "ok" | "error", image}
    tipRow: null,
    hoverPanel: null,
    ready: false,
    gridHover: false,
    latencies: [],
    drawTimes: [], // {panel, points, ms}: Plotly's draws (first plot, and each zoom from the wheel to Plotly's afterplot)
    press: null, // {panel, x, y}: where the pointer went down, to tell a click from a drag
  };

  const tip = document.getElementById("tooltip");
  const tipThumb = tip.querySelector(".thumb");
  const tipClass = tip.querySelector(".cls");
  const tipFile = tip.querySelector(".file");
  const tipPrediction = tip.querySelector(".pred");
  const tipVerdict = tip.querySelector(".verdict");
  const tipSplit = tip.querySelector(".split");
  const statusLine = document.getElementById("status");

  // plotly-gl2d.min.js loads async (index.html), so the titles and the tools paint while it evaluates.
  const plotlyLoaded = new Promise((resolve, reject) => {
    if (window.Plotly) return resolve(window.Plotly);
    const script = document.getElementById("plotly-script");
    if (!script) return reject(new Error("index.html has no plotly-gl2d.min.js script"));
    script.addEventListener("load", () => resolve(window.Plotly));
    script.addEventListener("error", () => reject(new Error("plotly-gl2d.min.js did not load; reload the page.")));
  });

  function sendToStreamlit(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data), "*");
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Plotly reads legend names and titles as a small HTML subset; entities keep user text literal.
  function plotlyText(value) {
    return String(value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  // A long title in lines of about ``width`` characters (Plotly never wraps a colour bar's title), each literal text.
  function wrapped(title, width) {
    const lines = [];
    for (const word of String(title).split(/\s+/)) {
      if (lines.length && (lines[lines.length - 1] + " " + word).length <= width) lines[lines.length - 1] += " " + word;
      else lines.push(word);
    }
    return lines.map(plotlyText).join("<br>");
  }

  function applyTheme(theme) {
    state.ringColour = (theme && theme.textColor) || "#111111"; // contrasts with the background in any theme
    if (!theme) return;
    const root = document.documentElement.style;
    if (theme.textColor) root.setProperty("--text", theme.textColor);
    if (theme.backgroundColor) root.setProperty("--background", theme.backgroundColor);
    if (theme.backgroundColor) root.setProperty("--tooltip-background", theme.backgroundColor);
    if (theme.font) document.body.style.fontFamily = theme.font;
  }

  function showError(error) {
    statusLine.textContent = "The map could not be drawn: " + (error && error.message ? error.message : error);
  }

  // ---- panels: data -----------------------------------------------------------------------------------

  // Every name of every panel, once, in order of first appearance: with predictions coloured, one map may show a
  // class the other's run never predicts; each panel then carries an empty trace for it, so that trace i is the
  // same name everywhere and one legend (Plotly's, on the last panel) toggles every panel.
  function legendNames(panels) {
    const seen = new Set();
    const names = [];
    panels.forEach((panel) =>
      panel.traces.forEach((trace) => {
        if (!seen.has(trace.name)) {
          seen.add(trace.name);
          names.push(trace.name);
        }
      }),
    );
    return names;
  }

  // The points of all traces in flat arrays and a grid over the data's whole range (hover, click and the tests'
  // hooks): built once per spec, valid at any zoom.
  function indexPoints(panel, traces) {
    const n = traces.reduce((total, trace) => total + trace.rows.length, 0);
    panel.xs = new Float64Array(n);
    panel.ys = new Float64Array(n);
    panel.rowOf = new Int32Array(n);
    panel.nameOf = new Int32Array(n); // index into state.names: the Plotly trace the point is in
    let at = 0;
    traces.forEach((trace) => {
      const name = state.names.indexOf(trace.name);
      trace.rows.forEach((row, i) => {
        panel.xs[at] = trace.x[i];
        panel.ys[at] = trace.y[i];
        panel.rowOf[at] = row;
        panel.nameOf[at] = name;
        if (!panel.positions.has(row)) panel.positions.set(row, at);
        if (trace.highlight) panel.highlighted.push(at);
        at += 1;
      });
    });
    let x0 = Infinity;
    let x1 = -Infinity;
    let y0 = Infinity;
    let y1 = -Infinity;
    for (let i = 0; i < n; i += 1) {
      x0 = Math.min(x0, panel.xs[i]);
      x1 = Math.max(x1, panel.xs[i]);
      y0 = Math.min(y0, panel.ys[i]);
      y1 = Math.max(y1, panel.ys[i]);
    }
    if (!(x1 > x0)) [x0, x1] = [x0 - 1, x0 + 1];
    if (!(y1 > y0)) [y0, y1] = [y0 - 1, y0 + 1];
    const cells = Math.max(1, Math.min(512, Math.ceil(Math.sqrt(n / GRID_POINTS_PER_CELL))));
    const column = (x) => Math.min(cells - 1, Math.max(0, Math.floor(((x - x0) / (x1 - x0)) * cells)));
    const line = (y) => Math.min(cells - 1, Math.max(0, Math.floor(((y - y0) / (y1 - y0)) * cells)));
    const cellOf = new Int32Array(n);
    const counts = new Int32Array(cells * cells + 1);
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

  function markerOf(trace, colourBar, showScale) {
    if (trace.highlight) {
      return { color: trace.colour, size: STAR_PX, symbol: "star", line: { width: 1.5, color: "#111111" } };
    }
    const marker = { color: trace.colour, size: POINT_PX, opacity: POINT_OPACITY };
    if (trace.correct) marker.symbol = trace.correct.map((ok) => (ok ? "circle" : "x"));
    if (trace.values && colourBar) {
      Object.assign(marker, {
        color: trace.values,
        colorscale: colourBar.scale,
        cmin: colourBar.low,
        cmax: colourBar.high,
        showscale: showScale,
        colorbar: { title: { text: wrapped(colourBar.title, 34), side: "right" }, thickness: 12, len: 0.7, y: 0, yanchor: "bottom" },
      });
    }
    return marker;
  }

  // Plotly traces of a panel: one per legend name (empty where the panel has none), then the ring trace.
  function plotlyTraces(panel, specPanel, last) {
    const byName = new Map(specPanel.traces.map((trace) => [trace.name, trace]));
    let scaleShown = false;
    panel.traceRows = [];
    const traces = state.names.map((name) => {
      const trace = byName.get(name) || emptyTrace(name);
      const showScale = last && Boolean(trace.values) && !scaleShown;
      scaleShown = scaleShown || showScale;
      panel.traceRows.push(trace.rows);
      return {
        type: state.traceType,
        mode: "markers",
        name: plotlyText(name),
        x: trace.x,
        y: trace.y,
        hoverinfo: "none", // our tooltip replaces Plotly's label; "none" still fires plotly_hover
        showlegend: last,
        visible: state.hidden.has(name) ? "legendonly" : true,
        marker: markerOf(trace, specPanel.colourBar, showScale),
        selectedpoints: selectedPoints(panel, trace.rows),
        selected: SELECTED,
        unselected: UNSELECTED,
      };
    });
    panel.ringKey = ringXY(panel).key;
    panel.dimKey = state.dim ? state.selectedKey : "";
    traces.push(Object.assign(ringXY(panel), {
      type: state.traceType,
      mode: "markers",
      hoverinfo: "skip", // not hoverable or selectable: the point under the ring answers
      showlegend: false,
      marker: { symbol: "circle-open", size: SELECTED_RING_PX, color: state.ringColour, line: { width: 2 } },
    }));
    return traces;
  }

  // A legend name this panel has no point of (another panel's), in the other panel's colour: one point at null, drawn
  // nowhere, since Plotly leaves a trace without points out of the legend.
  function emptyTrace(name) {
    const other = state.spec.panels.flatMap((panel) => panel.traces).find((trace) => trace.name === name);
    return { name: name, colour: other.colour, x: [null], y: [null], rows: [], correct: null, highlight: other.highlight, values: null };
  }

  // ---- panels: DOM and Plotly ---------------------------------------------------------------------------

  function buildToolbar() {
    const bar = element("div", "toolbar");
    for (const [mode, label, , hint] of MODES) {
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

  function buildPanel(container, specPanel, index, spec) {
    const last = index === spec.panels.length - 1;
    const column = element("div", last ? "panel with-legend" : "panel");
    const head = element("div", "panel-head");
    head.append(element("div", "panel-title", specPanel.title)); // textContent: literal text, cut with an ellipsis
    if (index === 0) head.append(buildToolbar());
    const wrap = element("div", "plot");
    wrap.style.height = spec.height - TITLE_PX + "px";
    const div = element("div", "plotly-panel");
    const ring = element("div", "ring");
    ring.hidden = true;
    wrap.append(div, ring);
    column.append(head, wrap);
    container.append(column);
    const panel = {
      index: index,
      last: last,
      div: div,
      wrap: wrap,
      ring: ring,
      specPanel: specPanel,
      positions: new Map(), // row -> index of its point in the flat arrays
      highlighted: [], // point indices of the highlighted (uploaded) images
      marked: [], // selected rows: ringed (a click) or shown with Plotly's selected style (a box or lasso)
      wheelAt: null,
    };
    indexPoints(panel, specPanel.traces);
    return panel;
  }

  function layoutOf(spec, last, theme) {
    const background = (theme && theme.backgroundColor) || "#ffffff";
    return {
      height: spec.height - TITLE_PX,
      margin: { l: 8, r: 8, t: 8, b: 8 },
      xaxis: { visible: false }, // t-SNE axes have no meaning, only neighbourhoods do
      yaxis: { visible: false },
      hovermode: state.gridHover ? false : "closest",
      dragmode: MODES.find((mode) => mode[0] === state.mode)[2],
      showlegend: last,
      legend: { itemsizing: "constant", font: { size: 11 }, x: 1.02, y: 1, yanchor: "top" },
      paper_bgcolor: background,
      plot_bgcolor: background,
      font: { color: (theme && theme.textColor) || "#31333f" },
      selectdirection: "any",
    };
  }

  function plot(panel, spec, theme) {
    const started = performance.now();
    const traces = plotlyTraces(panel, panel.specPanel, panel.last);
    const config = { displayModeBar: false, responsive: true, scrollZoom: true, doubleClick: "reset", showTips: false };
    return Plotly.newPlot(panel.div, traces, layoutOf(spec, panel.last, theme), config).then(() => {
      recordDraw(panel, started);
      listen(panel);
    });
  }

  function recordDraw(panel, started) {
    state.drawTimes.push({ panel: panel.index, points: panel.rowOf.length, ms: performance.now() - started });
    if (state.drawTimes.length > LATENCY_SAMPLES) state.drawTimes.shift();
  }

  function listen(panel) {
    const div = panel.div;
    if (!state.gridHover) {
      div.on("plotly_hover", (event) => onPlotlyHover(panel, event));
      div.on("plotly_unhover", hideHover);
    }
    div.on("plotly_relayout", () => {
      hideHover(); // zoom and pan move the points under the rings
    });
    div.on("plotly_afterplot", () => {
      if (panel.wheelAt !== null) {
        recordDraw(panel, panel.wheelAt);
        panel.wheelAt = null;
      }
    });
    div.on("plotly_selected", (event) => {
      if (!event) return; // a click in select mode; plotly_deselect follows a double click
      const rows = rowsOfPoints(panel, event.points || []);
      showSelection(rows, true, panel); // every map at once; Python answers with the same rows
      sendEvent("select", rows);
    });
    div.on("plotly_deselect", () => {
      showSelection([], false, panel);
      sendEvent("select", []);
    });
    div.on("plotly_legendclick", (event) => {
      toggleName(state.names[event.curveNumber]);
      return false; // every panel is restyled here
    });
    div.on("plotly_legenddoubleclick", (event) => {
      isolateName(state.names[event.curveNumber]);
      return false;
    });
    // Capture phase: Plotly's drag layer handles these too, and must not hide them from us.
    const wrap = panel.wrap;
    wrap.addEventListener(
      "pointerdown",
      (event) => {
        if (event.button === 0) state.press = { panel: panel, x: event.clientX, y: event.clientY };
      },
      true,
    );
    wrap.addEventListener(
      "pointermove",
      (event) => {
        if (state.gridHover && !event.buttons) onGridHover(panel, localPosition(panel, event), event);
      },
      true,
    );
    wrap.addEventListener("pointerleave", () => {
      if (state.gridHover && !state.press) hideHover();
    });
    wrap.addEventListener("wheel", () => {
      panel.wheelAt = performance.now();
    }, true);
  }

  // A press and release within CLICK_SLOP_PX is a click (Plotly moves the release onto a cover over the page while
  // it drags, so the release is heard on the window).
  window.addEventListener(
    "pointerup",
    (event) => {
      const press = state.press;
      state.press = null;
      if (!press || Math.hypot(event.clientX - press.x, event.clientY - press.y) >= CLICK_SLOP_PX) return;
      const i = pointUnder(press.panel, localPosition(press.panel, event));
      if (i >= 0) sendEvent("click", [press.panel.rowOf[i]]);
    },
    true,
  );

  function render(spec, digest, selected, dim, theme) {
    const renderKey = digest + JSON.stringify(theme || {});
    if (renderKey === state.renderKey) {
      setSelected(selected, dim); // a rerun with the same data keeps zoom and sheets
      return;
    }
    state.renderKey = renderKey;
    state.selected = selected;
    state.dim = dim;
    state.selectedKey = selectionKey(selected, dim);
    state.ready = false;
    delete document.body.dataset.ready;
    state.spec = spec;
    const points = spec.panels.reduce((n, panel) => n + panel.traces.reduce((m, trace) => m + trace.rows.length, 0), 0);
    state.gridHover = points >= spec.gridHoverFrom;
    state.traceType = points >= spec.webglFrom ? "scattergl" : "scatter";
    applyTheme(theme);
    hideHover();
    sendToStreamlit("streamlit:setFrameHeight", { height: spec.height });
    const container = document.getElementById("panels");
    if (window.Plotly) state.panels.forEach((panel) => Plotly.purge(panel.div));
    container.replaceChildren();
    state.names = legendNames(spec.panels);
    // Every column is in the page before Plotly sizes a plot from its container (a panel drawn before its
    // neighbour's column existed kept the whole row's width).
    state.panels = spec.panels.map((panel, index) => buildPanel(container, panel, index, spec));
    state.panels.forEach(markSelected);
    setMode(state.mode);
    resetSheets(spec.thumbs);
    const key = renderKey;
    plotlyLoaded
      .then(() => Promise.all(state.panels.map((panel) => plot(panel, spec, theme))))
      .then(() => {
        if (key !== state.renderKey) return; // a newer spec is being drawn
        state.ready = true;
        document.body.dataset.ready = "true";
        prefetchSheets();
      })
      .catch(showError);
  }

  // ---- geometry ------------------------------------------------------------------------------------------

  // The panel's plot area and data range now (Plotly's axes after any zoom or pan), in the div's pixels.
  function scales(panel) {
    const layout = panel.div._fullLayout;
    if (!layout || !layout.xaxis || !layout.xaxis.range) return null;
    const xa = layout.xaxis;
    const ya = layout.yaxis;
    const [x0, x1] = xa.range;
    const [y0, y1] = ya.range;
    return {
      left: xa._offset,
      top: ya._offset,
      width: xa._length,
      height: ya._length,
      x0: x0,
      x1: x1,
      y0: y0,
      y1: y1,
      sx: xa._length / (x1 - x0),
      sy: ya._length / (y1 - y0),
    };
  }

  function pixelOf(panel, i, s) {
    return { x: s.left + (panel.xs[i] - s.x0) * s.sx, y: s.top + (s.y1 - panel.ys[i]) * s.sy };
  }

  function inArea(s, p) {
    return p.x >= s.left && p.x <= s.left + s.width && p.y >= s.top && p.y <= s.top + s.height;
  }

  function visible(panel, i) {
    return !state.hidden.has(state.names[panel.nameOf[i]]);
  }

  function localPosition(panel, event) {
    const box = panel.div.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  }

  // ---- hit testing ----------------------------------------------------------------------------------------

  // The visible point nearest to position within radius px, or -1; the highlighted (uploaded) images the user aims
  // at win within their star, even over a closer small point under it.
  function pointUnder(panel, position, radius) {
    const s = scales(panel);
    if (!s || !inArea(s, position)) return -1;
    for (const i of panel.highlighted) {
      if (!visible(panel, i)) continue;
      const p = pixelOf(panel, i, s);
      if (Math.hypot(p.x - position.x, p.y - position.y) <= HIGHLIGHT_RADIUS) return i;
    }
    return nearest(panel, position, radius === undefined ? HOVER_PX : radius, -1, s);
  }

  function nearest(panel, position, radius, except, s) {
    const grid = panel.grid;
    const x = s.x0 + (position.x - s.left) / s.sx;
    const y = s.y1 - (position.y - s.top) / s.sy;
    const dx = radius / s.sx;
    const dy = radius / s.sy;
    const c0 = grid.column(x - dx);
    const c1 = grid.column(x + dx);
    const l0 = grid.line(y - dy);
    const l1 = grid.line(y + dy);
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

  // Rows of Plotly event points (curveNumber is the legend name's index, pointNumber the point in that trace).
  function rowsOfPoints(panel, points) {
    const rows = [];
    const seen = new Set();
    for (const point of points) {
      const traceRows = panel.traceRows[point.curveNumber];
      const index = point.pointNumber !== undefined ? point.pointNumber : point.pointIndex;
      if (!traceRows || index === undefined) continue; // the ring trace
      const row = traceRows[index];
      if (row !== undefined && !seen.has(row)) {
        seen.add(row);
        rows.push(row);
      }
    }
    return rows;
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

  // Plotly's own hover: it found the point (below gridHoverFrom points).
  function onPlotlyHover(panel, event) {
    const started = performance.now();
    const point = event.points && event.points[0];
    if (!point) return;
    const mouse = event.event;
    // Plotly hovers the point whose centre is closest, which under a big star is often a small dataset point; the
    // highlighted (uploaded) images the user aims at win within their radius.
    let row = rowsOfPoints(panel, [point])[0];
    if (panel.highlighted.length && mouse && mouse.clientX !== undefined) {
      const i = pointUnder(panel, localPosition(panel, mouse), 0);
      if (i >= 0) row = panel.rowOf[i];
    }
    if (row === undefined) return;
    hovered(panel, row, mouse, started);
  }

  // The grid index's hover: from gridHoverFrom points, where Plotly's visits every point on each move.
  function onGridHover(panel, position, event) {
    const started = performance.now();
    const i = pointUnder(panel, position);
    if (i < 0) {
      hideHover();
      return;
    }
    const row = panel.rowOf[i];
    if (row === state.tipRow && panel === state.hoverPanel) {
      placeTooltip(event, row);
      return;
    }
    hovered(panel, row, event, started);
  }

  function hovered(panel, row, event, started) {
    state.hoverPanel = panel;
    showTooltip(row, event);
    showRings(row);
    const shown = performance.now();
    // The pointer event's timeStamp shares performance.now's clock.
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
    const verdict = text.verdict ? text.verdict[row] : -1;
    const split = text.split ? text.split[row] : -1;
    state.tipRow = row;
    tip.dataset.row = String(row);
    tipClass.textContent = text.strings[classIndex];
    tipFile.textContent = text.file[row];
    tipPrediction.hidden = predicted < 0;
    tipPrediction.textContent = predicted < 0 ? "" : "predicted: " + text.strings[predicted];
    tipVerdict.hidden = verdict < 0;
    tipVerdict.textContent = verdict < 0 ? "" : text.strings[verdict];
    tipVerdict.dataset.verdict = verdict < 0 ? "" : text.strings[verdict];
    tipSplit.hidden = split < 0;
    tipSplit.textContent = split < 0 ? "" : "split: " + text.strings[split];
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

  // Pixel position of a row inside a panel's plot div, or null when absent, hidden or zoomed out of view.
  function plotPosition(panel, row) {
    const i = panel.positions.get(row);
    const s = scales(panel);
    if (i === undefined || !s || !visible(panel, i)) return null;
    const position = pixelOf(panel, i, s);
    return inArea(s, position) ? position : null;
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
    const box = panel.div.getBoundingClientRect();
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

  // ---- selection ------------------------------------------------------------------------------------------

  function selectionKey(rows, dim) {
    return (dim ? "dim:" : "ring:") + rows.join(",");
  }

  // The panel's selected rows whose class is not hidden.
  function markSelected(panel) {
    panel.marked = state.selected.filter((row) => {
      const i = panel.positions.get(row);
      return i !== undefined && visible(panel, i);
    });
  }

  function ringXY(panel) {
    const rows = state.dim ? [] : panel.marked; // a box or lasso greys the rest instead of ringing hundreds
    return {
      x: rows.map((row) => panel.xs[panel.positions.get(row)]),
      y: rows.map((row) => panel.ys[panel.positions.get(row)]),
      key: rows.join(","),
    };
  }

  // One trace's Plotly selectedpoints: the indices of its selected rows when the selection greys (state.dim), else
  // null (no selection: every point in its own colour).
  function selectedPoints(panel, rows) {
    if (!state.dim) return null;
    const chosen = new Set(state.selected);
    const indices = [];
    rows.forEach((row, index) => {
      if (chosen.has(row)) indices.push(index);
    });
    return indices;
  }

  // Plotly's selectedpoints per trace: the selection in every panel (greying the rest) when state.dim, else none.
  // ``except``: the panel where the user just drew the box or lasso (Plotly has styled it already).
  // Restyles, never a new plot, so zoom stays; only what changed (each restyle redraws the panel).
  function applySelection(except) {
    const dimKey = state.dim ? state.selectedKey : "";
    state.panels.forEach((panel) => {
      markSelected(panel);
      const ring = ringXY(panel);
      if (ring.key !== panel.ringKey) {
        Plotly.restyle(panel.div, { x: [ring.x], y: [ring.y] }, [state.names.length]);
        panel.ringKey = ring.key;
      }
      if (dimKey === panel.dimKey) return;
      panel.dimKey = dimKey;
      if (panel === except) return; // Plotly styled the panel the box or lasso was drawn on itself
      const selectedpoints = panel.traceRows.map((rows) => selectedPoints(panel, rows));
      Plotly.restyle(panel.div, { selectedpoints: selectedpoints }, state.names.map((name, index) => index));
      if (!state.dim && panel.div.layout.selections && panel.div.layout.selections.length) {
        Plotly.relayout(panel.div, { selections: [] }); // the outline of a box or lasso that no longer holds
      }
    });
  }

  function showSelection(rows, dim, except) {
    rows = rows.slice().sort((a, b) => a - b); // as Python sends them back: its answer then changes nothing
    state.selected = rows;
    state.dim = dim;
    state.selectedKey = selectionKey(rows, dim);
    if (state.ready) applySelection(except);
  }

  function setSelected(selected, dim) {
    const key = selectionKey(selected, dim);
    if (key === state.selectedKey) return;
    showSelection(selected, dim, null);
  }

  // Rows Plotly shows as selected in a panel (its own selectedpoints), and rows it greys: the tests read these.
  function selectionState(panelIndex) {
    const panel = state.panels[panelIndex];
    const selected = [];
    const greyed = [];
    panel.div.data.slice(0, state.names.length).forEach((trace, t) => {
      if (trace.visible === "legendonly") return;
      const points = trace.selectedpoints;
      if (points === null || points === undefined) return;
      const inside = new Set(points);
      panel.traceRows[t].forEach((row, index) => (inside.has(index) ? selected : greyed).push(row));
    });
    return { selected: selected, greyed: greyed, unselectedColour: UNSELECTED.marker.color };
  }

  // ---- tools, legend and events to Python ----------------------------------------------------------

  function setMode(mode) {
    state.mode = mode;
    document.querySelectorAll(".tool[data-mode]").forEach((button) => {
      button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
    });
    document.body.dataset.mode = mode;
    const dragmode = MODES.find((each) => each[0] === mode)[2];
    if (window.Plotly) {
      state.panels.forEach((panel) => {
        if (panel.div._fullLayout) Plotly.relayout(panel.div, { dragmode: dragmode });
      });
    }
  }

  function resetView(panel) {
    Plotly.relayout(panel.div, { "xaxis.autorange": true, "yaxis.autorange": true });
  }

  function applyVisibility() {
    const visible = state.names.map((name) => (state.hidden.has(name) ? "legendonly" : true));
    state.panels.forEach((panel) => {
      Plotly.restyle(panel.div, { visible: visible }, state.names.map((name, index) => index));
    });
    applySelection(null); // a hidden class hides its rings too
    hideHover();
  }

  function toggleName(name) {
    if (state.hidden.has(name)) state.hidden.delete(name);
    else state.hidden.add(name);
    applyVisibility();
  }

  function isolateName(name) {
    const alreadyAlone = !state.hidden.has(name) && state.names.every((other) => other === name || state.hidden.has(other));
    state.hidden = alreadyAlone ? new Set() : new Set(state.names.filter((other) => other !== name));
    applyVisibility();
  }

  // seq tells repeated clicks apart (the value persists across reruns).
  function sendEvent(kind, rows) {
    sendToStreamlit("streamlit:setComponentValue", {
      value: { event: kind, rows: rows, seq: Date.now() },
      dataType: "json",
    });
  }

  // ---- test hooks and start-up --------------------------------------------------------------------

  window.hoverScatter = {
    get ready() {
      return state.ready;
    },
    get renderer() {
      return "plotly.js " + state.traceType + (state.gridHover ? ", grid-indexed hover" : ", Plotly hover");
    },
    get mode() {
      return state.mode;
    },
    latencies: () => state.latencies.slice(),
    drawTimes: () => state.drawTimes.slice(),
    pointClientPosition: pointClientPosition,
    rows: (panelIndex) => [...state.panels[panelIndex].positions.keys()],
    isolatedRows: (panelIndex, minPixels) => isolatedRows(panelIndex, minPixels || 8),
    view: (panelIndex) => {
      const s = scales(state.panels[panelIndex]);
      return { x0: s.x0, x1: s.x1, y0: s.y0, y1: s.y1 };
    },
    hidden: () => [...state.hidden],
    legendNames: () => state.names.slice(),
    tooltip: () => ({
      visible: !tip.hidden,
      row: state.tipRow,
      className: tipClass.textContent,
      fileName: tipFile.textContent,
      prediction: tipPrediction.hidden ? null : tipPrediction.textContent,
      verdict: tipVerdict.hidden ? null : tipVerdict.textContent,
      split: tipSplit.hidden ? null : tipSplit.textContent,
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
    selection: (panelIndex) => selectionState(panelIndex),
    rings: () => state.panels.map((panel) => (panel.ring.hidden ? null : panel.ring.getBoundingClientRect().toJSON())),
    sheetStates: () => state.sheets.map((sheet) => sheet.status),
  };

  window.addEventListener("message", (event) => {
    const data = event.data;
    if (event.source !== window.parent || !data || data.type !== "streamlit:render") return;
    try {
      render(data.args.spec, data.args.digest, data.args.selected || [], Boolean(data.args.dim), data.theme);
    } catch (error) {
      showError(error);
    }
  });

  plotlyLoaded.catch(showError);
  sendToStreamlit("streamlit:componentReady", { apiVersion: 1 });
})();
