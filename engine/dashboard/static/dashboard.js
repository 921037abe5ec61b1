// TaskHarbor dashboard: live refresh of the page's main part, and "select all".
// Served as a file (the content-security policy allows no inline script).
"use strict";

(function () {
  const main = document.getElementById("main");
  const toggle = document.getElementById("live");
  const every = main ? Number(main.dataset.refresh) : 0;

  function busy() {
    // Never replace what the operator is working on: a ticked box, a focused field.
    if (main.querySelector("input[type=checkbox]:checked")) return true;
    const active = document.activeElement;
    return active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  }

  async function refresh() {
    if (document.hidden || (toggle && !toggle.checked) || busy()) return;
    try {
      const response = await fetch(location.href, {
        headers: { "X-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.ok && !busy()) {
        main.innerHTML = await response.text();  // server-rendered, every value escaped
        main.dataset.refreshedAt = new Date().toISOString();
      }
    } catch (error) {
      // The dashboard is restarting or the network is down: try again next time.
    }
  }

  if (main && every > 0) {
    setInterval(refresh, every * 1000);
  }

  document.addEventListener("change", function (event) {
    const box = event.target;
    if (!box.matches || !box.matches("input[data-select-all]")) return;
    const form = box.closest("form");
    form.querySelectorAll("input[name=ids]").forEach(function (item) {
      item.checked = box.checked;
    });
  });
})();
