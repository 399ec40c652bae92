/*
 * Frontend of ui/hover_scatter: scatter panels drawn with plotly.js, a photo tooltip on hover.
 *
 * Speaks Streamlit's v1 component protocol by postMessage (no build step, no npm). Hover is handled
 * here entirely (no round trip); only clicks and box/lasso selections go back to Python.
 * Every string from Python (class names, file names, titles) is shown through textContent, or
 * through Plotly with its markup characters turned into entities, so it always shows as literal
 * text. window.hoverScatter exposes hooks for browser tests (see the package docstring).
 */
"use strict";
(function () {
  const LATENCY_SAMPLES = 200;
  const TOOLTIP_OFFSET = 14;
  const HIGHLIGHT_RADIUS = 8; // half the star marker: anywhere on a star means that star
  const SELECTED_RING_PX = 13;
  const TITLE_PX = 24; // the HTML title line above each plot (see .panel-title)
  const SHEET_RETRY_MS = 3000; // a missing sheet is asked for again on a hover this long after it failed

  const state = {
    renderKey: null,
    spec: null,
    panels: [], // {div, ring, names: [], positions: Map row -> {x, y, trace}, highlighted: [rows], marked: [rows]}
    selected: [], // rows from Python (selected_rows), ringed in every panel that shows them
    selectedKey: "",
    ringColour: "#111111",
    hidden: new Set(), // legend names toggled off, shared by all panels, kept across reruns
    sheets: [], // {url, bytes, status: "idle" | "loading" | "ok" | "error", image}
    tipRow: null,
    ready: false,
    latencies: [],
    renderer: webglAvailable() ? "scattergl" : "scatter",
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

  // Plotly reads titles and legend names as a small HTML subset; entities keep user text literal.
  function plotlyText(value) {
    return String(value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function webglAvailable() {
    try {
      const canvas = document.createElement("canvas");
      return Boolean(canvas.getContext("webgl2") || canvas.getContext("webgl"));
    } catch (error) {
      return false;
    }
  }

  function applyTheme(theme) {
    if (!theme) return;
    const root = document.documentElement.style;
    if (theme.textColor) root.setProperty("--text", theme.textColor);
    if (theme.backgroundColor) root.setProperty("--background", theme.backgroundColor);
    if (theme.backgroundColor) root.setProperty("--tooltip-background", theme.backgroundColor);
    if (theme.font) document.body.style.fontFamily = theme.font;
  }

  // A trace with values (per-image scores) is coloured on the panel's colour bar; the bar is drawn
  // once, beside the last panel, where the legend is.
  function markerOf(trace, colourBar, showScale) {
    if (trace.highlight) {
      return { color: trace.colour, size: 15, symbol: "star", line: { width: 1.5, color: "#111111" } };
    }
    const marker = { color: trace.colour, size: 6, opacity: 0.85 };
    if (trace.correct) marker.symbol = trace.correct.map((ok) => (ok ? "circle" : "x"));
    if (trace.values && colourBar) {
      Object.assign(marker, {
        color: trace.values,
        colorscale: colourBar.scale,
        cmin: colourBar.low,
        cmax: colourBar.high,
        showscale: showScale,
        colorbar: { title: { text: plotlyText(colourBar.title), side: "right" }, thickness: 12, len: 0.6, y: 0.3 },
      });
    }
    return marker;
  }

  function buildPanel(container, panel, index, spec, theme) {
    const last = index === spec.panels.length - 1;
    const column = document.createElement("div");
    column.className = last ? "panel with-legend" : "panel";
    // The title is HTML above the plot, not a Plotly title: the mode bar (top right of the plot on
    // hover) can then never cover it, however long it is. textContent keeps it literal text.
    const title = document.createElement("div");
    title.className = "panel-title";
    title.textContent = panel.title;
    const wrap = document.createElement("div");
    wrap.className = "plot";
    const div = document.createElement("div");
    const ring = document.createElement("div");
    ring.className = "ring";
    ring.hidden = true;
    wrap.append(div, ring);
    column.append(title, wrap);
    container.append(column);

    const positions = new Map();
    const names = panel.traces.map((trace) => trace.name);
    const highlighted = panel.traces.filter((trace) => trace.highlight).flatMap((trace) => trace.rows);
    let scaleShown = false;
    const traces = panel.traces.map((trace, traceIndex) => {
      const showScale = last && Boolean(trace.values) && !scaleShown;
      scaleShown = scaleShown || showScale;
      trace.rows.forEach((row, i) => positions.set(row, { x: trace.x[i], y: trace.y[i], trace: traceIndex }));
      return {
        type: state.renderer,
        mode: "markers",
        name: plotlyText(trace.name),
        x: trace.x,
        y: trace.y,
        customdata: trace.rows.map((row) => [row]),
        hoverinfo: "none", // our tooltip replaces Plotly's label; "none" still fires plotly_hover
        showlegend: last,
        visible: state.hidden.has(trace.name) ? "legendonly" : true,
        marker: markerOf(trace, panel.colourBar, showScale),
      };
    });
    const background = (theme && theme.backgroundColor) || "#ffffff";
    const layout = {
      height: spec.height - TITLE_PX,
      margin: { l: 8, r: 8, t: 28, b: 8 }, // room for the mode bar above the points
      xaxis: { visible: false }, // t-SNE axes have no meaning, only neighbourhoods do
      yaxis: { visible: false },
      hovermode: "closest",
      dragmode: "zoom",
      legend: { itemsizing: "constant", font: { size: 11 } },
      paper_bgcolor: background,
      plot_bgcolor: background,
      font: { color: (theme && theme.textColor) || "#31333f" },
    };
    const config = { displaylogo: false, responsive: true, scrollZoom: true };
    const panelState = { div: div, ring: ring, names: names, positions: positions, highlighted: highlighted, marked: [] };
    // Last, so the rings draw on top; its trace index is names.length.
    traces.push(Object.assign(selectedMarks(panelState), {
      type: state.renderer,
      mode: "markers",
      hoverinfo: "skip", // not hoverable or clickable: the point under the ring answers
      showlegend: false,
      marker: { symbol: "circle-open", size: SELECTED_RING_PX, color: state.ringColour, line: { width: 2 } },
    }));
    const draw = () => Plotly.newPlot(div, traces, layout, config).then(() => {
      div.on("plotly_hover", (event) => onHover(event, panelState));
      div.on("plotly_unhover", hideHover);
      div.on("plotly_relayout", hideHover); // zoom and pan move the points under the rings
      div.on("plotly_click", (event) => {
        const star = highlightedUnder(panelState, event.event);
        sendEvent("click", star === null ? event.points : [{ customdata: [star] }]);
      });
      div.on("plotly_selected", (event) => {
        if (event) sendEvent("select", event.points);
      });
      div.on("plotly_deselect", () => sendEvent("select", []));
      div.on("plotly_legendclick", (event) => {
        toggleName(names[event.curveNumber]);
        return false; // we restyle every panel ourselves
      });
      div.on("plotly_legenddoubleclick", (event) => {
        isolateName(names[event.curveNumber]);
        return false;
      });
    });
    return { panelState: panelState, draw: draw };
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
    state.ringColour = (theme && theme.textColor) || "#111111"; // contrasts with the background in any theme
    state.ready = false;
    delete document.body.dataset.ready;
    state.spec = spec;
    applyTheme(theme);
    hideHover();
    sendToStreamlit("streamlit:setFrameHeight", { height: spec.height });
    const container = document.getElementById("panels");
    state.panels.forEach((panel) => Plotly.purge(panel.div));
    container.replaceChildren();
    const built = spec.panels.map((panel, index) => buildPanel(container, panel, index, spec, theme));
    state.panels = built.map((item) => item.panelState);
    resetSheets(spec.thumbs);
    // Plot only once every column is in the page: Plotly sizes a plot from its container when it draws it, and a
    // panel drawn before its neighbour's column existed kept the whole row's width, so only its left part showed
    // (a redraw, e.g. another map method, where no frame resize came to correct it).
    const drawn = built.map((item) => item.draw());
    Promise.all(drawn).then(() => {
      state.ready = true;
      document.body.dataset.ready = "true";
      prefetchSheets();
    }, showError);
  }

  function showError(error) {
    statusLine.textContent = "The scatter plot could not be drawn: " + (error && error.message ? error.message : error);
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

  // Sheets load in order, one at a time, until the byte budget is spent; the rest load when hovered.
  function prefetchSheets() {
    if (!state.ready) return;
    let spent = 0;
    for (let i = 0; i < state.sheets.length; i += 1) {
      const sheet = state.sheets[i];
      spent += sheet.bytes;
      if (spent > state.spec.thumbs.prefetchBytes) return;
      if (sheet.status === "loading") return;
      if (sheet.status === "idle") {
        loadSheet(i);
        return;
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

  // Plotly hovers the point whose centre is closest, which under a big star is often a small
  // dataset point; the highlighted (uploaded) images the user aims at win within their radius.
  function highlightedUnder(panel, mouse) {
    if (!panel.highlighted.length || !mouse || mouse.clientX === undefined) return null;
    const box = panel.div.getBoundingClientRect();
    for (const row of panel.highlighted) {
      const position = plotPosition(panel, row);
      if (position && Math.hypot(box.left + position.x - mouse.clientX, box.top + position.y - mouse.clientY) <= HIGHLIGHT_RADIUS) {
        return row;
      }
    }
    return null;
  }

  function onHover(event, panel) {
    const started = performance.now();
    const point = event.points && event.points[0];
    if (!point || !point.customdata) return;
    const star = highlightedUnder(panel, event.event);
    const row = star === null ? point.customdata[0] : star;
    showTooltip(row, event.event);
    showRings(row);
    const shown = performance.now();
    // event.event is the mousemove that triggered the hover; its timeStamp shares performance.now's clock.
    const input = event.event && event.event.timeStamp ? event.event.timeStamp : started;
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
    tip.hidden = true;
    delete tip.dataset.row;
    state.panels.forEach((panel) => {
      panel.ring.hidden = true;
    });
  }

  // Pixel position of a row inside a panel's plot element, or null when absent, hidden or zoomed out.
  function plotPosition(panel, row) {
    const position = panel.positions.get(row);
    const layout = panel.div._fullLayout;
    if (!position || !layout || state.hidden.has(panel.names[position.trace])) return null;
    const xaxis = layout.xaxis;
    const yaxis = layout.yaxis;
    const x = xaxis._offset + xaxis.l2p(position.x);
    const y = yaxis._offset + yaxis.l2p(position.y);
    const inside =
      x >= xaxis._offset && x <= xaxis._offset + xaxis._length && y >= yaxis._offset && y <= yaxis._offset + yaxis._length;
    return inside ? { x: x, y: y } : null;
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
    const grid = new Map();
    const placed = [];
    panel.positions.forEach((unused, row) => {
      const position = plotPosition(panel, row);
      if (!position) return;
      const key = Math.floor(position.x / minPixels) + "," + Math.floor(position.y / minPixels);
      if (!grid.has(key)) grid.set(key, []);
      grid.get(key).push(position);
      placed.push({ row: row, position: position });
    });
    const alone = ({ position }) => {
      const column = Math.floor(position.x / minPixels);
      const line = Math.floor(position.y / minPixels);
      for (let dx = -1; dx <= 1; dx += 1) {
        for (let dy = -1; dy <= 1; dy += 1) {
          for (const other of grid.get(column + dx + "," + (line + dy)) || []) {
            if (other !== position && Math.hypot(other.x - position.x, other.y - position.y) < minPixels) return false;
          }
        }
      }
      return true;
    };
    return placed.filter(alone).map((item) => item.row);
  }

  // ---- selected rows ------------------------------------------------------------------------------

  // x and y of the ring trace: the panel's selected rows whose class is not hidden.
  function selectedMarks(panel) {
    panel.marked = state.selected.filter((row) => {
      const position = panel.positions.get(row);
      return position !== undefined && !state.hidden.has(panel.names[position.trace]);
    });
    return {
      x: panel.marked.map((row) => panel.positions.get(row).x),
      y: panel.marked.map((row) => panel.positions.get(row).y),
    };
  }

  function redrawSelected() {
    state.panels.forEach((panel) => {
      const marks = selectedMarks(panel);
      // restyle, not a redraw: zoom stays
      Plotly.restyle(panel.div, { x: [marks.x], y: [marks.y] }, [panel.names.length]);
    });
  }

  function setSelected(selected) {
    const key = selected.join(",");
    if (key === state.selectedKey) return;
    state.selected = selected;
    state.selectedKey = key;
    redrawSelected();
  }

  // ---- legend and events to Python ---------------------------------------------------------------

  function applyVisibility() {
    state.panels.forEach((panel) => {
      const visible = panel.names.map((name) => (state.hidden.has(name) ? "legendonly" : true));
      Plotly.restyle(panel.div, { visible: visible }, panel.names.map((name, index) => index));
    });
    redrawSelected(); // a hidden class hides its rings too
    hideHover();
  }

  function toggleName(name) {
    if (state.hidden.has(name)) state.hidden.delete(name);
    else state.hidden.add(name);
    applyVisibility();
  }

  function isolateName(name) {
    const all = new Set();
    state.panels.forEach((panel) => panel.names.forEach((other) => all.add(other)));
    const alreadyAlone = !state.hidden.has(name) && [...all].every((other) => other === name || state.hidden.has(other));
    state.hidden = alreadyAlone ? new Set() : new Set([...all].filter((other) => other !== name));
    applyVisibility();
  }

  // Python maps points to rows (core.projection.selection_to_rows); seq tells repeated clicks apart.
  function sendEvent(kind, points) {
    const slim = (points || []).map((point) => ({ customdata: point.customdata === undefined ? null : point.customdata }));
    sendToStreamlit("streamlit:setComponentValue", {
      value: { event: kind, points: slim, seq: Date.now() },
      dataType: "json",
    });
  }

  // ---- test hooks and start-up --------------------------------------------------------------------

  window.hoverScatter = {
    get ready() {
      return state.ready;
    },
    get renderer() {
      return state.renderer;
    },
    latencies: () => state.latencies.slice(),
    pointClientPosition: pointClientPosition,
    rows: (panelIndex) => [...state.panels[panelIndex].positions.keys()],
    isolatedRows: (panelIndex, minPixels) => isolatedRows(panelIndex, minPixels || 8),
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
      state.panels.map((panel) => {
        const trace = panel.div.data[panel.names.length];
        return panel.marked.map((row, i) => ({ row: row, x: trace.x[i], y: trace.y[i] }));
      }),
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

  if (typeof Plotly === "undefined") {
    statusLine.textContent = "plotly.min.js did not load; reload the page.";
  }
  sendToStreamlit("streamlit:componentReady", { apiVersion: 1 });
})();
