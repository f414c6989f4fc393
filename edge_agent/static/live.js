// Replaces the page's live part with a fresh copy from /live every few seconds; the scroll
// position stays. Without JavaScript the page refreshes itself with <meta http-equiv=refresh>.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) return;
  var everyMs = Number(live.getAttribute("data-refresh-s") || 5) * 1000;

  function refresh() {
    fetch("/live", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        document.body.classList.remove("stale");
        // Not while a button is being pressed: the click would land on a replaced node.
        if (html !== null && !live.querySelector(":active")) live.innerHTML = html;
      })
      .catch(function () { document.body.classList.add("stale"); })
      .then(function () { window.setTimeout(refresh, everyMs); });
  }
  window.setTimeout(refresh, everyMs);
})();
