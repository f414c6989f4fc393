// Sample review with the keyboard: arrows move, a digit labels the focused frame with that
// class of its model (1 is the first), O or 0 labels it "ok", N opens the next page. Each label
// is posted with the session's CSRF token; the card shows it, the next card takes the focus,
// and the count of samples awaiting review (here and in the navigation) follows.
(function () {
  const grid = document.getElementById("grid");
  const cards = Array.from(grid.querySelectorAll(".card"));
  const csrf = grid.dataset.csrf;
  document.querySelectorAll("time").forEach((t) => {
    t.textContent = new Date(Number(t.textContent) * 1000).toLocaleString();
  });
  grid.querySelectorAll("img[data-fallback]").forEach((img) => {
    // Gateways keep an annotated copy only when configured to; the frame is always there.
    img.addEventListener("error", () => {
      if (img.src.endsWith(img.dataset.fallback)) return;
      img.src = img.dataset.fallback;
    });
  });
  if (cards.length) cards[0].focus();
  const current = () => cards.indexOf(document.activeElement);
  const move = (step) => {
    const next = cards[Math.min(cards.length - 1, Math.max(0, current() + step))];
    if (next) next.focus();
  };
  const showAwaiting = (count) => {
    document.querySelectorAll("#awaiting, #queue-awaiting").forEach((el) => {
      el.textContent = String(count);
    });
  };
  async function label(card, trueLabel) {
    const shown = card.querySelector(".verdict");
    const reply = await fetch(card.dataset.url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify({true_label: trueLabel}),
    });
    if (!reply.ok) {
      shown.classList.add("refused");
      shown.textContent = "not saved: " + (await reply.text());
      return;
    }
    const saved = await reply.json();
    shown.classList.remove("refused");
    shown.textContent = saved.true_label;
    card.classList.add("labelled");
    showAwaiting(saved.awaiting);
    move(1);
  }
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("form") || event.ctrlKey || event.altKey || event.metaKey) return;
    const card = document.activeElement.closest(".card");
    const key = event.key.toLowerCase();
    if (key === "arrowright" || key === "j") move(1);
    else if (key === "arrowleft" || key === "k") move(-1);
    else if (key === "n" && document.getElementById("next")) location = document.getElementById("next").href;
    else if (!csrf || !card) return;
    else if (key === "o" || key === "0") label(card, "ok");
    else if (/^[1-9]$/.test(key)) {
      const chosen = JSON.parse(card.dataset.classes)[Number(key) - 1];
      if (!chosen) return;
      label(card, chosen);
    } else return;
    event.preventDefault();
  });
  // From here on the keys work: a browser test waits for this before it presses them.
  grid.dataset.ready = "true";
})();
