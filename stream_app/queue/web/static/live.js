/* Live pages: poll the page's change marker (no PHI) every 2 s; when it moves, re-read the
   page and swap its [data-live] regions. Forms outside those regions keep what is typed. */
(function () {
  "use strict";
  // A page restored from the back-forward cache (e.g. after signing out) is fetched again.
  window.addEventListener("pageshow", function (e) { if (e.persisted) { window.location.reload(); } });
  var main = document.getElementById("main");
  if (!main || !main.dataset.liveUrl) { return; }
  var marker = main.dataset.liveMarker;
  var busy = false;
  var status = document.getElementById("live-status");

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    document.querySelectorAll("[data-live]").forEach(function (old) {
      var fresh = doc.getElementById(old.id);
      if (fresh) { old.replaceWith(document.importNode(fresh, true)); }
    });
    if (status) { status.textContent = "Updated " + new Date().toLocaleTimeString(); }
  }

  function poll() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(main.dataset.liveUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (body) {
        if (!body || body.marker === marker) { return null; }
        marker = body.marker;
        return fetch(window.location.href, { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.text() : null; })
          .then(function (html) { if (html) { swap(html); } });
      })
      .catch(function () { /* the next poll tries again */ })
      .then(function () { busy = false; });
  }
  window.setInterval(poll, 2000);
})();
