// The console's and the portal's only script (the pages work without it, less conveniently):
// - `[data-refresh="N"]`: the element is fetched again every N seconds and replaced (the
//   request names it in `X-Console-Refresh`, so a page may draw only that part);
// - `[data-copy]`: a button that copies the text of the element whose id it names;
// - `form[data-confirm]`: asks before it is sent.
"use strict";

function refresh(element) {
  const seconds = Number(element.dataset.refresh);
  if (!element.id || !(seconds > 0)) return;
  window.setTimeout(async () => {
    try {
      const answer = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { "X-Console-Refresh": element.id },
      });
      if (answer.ok) {
        const page = new DOMParser().parseFromString(await answer.text(), "text/html");
        const fresh = page.getElementById(element.id);
        if (fresh) {
          element.replaceWith(fresh);
          refresh(fresh);
          return;
        }
      }
    } catch (error) {
      // The server is away for a moment: try again at the next tick.
    }
    refresh(element);
  }, seconds * 1000);
}

function copyButtons() {
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = "Copied";
      } catch (error) {
        const range = document.createRange();
        range.selectNodeContents(source);
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  }
}

function confirmations() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const element of document.querySelectorAll("[data-refresh]")) refresh(element);
  copyButtons();
  confirmations();
});
