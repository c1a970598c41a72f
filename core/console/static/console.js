// The console's few live parts: copy buttons, the live log tail, and confirmations. No framework, no CDN.
"use strict";
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy], [data-copy-from]");
  if (!button) return;
  const text = button.dataset.copy ?? document.getElementById(button.dataset.copyFrom).textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch (err) {
    button.textContent = "Select and copy";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
});
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
const tail = document.getElementById("live-tail");
if (tail) {
  let timer = null;
  const logs = document.getElementById("logs");
  const poll = async () => {
    const answer = await fetch(tail.dataset.logs, { credentials: "same-origin", cache: "no-store" });
    if (answer.ok) {
      logs.textContent = await answer.text();
      logs.scrollTop = logs.scrollHeight;
    }
  };
  tail.addEventListener("change", () => {
    if (tail.checked) { poll(); timer = setInterval(poll, 2000); } else { clearInterval(timer); }
  });
}
