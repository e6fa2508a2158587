// gantry dashboard: live updates only; every page reads without this.
// Text from the server is added with textContent, never as HTML.
"use strict";
(function () {
  // Live log tails: each <pre data-log-src> continues from where the page's
  // copy ended; when a run ends, the page reloads once to show its result.
  var open = 0;
  document.querySelectorAll("pre[data-log-src]").forEach(function (pre) {
    var source = new EventSource(pre.getAttribute("data-log-src"));
    open++;
    source.onmessage = function (e) {
      var stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.appendChild(document.createTextNode((pre.textContent ? "\n" : "") + e.data));
      if (stick) pre.scrollTop = pre.scrollHeight;
    };
    source.addEventListener("end", function () {
      source.close();
      if (--open === 0) setTimeout(function () { location.reload(); }, 500);
    });
  });
  // Parts marked data-refresh (the runs list, a running run's stages and
  // timeline) are refreshed in place from a fresh copy of the page.
  var parts = document.querySelectorAll("[data-refresh][id]");
  if (parts.length) {
    setInterval(function () {
      fetch(location.href, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (text) {
          if (!text) return;
          var fresh = new DOMParser().parseFromString(text, "text/html");
          parts.forEach(function (part) {
            var now = fresh.getElementById(part.id);
            if (now) part.replaceChildren.apply(part, Array.from(now.childNodes));
          });
        })
        .catch(function () {});
    }, 3000);
  }
})();
