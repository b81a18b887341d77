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
  };
  // Timings read by the benchmark and the browser test (milliseconds since navigation).
  const timings = (window.explorerTimings = { mapRendered: null, lastSearchMs: null });
  window.explorerLastSearch = null; // {body, count} of the last similarity search

  // Footprints per request (?limit= in the page URL; the server allows up to 100000).
  const footprintLimit = parseInt(new URLSearchParams(location.search).get("limit"), 10) || 10000;

  const map = L.map("map", { preferCanvas: true, attributionControl: false });
  map.setView([20, 0], 2);
  const examplesLayer = L.layerGroup().addTo(map);
  const resultsLayer = L.layerGroup().addTo(map);

  function status(text, isError) {
    $("status").textContent = text;
    $("status").classList.toggle("error", Boolean(isError));
  }

  async function getJSON(url, options) {
    const response = await fetch(url, options);
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
    for (const c of body.collections) select.add(new Option(c.title || c.id, c.id));
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
    showExamples();
    $("item").hidden = true;
    const [collection, fc] = await Promise.all([
      getJSON(`collections/${enc(cid)}`),
      getJSON(`collections/${enc(cid)}/explorer/features?limit=${footprintLimit}`),
    ]);
    state.collection = collection;
    state.large = fc.truncated;
    drawFootprints(fc);
    if (fc.features.length) map.fitBounds(state.footprints.getBounds(), { padding: [20, 20] });
    showLegend(fc.legend);
    await afterPaint();
    if (timings.mapRendered === null) timings.mapRendered = performance.now();
    document.body.dataset.collection = cid;
  }

  function drawFootprints(fc) {
    if (state.footprints) state.footprints.remove();
    state.byId.clear();
    state.footprints = L.geoJSON(fc, {
      style: (f) => ({ stroke: false, fillOpacity: 0.9, fillColor: f.properties.color || "#888" }),
      pointToLayer: (f, latlng) => L.circleMarker(latlng, { radius: 5 }),
      onEachFeature: (f, layer) => {
        state.byId.set(f.id, { layer, color: f.properties.color || "#888" });
        layer.on("click", (e) => onChipClick(f.id, e.originalEvent));
      },
    }).addTo(map);
    state.footprints.bringToBack();
    const more = fc.truncated ? ` (the first ${fc.numberReturned} here: zoom in for all)` : "";
    status(`${fc.numberReturned} chips${more}`);
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
    $("run-fewshot").disabled = state.positive.size === 0;
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
      distance.textContent = Number(item.properties["similarity:distance"]).toFixed(4);
      li.append(swatch, item.id, distance);
      li.addEventListener("click", () => showItem(item.id, item));
      list.append(li);
    });
    const ids = features.map((f) => f.id);
    $("export-link").href = `collections/${enc(state.collection.id)}/export?ids=` +
      ids.map(enc).join(",");
    $("export-link").hidden = ids.length === 0;
    $("results").hidden = false;
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
  map.on("moveend", () => refreshView().catch((err) => status(err.message, true)));
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
  window.explorerMap = map;

  loadCollections().catch((err) => status(err.message, true));
})();
