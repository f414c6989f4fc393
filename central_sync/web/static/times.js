// Times are sent as Unix seconds and shown in the reader's local time.
document.querySelectorAll("time").forEach((t) => {
  t.textContent = new Date(Number(t.textContent) * 1000).toLocaleString();
});
