// The device page's live part: every 2 s the log tail (at the chosen level) and the requests
// are read again from the API; a new diagnosis reloads the page to show it. Restart buttons
// ask first.
(function () {
  const table = document.getElementById("log-tail");
  const level = document.getElementById("log-level");
  const diagnosis = document.getElementById("diagnosis");
  const requests = document.getElementById("requests");
  const box = table.parentElement;
  const cell = (text, cls) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  };
  const when = (at) => new Date(at * 1000).toLocaleString();
  const clear = (t) => t.querySelectorAll("tr:not(:first-child)").forEach((row) => row.remove());

  function showLogs(lines) {
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    clear(table);
    for (const line of lines) {
      const row = document.createElement("tr");
      row.className = "log-line " + line.level;
      row.append(cell(when(line.at)), cell(line.level), cell(line.logger), cell(line.message));
      table.append(row);
    }
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  function showRequests(list) {
    clear(requests);
    for (const r of list) {
      const answer = r.answered_at ? (r.ok ? "ok " : "refused ") + r.detail : "waiting";
      const row = document.createElement("tr");
      row.append(cell(when(r.issued_at)), cell(r.action), cell(r.issued_by),
                 cell(answer, r.answered_at ? (r.ok ? "good" : "bad") : ""));
      requests.append(row);
    }
  }

  async function load() {
    const reply = await fetch(`${table.dataset.url}?level=${encodeURIComponent(level.value)}`);
    if (!reply.ok) return;
    const live = await reply.json();
    showLogs(live.logs);
    showRequests(live.requests);
    const newest = live.diagnosis ? live.diagnosis.request_id : "";
    if (newest !== diagnosis.dataset.request) window.location.reload();
  }

  async function refresh() {
    try {
      await load();
    } finally {
      setTimeout(refresh, 2000);
    }
  }

  level.addEventListener("change", load);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  refresh();
})();
