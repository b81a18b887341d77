// embcat explorer: chips on a map in false colour; click a chip to see what is similar.
// Every request goes to the embcat server that served this page (relative URLs).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const state = {
    collection: null, // the selected collection's STAC JSON
    footprints: null, // Leaflet layer of the collection's chips
    byId: new Map(), // item id -> {layer, color}
    results: [], // the last search's items, best first
    positive: new Set(),
    negative: new Set(),
    viewRequest: null, // AbortController of the footprint request for the current view
    scored: null, // the last "score this view" answer: {doc, scores: Map id -> score}
    view: "embedding", // "embedding" (false colours) or "imagery" (imagery under outlines)
    quicklooks: [], // the collection's scene quicklooks: {href, bounds: [[s, w], [n, e]]}
  };
  // Chip thumbnails drawn at once when a collection has no scene quicklooks.
  const CHIP_IMAGE_LIMIT = 600;
  // Timings read by the benchmark and the browser test (milliseconds since navigation).
  const timings = (window.explorerTimings = { mapRendered: null, lastSearchMs: null });
  window.explorerLastSearch = null; // {body, count} of the last similarity search
  window.explorerLastScore = null; // {body, count} of the last score request
  window.explorerLastExport = null; // the last exported detections (GeoJSON object)

  // Footprints per request (?limit= in the page URL; the server allows up to 100000).
  const footprintLimit = parseInt(new URLSearchParams(location.search).get("limit"), 10) || 10000;

  const map = L.map("map", { preferCanvas: true, attributionControl: false });
  map.setView([20, 0], 2);
  L.control.scale({ imperial: false }).addTo(map);
  map.on("mousemove", (e) => {
    $("coords").textContent = `${e.latlng.lat.toFixed(5)}, ${e.latlng.lng.toFixed(5)}`;
  });
  // The imagery lies under the footprints (the overlay pane is at z-index 400).
  map.createPane("imagery").style.zIndex = 350;
  const imageryLayer = L.layerGroup();
  const examplesLayer = L.layerGroup().addTo(map);
  const resultsLayer = L.layerGroup().addTo(map);

  function status(text, isError) {
    $("status").textContent = text;
    $("status").classList.toggle("error", Boolean(isError));
  }

  // A busy server answers 429 (this client has too many requests in flight: the page's
  // thumbnails count too) or 503 (saturated), both with Retry-After: wait that long (with
  // jitter, at most 5 s) and ask again, up to RETRIES times, before reporting the error.
  const RETRIES = 5;
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

  async function getJSON(url, options, attempt = 0) {
    const response = await fetch(url, options);
    if ((response.status === 429 || response.status === 503) && attempt < RETRIES) {
      const after = Math.min(Number(response.headers.get("Retry-After")) || 1, 5);
      await sleep(after * 1000 * (0.5 + Math.random() / 2));
      return getJSON(url, options, attempt + 1); // an aborted request's fetch throws
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      throw new Error((body && body.description) || `${response.status} ${response.statusText}`);
    }
    return body;
  }

  const afterPaint = () => new Promise((done) => requestAnimationFrame(() => setTimeout(done)));

  // --- collections and footprints -----------------------------------------------------

  async function loadCollections() {
    const body = await getJSON("collections?limit=1000");
    const select = $("collection");
    const titles = new Map();
    for (const c of body.collections) {
      const t = c.title || c.id;
      titles.set(t, (titles.get(t) || 0) + 1);
    }
    for (const c of body.collections) {
      const t = c.title || c.id;
      select.add(new Option(titles.get(t) > 1 && t !== c.id ? `${t} (${c.id})` : t, c.id));
    }
    const wanted = new URLSearchParams(location.search).get("collection");
    if (wanted) select.value = wanted;
    if (select.value) await showCollection(select.value);
    else status("no collections in this catalogue");
  }

  async function showCollection(cid) {
    if (state.viewRequest) state.viewRequest.abort();
    status(`loading ${cid}…`);
    clearResults();
    state.positive.clear();
    state.negative.clear();
    state.scored = null;
    $("score-summary").textContent = "";
    $("export-detections").disabled = true;
    $("clear-score").disabled = true;
    showExamples();
    $("item").hidden = true;
    const [collection, fc] = await Promise.all([
      getJSON(`collections/${enc(cid)}`),
      getJSON(`collections/${enc(cid)}/explorer/features?limit=${footprintLimit}`),
    ]);
    state.collection = collection;
    state.large = fc.truncated;
    state.quicklooks = quicklookAssets(collection);
    imageryLayer.clearLayers();
    drawFootprints(fc);
    if (fc.features.length) map.fitBounds(state.footprints.getBounds(), { padding: [20, 20] });
    drawImagery();
    showLegend(fc.legend);
    await afterPaint();
    if (timings.mapRendered === null) timings.mapRendered = performance.now();
    document.body.dataset.collection = cid;
  }

  // A colour that shows on the dark map: very dark false colours are lifted towards grey
  // (the hue is kept), so that no cluster is drawn black on black.
  function visible(hex) {
    const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex || "");
    if (!m) return "#888";
    const rgb = m.slice(1).map((v) => parseInt(v, 16));
    const luma = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255;
    if (luma >= 0.25) return hex.toLowerCase();
    const lift = (0.25 - luma) / 0.25 * 0.45;
    const out = rgb.map((v) => Math.round(v + (200 - v) * lift));
    return "#" + out.map((v) => v.toString(16).padStart(2, "0")).join("");
  }

  // --- imagery -----------------------------------------------------------------------------

  // Scene quicklooks: the collection's assets with the "overview" role and their bounds.
  function quicklookAssets(collection) {
    const out = [];
    for (const asset of Object.values(collection.assets || {})) {
      const b = asset["embcat:bbox"];
      if ((asset.roles || []).includes("overview") && Array.isArray(b) && b.length === 4) {
        out.push({ href: asset.href, title: asset.title, bounds: [[b[1], b[0]], [b[3], b[2]]] });
      }
    }
    return out;
  }

  function thumbnailUrl(itemId) {
    return `collections/${enc(state.collection.id)}/items/${enc(itemId)}/thumbnail.png`;
  }

  function thumbnailImg(itemId, href, className) {
    const img = Object.assign(document.createElement("img"), {
      className: `thumb ${className || ""}`.trim(), alt: "", title: itemId, loading: "lazy",
      src: href || thumbnailUrl(itemId),
    });
    img.addEventListener("error", () => img.classList.add("missing"));
    return img;
  }

  // The imagery layer: scene quicklooks as image overlays at their bounds, or (collections
  // without quicklooks) the thumbnails of the chips in view, up to CHIP_IMAGE_LIMIT.
  function drawImagery() {
    imageryLayer.clearLayers();
    if (state.view !== "imagery" || !state.collection) return;
    const note = $("imagery-note");
    if (state.quicklooks.length) {
      for (const q of state.quicklooks) {
        L.imageOverlay(q.href, q.bounds, { pane: "imagery", alt: q.title || "" })
          .addTo(imageryLayer);
      }
      note.textContent = `${state.quicklooks.length} scene quicklook(s).`;
      return;
    }
    const view = map.getBounds();
    let drawn = 0;
    let inView = 0;
    for (const [id, chip] of state.byId) {
      const bounds = chip.layer.getBounds ? chip.layer.getBounds() : null;
      if (!bounds || !view.intersects(bounds)) continue;
      inView += 1;
      if (drawn >= CHIP_IMAGE_LIMIT) continue;
      const overlay = L.imageOverlay(thumbnailUrl(id), bounds, { pane: "imagery" });
      overlay.on("error", () => overlay.remove());
      overlay.addTo(imageryLayer);
      drawn += 1;
    }
    note.textContent = inView > drawn
      ? `chip thumbnails: ${drawn} of the ${inView} chips in view (zoom in for all).`
      : `chip thumbnails of the ${drawn} chips in view.`;
  }

  function setView(view) {
    state.view = view;
    document.body.dataset.view = view;
    if (view === "imagery") imageryLayer.addTo(map);
    else imageryLayer.remove();
    $("imagery-note").textContent = "";
    drawImagery();
    recolour();
  }

  // A chip's style: its false colour (or score) filled, or in imagery view an outline only
  // (detections of a score stay tinted), so that the imagery shows through.
  function chipStyle(chip, score) {
    const t = threshold();
    const imagery = state.view === "imagery";
    if (state.scored) {
      if (score !== undefined && score >= t) {
        return { fillColor: ramp((score - t) / Math.max(1 - t, 1e-6)),
          fillOpacity: imagery ? 0.5 : 0.95, stroke: imagery, color: "#fff", weight: 0.5,
          opacity: 0.5 };
      }
      return { fillColor: "#555", fillOpacity: imagery ? 0 : score === undefined ? 0.15 : 0.35,
        stroke: imagery, color: "#fff", weight: 0.5, opacity: 0.35 };
    }
    if (imagery) {
      return { fillColor: chip.color, fillOpacity: 0, stroke: true, color: "#ffffff",
        weight: 0.5, opacity: 0.35 };
    }
    return { fillColor: chip.color, fillOpacity: 0.9, stroke: false };
  }

  function drawFootprints(fc) {
    if (state.footprints) state.footprints.remove();
    state.byId.clear();
    state.footprints = L.geoJSON(fc, {
      style: (f) => chipStyle({ color: visible(f.properties.color) }, undefined),
      pointToLayer: (f, latlng) => L.circleMarker(latlng, { radius: 5 }),
      onEachFeature: (f, layer) => {
        state.byId.set(f.id, { layer, color: visible(f.properties.color) });
        layer.on("click", (e) => onChipClick(f.id, e.originalEvent));
      },
    }).addTo(map);
    state.footprints.bringToBack();
    const more = fc.truncated ? ` (the first ${fc.numberReturned} here: zoom in for all)` : "";
    status(`${fc.numberReturned} chips${more}`);
    if (state.scored) recolour();
    if (state.view === "imagery" && !state.quicklooks.length) drawImagery();
  }

  // A collection larger than one response is re-fetched for the view after each move.
  // Only the latest view's response is drawn: a slower answer for an earlier view (the
  // fitBounds after loading, or a pan) is aborted, never drawn over the current one.
  async function refreshView() {
    if (!state.large || !state.collection) return;
    if (state.viewRequest) state.viewRequest.abort();
    const request = (state.viewRequest = new AbortController());
    const cid = state.collection.id;
    let fc;
    try {
      fc = await getJSON(
        `collections/${enc(cid)}/explorer/features?limit=${footprintLimit}&bbox=${viewBbox()}`,
        { signal: request.signal },
      );
    } catch (err) {
      if (request.signal.aborted) return;
      throw err;
    }
    if (state.viewRequest !== request) return;
    state.viewRequest = null;
    if (state.collection && state.collection.id === cid) drawFootprints(fc);
  }

  function showLegend(legend) {
    const list = $("legend-channels");
    list.replaceChildren();
    const colours = { red: "#e33", green: "#3b3", blue: "#36e" };
    for (const ch of legend.channels) {
      const li = document.createElement("li");
      li.style.setProperty("--swatch", colours[ch.channel]);
      const share = (100 * ch.explained_variance_ratio).toFixed(1);
      li.textContent = `${ch.channel}: PC${ch.component} (${share} % of variance)`;
      list.append(li);
    }
    $("legend-note").textContent = legend.items
      ? `Each channel spans ${legend.scaling}; PCA fitted on ${legend.sample_size} of ` +
        `${legend.items} vectors. Similar colours: similar embeddings.`
      : "This collection has no vectors yet: chips are grey.";
  }

  // --- similarity search -----------------------------------------------------------------

  function onChipClick(itemId, event) {
    // Click-to-results is timed from the DOM event (same clock as performance.now()).
    const clickedAt = event && event.timeStamp ? event.timeStamp : performance.now();
    const ref = { collection: state.collection.id, id: itemId };
    showItem(itemId);
    if (!$("fewshot").checked) {
      search({ item: ref }, [itemId], clickedAt);
      return;
    }
    const [add, other] = event && event.shiftKey
      ? [state.negative, state.positive] : [state.positive, state.negative];
    other.delete(itemId);
    if (add.has(itemId)) add.delete(itemId);
    else add.add(itemId);
    showExamples();
  }

  function showExamples() {
    examplesLayer.clearLayers();
    for (const [set, color] of [[state.positive, "#1a7f37"], [state.negative, "#c0392b"]]) {
      for (const id of set) outline(examplesLayer, id, color, 3);
    }
    $("examples").innerHTML = "";
    $("examples").append(
      Object.assign(document.createElement("span"), {
        className: "examples-positive", textContent: `${state.positive.size} positive`,
      }),
      ", ",
      Object.assign(document.createElement("span"), {
        className: "examples-negative", textContent: `${state.negative.size} negative`,
      }),
    );
    const thumbs = $("example-thumbs");
    thumbs.replaceChildren();
    for (const [set, kind] of [[state.positive, "positive"], [state.negative, "negative"]]) {
      for (const id of set) thumbs.append(thumbnailImg(id, null, kind));
    }
    $("run-fewshot").disabled = state.positive.size === 0;
    $("run-score").disabled = state.positive.size === 0;
  }

  // --- scoring the view ------------------------------------------------------------------

  // Scores from the threshold (dark blue) to 1 and above (yellow); chips below it are dimmed.
  const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function ramp(t) {
    const x = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
    const i = Math.min(Math.floor(x), RAMP.length - 2);
    const f = x - i;
    const c = RAMP[i].map((v, k) => Math.round(v + (RAMP[i + 1][k] - v) * f));
    return "#" + c.map((v) => v.toString(16).padStart(2, "0")).join("");
  }

  function threshold() {
    return parseFloat($("threshold").value);
  }

  function recolour() {
    const t = threshold();
    $("threshold-value").textContent = t.toFixed(2);
    let kept = 0;
    for (const [id, chip] of state.byId) {
      const s = state.scored ? state.scored.scores.get(id) : undefined;
      if (s !== undefined && s >= t) kept += 1;
      chip.layer.setStyle(chipStyle(chip, s));
    }
    if (state.scored) {
      const total = state.scored.scores.size;
      $("score-summary").textContent =
        `${kept} of ${total} scored chips at score ≥ ${t.toFixed(2)} (positives average 1).`;
      document.body.dataset.detections = String(kept);
    }
  }

  async function scoreView() {
    const ref = (id) => ({ collection: state.collection.id, id });
    const f = filters();
    const body = {
      positive: [...state.positive].map(ref),
      negative: [...state.negative].map(ref),
      method: "linear",
      bbox: viewBbox(),
      threshold: parseFloat($("threshold").min),
    };
    if (f.datetime) body.datetime = f.datetime;
    status("scoring the view…");
    const started = performance.now();
    try {
      const doc = await getJSON(`collections/${enc(state.collection.id)}/score`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const scores = new Map(doc.features.map((x) => [x.id, x.properties.score]));
      state.scored = { doc, scores, body };
      recolour();
      $("export-detections").disabled = false;
      $("clear-score").disabled = false;
      await afterPaint();
      window.explorerLastScore = { body, count: doc.features.length };
      status(`scored ${doc.features.length} chips in ${(performance.now() - started).toFixed(0)} ms`);
    } catch (err) {
      status(`scoring failed: ${err.message}`, true);
    }
  }

  function exportDetections() {
    if (!state.scored) return;
    const t = threshold();
    const { doc } = state.scored;
    const model = { ...doc["embcat:score"], threshold: t };
    const out = {
      type: "FeatureCollection",
      "embcat:score": model,
      features: doc.features.filter((x) => x.properties.score >= t),
    };
    window.explorerLastExport = out;
    const blob = new Blob([JSON.stringify(out)], { type: "application/geo+json" });
    const a = Object.assign(document.createElement("a"), {
      href: URL.createObjectURL(blob),
      download: `${state.collection.id}-detections.geojson`,
    });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }

  function viewBbox() {
    const b = map.getBounds();
    const clamp = (v, lim) => Math.max(-lim, Math.min(lim, v));
    return [clamp(b.getWest(), 180), clamp(b.getSouth(), 90),
      clamp(b.getEast(), 180), clamp(b.getNorth(), 90)];
  }

  function filters() {
    const body = { collections: [state.collection.id] };
    body.limit = Math.max(1, Math.min(500, parseInt($("k").value, 10) || 10));
    if ($("use-bbox").checked) body.bbox = viewBbox();
    const from = $("date-from").value;
    const to = $("date-to").value;
    if (from || to) {
      body.datetime = `${from ? from + "T00:00:00Z" : ".."}/${to ? to + "T23:59:59Z" : ".."}`;
    }
    return body;
  }

  async function search(similarity, queryIds, started = performance.now()) {
    // Ask for the parts the page shows (the Fields extension may default to fewer).
    const fields = { include: ["properties", "assets", "links"] };
    const body = { ...filters(), similarity, fields };
    status("searching…");
    try {
      const page = await getJSON("search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (page.features.some((f) => typeof f.properties["similarity:distance"] !== "number")) {
        throw new Error("the server returned results without similarity:distance");
      }
      showResults(page.features, queryIds);
      await afterPaint();
      timings.lastSearchMs = performance.now() - started;
      window.explorerLastSearch = { body, count: page.features.length };
      status(`${page.features.length} similar chips in ${timings.lastSearchMs.toFixed(0)} ms`);
    } catch (err) {
      status(`search failed: ${err.message}`, true);
    }
  }

  function clearResults() {
    resultsLayer.clearLayers();
    state.results = [];
    $("result-list").replaceChildren();
    $("results").hidden = true;
  }

  function outline(layerGroup, itemId, color, weight) {
    const chip = state.byId.get(itemId);
    if (!chip) return null;
    const feature = chip.layer.feature;
    const shape = feature.geometry.type === "Point"
      ? L.circleMarker(chip.layer.getLatLng(), { radius: 7, color, weight, fill: false,
        interactive: false })
      : L.geoJSON(feature, { style: { color, weight, fill: false }, interactive: false });
    shape.addTo(layerGroup);
    return shape;
  }

  function showResults(features, queryIds) {
    clearResults();
    state.results = features;
    for (const id of queryIds) outline(resultsLayer, id, "#ffffff", 3);
    const list = $("result-list");
    const shown = distanceTexts(features.map((f) => Number(f.properties["similarity:distance"])));
    features.forEach((item, i) => {
      const chip = state.byId.get(item.id);
      const shape = outline(resultsLayer, item.id, "#e0a800", 2);
      if (shape) {
        const at = shape.getBounds ? shape.getBounds().getCenter() : shape.getLatLng();
        L.marker(at, {
          icon: L.divIcon({ className: "rank-label", html: String(i + 1), iconSize: [18, 18] }),
          interactive: false,
        }).addTo(resultsLayer);
      }
      const li = document.createElement("li");
      li.dataset.id = item.id;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = chip ? chip.color : "#888";
      const distance = document.createElement("span");
      distance.className = "distance";
      distance.textContent = shown[i];
      const thumb = item.assets && item.assets.thumbnail;
      li.append(thumbnailImg(item.id, thumb && thumb.href), swatch, item.id, distance);
      li.addEventListener("click", () => showItem(item.id, item));
      list.append(li);
    });
    const ids = features.map((f) => f.id);
    $("export-link").href = `collections/${enc(state.collection.id)}/export?ids=` +
      ids.map(enc).join(",");
    $("export-link").hidden = ids.length === 0;
    $("results").hidden = false;
  }

  // Distances with 4 significant digits, more where neighbours would read the same (up
  // to 8): halfvec distances of near neighbours often differ past the fourth decimal.
  function distanceTexts(values) {
    let digits = 4;
    const texts = (d) => values.map((v) => (v === 0 ? "0" : v.toPrecision(d)));
    let out = texts(digits);
    const clash = (t) => t.some((x, i) => i > 0 && x === t[i - 1] && values[i] !== values[i - 1]);
    while (digits < 8 && clash(out)) out = texts(++digits);
    return out;
  }

  // --- item panel ----------------------------------------------------------------------

  function encoderText(c) {
    const space = c["embcat:space"] || {};
    const name = c["mlm:name"] || space.encoder || "unknown";
    const parts = [name, c["mlm:architecture"], space.version && `version ${space.version}`,
      c["emb:dimensions"] && `${c["emb:dimensions"]} dimensions`, space.metric];
    return parts.filter(Boolean).join(", ");
  }

  async function showItem(itemId, known) {
    const cid = state.collection.id;
    let item = known;
    try {
      item = item || (await getJSON(`collections/${enc(cid)}/items/${enc(itemId)}`));
    } catch (err) {
      status(`item ${itemId}: ${err.message}`, true);
      return;
    }
    const rows = [
      ["id", item.id],
      ["datetime", item.properties.datetime ||
        `${item.properties.start_datetime} – ${item.properties.end_datetime}`],
      ["encoder", encoderText(state.collection)],
    ];
    const sources = (item.links || []).filter((l) => l.rel === "derived_from");
    for (const l of sources) rows.push(["source scene", link(l.href, l.title || l.href)]);
    const thumb = item.assets && item.assets.thumbnail;
    if (thumb) {
      const img = thumbnailImg(item.id, thumb.href);
      img.id = "item-thumb";
      rows.splice(1, 0, ["thumbnail", img]);
    }
    const vector = item.assets && item.assets.embeddings;
    if (vector) rows.push(["vector", link(vector.href, "download (.npy)")]);
    const dl = $("item-details");
    dl.replaceChildren();
    for (const [key, value] of rows) {
      const dd = document.createElement("dd");
      dd.append(value);
      dl.append(Object.assign(document.createElement("dt"), { textContent: key }), dd);
    }
    $("item").hidden = false;
  }

  function link(href, text) {
    return Object.assign(document.createElement("a"), { href, textContent: text });
  }

  // --- wiring ----------------------------------------------------------------------------

  $("collection").addEventListener("change", (e) => {
    const url = new URL(location.href);
    url.searchParams.set("collection", e.target.value);
    history.replaceState(null, "", url);
    showCollection(e.target.value).catch((err) => status(err.message, true));
  });
  map.on("moveend", () => {
    if (state.view === "imagery" && !state.quicklooks.length && !state.large) drawImagery();
    refreshView().catch((err) => status(err.message, true));
  });
  for (const radio of document.querySelectorAll('input[name="view"]')) {
    radio.addEventListener("change", (e) => setView(e.target.value));
  }
  $("fewshot").addEventListener("change", (e) => {
    $("fewshot-controls").hidden = !e.target.checked;
  });
  $("run-fewshot").addEventListener("click", () => {
    const ref = (id) => ({ collection: state.collection.id, id });
    search({
      positive: [...state.positive].map(ref),
      negative: [...state.negative].map(ref),
      method: "prototype",
    }, [...state.positive]);
  });
  $("run-score").addEventListener("click", () => scoreView());
  $("threshold").addEventListener("input", () => recolour());
  $("export-detections").addEventListener("click", () => exportDetections());
  $("clear-score").addEventListener("click", () => {
    state.scored = null;
    recolour();
    $("score-summary").textContent = "";
    $("export-detections").disabled = true;
    $("clear-score").disabled = true;
  });
  $("clear-examples").addEventListener("click", () => {
    state.positive.clear();
    state.negative.clear();
    showExamples();
    clearResults();
  });
  // For tests and benchmarks: where a chip is on screen (container pixels), or null.
  window.explorerChipPoint = (itemId) => {
    const chip = state.byId.get(itemId);
    if (!chip) return null;
    const at = chip.layer.getBounds ? chip.layer.getBounds().getCenter() : chip.layer.getLatLng();
    const p = map.latLngToContainerPoint(at);
    return { x: p.x, y: p.y };
  };
  window.explorerChipIds = () => [...state.byId.keys()];
  window.explorerChipFill = (itemId) => {
    const chip = state.byId.get(itemId);
    return chip ? chip.layer.options.fillColor : null;
  };
  window.explorerChipOpacity = (itemId) => {
    const chip = state.byId.get(itemId);
    return chip ? chip.layer.options.fillOpacity : null;
  };
  window.explorerVisibleColour = visible;
  window.explorerDistanceTexts = distanceTexts;
  // The imagery layer's images: [{src, complete (loaded), width}] (for tests).
  window.explorerImagery = () => [...document.querySelectorAll(".leaflet-imagery-pane img")]
    .map((img) => ({ src: img.src, complete: img.complete && img.naturalWidth > 0 }));
  window.explorerMap = map;

  document.body.dataset.view = state.view;
    loadCollections().catch((err) => status(err.message, true));
})();
