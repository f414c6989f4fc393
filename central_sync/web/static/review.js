// Defect review with the keyboard: arrows move, C confirms, F marks a false alarm,
// R then a digit relabels with that class, N opens the next page. Each answer is posted
// with the session's CSRF token; the card shows it and the next card takes the focus.
(function () {
  const grid = document.getElementById("grid");
  const cards = Array.from(grid.querySelectorAll(".card"));
  const csrf = grid.dataset.csrf;
  const labels = grid.dataset.labels ? grid.dataset.labels.split(",") : [];
  let relabelling = false;
  document.querySelectorAll("time").forEach((t) => {
    t.textContent = new Date(Number(t.textContent) * 1000).toLocaleString();
  });
  if (cards.length) cards[0].focus();
  const current = () => cards.indexOf(document.activeElement);
  const move = (step) => {
    const next = cards[Math.min(cards.length - 1, Math.max(0, current() + step))];
    if (next) next.focus();
  };
  async function answer(card, verdict, trueLabel) {
    const reply = await fetch(card.dataset.url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify({verdict: verdict, true_label: trueLabel || null}),
    });
    if (!reply.ok) {
      card.querySelector(".verdict").textContent = "not saved: " + (await reply.text());
      return;
    }
    const saved = await reply.json();
    card.classList.remove("confirmed", "false_alarm", "relabelled");
    card.classList.add(saved.verdict);
    card.querySelector(".verdict").textContent = saved.verdict.replace("_", " ") +
      (saved.verdict === "relabelled" ? " as " + saved.true_label : "");
    move(1);
  }
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("form")) return;
    const card = document.activeElement.closest(".card");
    const key = event.key.toLowerCase();
    if (relabelling) {
      relabelling = false;
      const chosen = labels[Number(key) - 1];
      if (card && chosen) answer(card, "relabelled", chosen);
      return;
    }
    if (key === "arrowright" || key === "j") move(1);
    else if (key === "arrowleft" || key === "k") move(-1);
    else if (key === "n" && document.getElementById("next")) location = document.getElementById("next").href;
    else if (!csrf || !card) return;
    else if (key === "c") answer(card, "confirmed");
    else if (key === "f") answer(card, "false_alarm");
    else if (key === "r") {
      relabelling = true;
      card.querySelector(".verdict").textContent = "relabel as: " +
        labels.map((l, i) => (i + 1) + " " + l).join(", ");
    } else return;
    event.preventDefault();
  });
  // From here on the keys work: a browser test waits for this before it presses them.
  grid.dataset.ready = "true";
})();
