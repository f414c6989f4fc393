// The navigation's count of samples awaiting review, for quality users on every page: pages
// that know it render it, the others ask for it here.
(function () {
  const count = document.getElementById("awaiting");
  if (!count || count.textContent !== "") return;
  fetch("/api/samples/awaiting", {headers: {"Accept": "application/json"}})
    .then((reply) => (reply.ok ? reply.json() : null))
    .then((body) => {
      if (body && count.textContent === "") count.textContent = String(body.awaiting);
    });
})();
