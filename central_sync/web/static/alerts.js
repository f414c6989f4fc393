// The banner on every page: how many alerts are open, from /api/alerts/summary at load and
// every 10 s; red while a critical one is unacknowledged, amber otherwise, hidden when none.
(function () {
  const banner = document.getElementById("alert-banner");
  if (!banner) return;
  const REFRESH_MS = 10000;

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  function show(summary) {
    if (!summary || summary.open === 0) {
      banner.hidden = true;
      banner.replaceChildren();
      return;
    }
    const details = [];
    if (summary.critical) details.push(summary.critical + " critical, unacknowledged");
    else if (summary.unacked) details.push(summary.unacked + " unacknowledged");
    if (summary.silenced) details.push(summary.silenced + " silenced");
    const link = document.createElement("a");
    link.href = "/alerts";
    link.textContent = plural(summary.open, "open alert")
      + (details.length ? " (" + details.join(", ") + ")" : "")
      + (summary.newest ? " \u2014 newest: " + summary.newest.summary : "");
    banner.replaceChildren(link);
    banner.className = summary.critical ? "critical" : "warning";
    banner.dataset.open = String(summary.open);
    banner.hidden = false;
  }

  function refresh() {
    fetch("/api/alerts/summary", {headers: {"Accept": "application/json"}})
      .then((reply) => (reply.ok ? reply.json() : null))
      .then(show)
      .catch(() => {});  // central unreachable for a moment: the banner keeps what it said
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
