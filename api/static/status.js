// Herald's status page: the named queries of /status/queries, redrawn every few seconds.
// Everything shown is set with textContent or as SVG attributes, never parsed as HTML.
"use strict";
(function () {
  const EVERY_MS = 5000;
  const SINGLE = new Set(["events", "lag", "api_p95"]);
  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...children) => {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) node.append(child);
    return node;
  };

  function format(value, unit) {
    if (value === null || value === undefined) return "–";
    if (unit === "s") return value < 1 ? (value * 1000).toFixed(1) + " ms" : value.toFixed(2) + " s";
    if (unit === "/s") return (value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2));
    return String(Math.round(value));  // counts: increase() over a window is extrapolated, not whole
  }

  function labelText(labels) {
    const parts = Object.keys(labels).sort().map((k) => labels[k]);
    return parts.length ? parts.join(" · ") : "all";
  }

  function renderPanel(panel) {
    const section = $(panel.name);
    if (!section) return;
    const body = section.querySelector(".body");
    body.replaceChildren();
    section.dataset.total = "0";
    if (!panel.series.length) {
      body.append(el("div", { className: "none", textContent: "no data yet" }));
      return;
    }
    const total = panel.series.reduce((sum, s) => sum + (s.value || 0), 0);
    section.dataset.total = String(total);
    if (SINGLE.has(panel.name) && panel.series.length === 1 && !Object.keys(panel.series[0].labels).length) {
      const big = el("div", { className: "big" }, format(panel.series[0].value, panel.unit));
      if (panel.unit === "/s") big.append(el("span", { className: "unit", textContent: "/s" }));
      body.append(big);
      return;
    }
    const table = el("table");
    for (const s of panel.series) {
      let value = format(s.value, panel.unit) + (panel.unit === "/s" ? " /s" : "");
      let cls = "v";
      if (panel.name === "processes") { value = s.value === 1 ? "up" : "DOWN"; cls += s.value === 1 ? " ok" : " bad"; }
      if (panel.name === "breakers") { value = s.labels.state || "?"; cls += value === "CLOSED" ? " ok" : " bad"; }
      const labels = Object.assign({}, s.labels);
      if (panel.name === "breakers") delete labels.state;
      table.append(el("tr", {}, el("td", { textContent: labelText(labels) }), el("td", { className: cls, textContent: value })));
    }
    body.append(table);
  }

  function renderHistory(history) {
    const svg = $("history");
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const points = history.points.filter((p) => p[1] !== null);
    svg.dataset.points = String(points.length);
    $("peak").textContent = "";
    if (points.length < 2) return;
    const w = 600, h = 140, top = 14;
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    const max = Math.max(...points.map((p) => p[1]), 0.001);
    const xy = points.map((p) => [((p[0] - t0) / Math.max(t1 - t0, 1)) * w, h - (p[1] / max) * (h - top)]);
    const d = xy.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" ");
    const area = document.createElementNS(ns, "path");
    area.setAttribute("class", "area");
    area.setAttribute("d", d + " L" + w + "," + h + " L0," + h + " Z");
    const line = document.createElementNS(ns, "path");
    line.setAttribute("class", "line");
    line.setAttribute("d", d);
    $("peak").textContent = "peak " + format(max, "/s") + " /s";
    svg.append(area, line);
  }

  async function refresh() {
    try {
      const response = await fetch("/status/queries", { cache: "no-store" });
      const data = await response.json();
      $("source").textContent = "Prometheus " + data.prometheus + " · " + new Date(data.at * 1000).toLocaleTimeString();
      $("problem").hidden = data.available;
      $("problem").textContent = data.available ? "" : data.error;
      for (const panel of data.panels) renderPanel(panel);
      renderHistory(data.history);
      document.body.dataset.updated = String(data.at);
    } catch (e) {
      $("problem").hidden = false;
      $("problem").textContent = "The API did not answer: " + e.message;
    }
  }

  refresh();
  setInterval(refresh, EVERY_MS);
})();
