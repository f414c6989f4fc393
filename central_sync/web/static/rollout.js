// Follows a rollout: every 2 s the state and the device table are read again from the API,
// until the rollout ends.
(function () {
  const head = document.getElementById("rollout-state");
  const table = document.getElementById("rollout-devices");
  const ended = ["completed", "halted", "aborted", "rolled_back"];
  const cell = (text, cls) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  };
  async function refresh() {
    const reply = await fetch(head.dataset.url);
    if (!reply.ok) return setTimeout(refresh, 5000);
    const r = await reply.json();
    head.innerHTML = "";
    const state = document.createElement("span");
    state.className = "state " + r.state;
    state.textContent = r.state;
    head.append(state, ` · wave ${r.current_wave + 1} of ${r.waves} · ${r.target} · ${r.detail}`);
    table.querySelectorAll("tr:not(:first-child)").forEach((row) => row.remove());
    for (const d of r.devices) {
      const row = document.createElement("tr");
      row.append(cell(d.device_id), cell(String(d.wave + 1)), cell(d.state, "state " + d.state),
                 cell(d.detail));
      table.append(row);
    }
    if (!ended.includes(r.state)) setTimeout(refresh, 2000);
  }
  setTimeout(refresh, 2000);
})();
