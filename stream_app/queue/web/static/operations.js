/* The operations charts: the service's /operations/data (Prometheus, queried server side
   with the Grafana dashboard's queries) drawn with uPlot; refreshed every 15 s. */
(function () {
  "use strict";
  var root = document.getElementById("charts");
  var hours = root.dataset.hours;
  var plots = {};
  var palette = ["#0b57d0", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#1098ad", "#5c940d", "#e67700",
                 "#495057", "#862e9c"];

  function fmt(v, unit) {
    if (v === null || v === undefined) { return "no data"; }
    if (unit === "$") { return "$" + v.toLocaleString(undefined, { maximumFractionDigits: 2 }); }
    var digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 1 ? 2 : 4;
    return v.toLocaleString(undefined, { maximumFractionDigits: digits }) + " " + unit;
  }

  function width(el) { return Math.max(300, el.clientWidth - 4); }

  function lineChart(chart, el) {
    var data = [chart.times];
    var series = [{}];
    chart.series.forEach(function (s, i) {
      data.push(s.values);
      series.push({ label: s.label, stroke: palette[i % palette.length], width: 1.5, spanGaps: false });
    });
    return new uPlot({ width: width(el), height: 220, series: series,
                       axes: [{}, { size: 60 }], legend: { live: false } }, data, el);
  }

  function histogramChart(chart, el) {
    var xs = chart.buckets.map(function (_, i) { return i; });
    var ys = chart.buckets.map(function (b) { return b.count; });
    var labels = chart.buckets.map(function (b) { return b.label; });
    return new uPlot({
      width: width(el), height: 220,
      scales: { x: { time: false, range: [-0.5, xs.length - 0.5] } },
      axes: [{ values: function (u, splits) { return splits.map(function (v) { return labels[v] || ""; }); },
               splits: function () { return xs; }, size: 40 }, { size: 60 }],
      series: [{}, { label: chart.unit, fill: "rgba(11,87,208,0.35)", stroke: "#0b57d0",
                     paths: uPlot.paths.bars({ size: [0.8] }), points: { show: false } }],
      legend: { show: false }
    }, [xs, ys], el);
  }

  function summary(chart) {
    if (chart.kind === "histogram") {
      if (!chart.buckets.length) { return "No data in this window."; }
      return chart.buckets.map(function (b) { return b.label + ": " + Math.round(b.count); }).join(" · ");
    }
    var parts = Object.keys(chart.latest).map(function (k) { return k + " " + fmt(chart.latest[k], chart.unit); });
    if (!parts.length) { return "No data in this window."; }
    return "Latest: " + parts.join(" · ") + (parts.length > 1 ? " · total " + fmt(chart.latest_total, chart.unit) : "");
  }

  function draw(body) {
    var errors = document.getElementById("ops-errors");
    errors.hidden = !body.errors.length;
    errors.textContent = body.errors.join(" ");
    body.charts.forEach(function (chart) {
      var el = document.getElementById("plot-" + chart.id);
      var latest = document.getElementById("latest-" + chart.id);
      if (!el) { return; }
      if (plots[chart.id]) { plots[chart.id].destroy(); }
      el.textContent = "";
      var hasData = chart.kind === "histogram" ? chart.buckets.length > 0 : chart.series.length > 0;
      el.dataset.series = hasData ? String(chart.kind === "histogram" ? chart.buckets.length : chart.series.length) : "0";
      latest.dataset.latestTotal = chart.latest_total === null ? "" : String(chart.latest_total);
      latest.textContent = summary(chart);
      if (hasData) { plots[chart.id] = chart.kind === "histogram" ? histogramChart(chart, el) : lineChart(chart, el); }
      else { plots[chart.id] = null; }
    });
    root.dataset.loaded = new Date().toISOString();
  }

  function load() {
    fetch("/operations/data?hours=" + encodeURIComponent(hours), { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        return r.json();
      })
      .then(function (body) { if (body) { draw(body); } })
      .catch(function (e) {
        var errors = document.getElementById("ops-errors");
        errors.hidden = false;
        errors.textContent = "Could not load the charts: " + e;
      });
  }
  load();
  window.setInterval(load, 15000);
})();
