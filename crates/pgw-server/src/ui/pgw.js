// pgw web page: delete buttons (search and paging are a GET form and plain links). Paths
// come from data attributes and are relative to the page, so they work under any route
// prefix.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  function send(method, path, done) {
    fetch(path, { method: method }).then(function (r) {
      if (r.status === 202) {
        done();
      } else {
        r.text().then(function (t) { alert(method + " " + path + " failed: " + r.status + " " + t); });
      }
    }, function (e) { alert(method + " " + path + " failed: " + e); });
  }
  document.querySelectorAll("button[data-delete]").forEach(function (b) {
    b.addEventListener("click", function (ev) {
      ev.preventDefault();
      ev.stopPropagation();
      var group = b.closest("details");
      var labels = Array.prototype.map.call(group.querySelectorAll("summary > .badge:not(.failed)"),
        function (s) { return s.textContent; }).join(", ");
      if (!confirm("Do you really want to delete all metrics of group {" + labels + "}?")) { return; }
      send("DELETE", b.getAttribute("data-delete"), function () { group.remove(); });
    });
  });
  document.querySelectorAll("button[data-wipe]").forEach(function (b) {
    b.addEventListener("click", function (ev) {
      ev.preventDefault();
      if (!confirm("Do you really want to delete all metrics from all metric groups?")) { return; }
      // Reload: the count, the pager and the other pages changed too.
      send("PUT", b.getAttribute("data-wipe"), function () { location.reload(); });
    });
  });
});
