// Loaded as a plain script in <head>, before the first paint, so a dark-theme reader never
// sees the light page flash. The choice is a display preference, not a secret: it lives in
// localStorage (the API key does not: it stays in sessionStorage, see api.js).
(function () {
  var root = document.documentElement;
  var stored = null;
  try {
    stored = localStorage.getItem("loracle.theme");
  } catch (e) {
    stored = null; // storage disabled: follow the system
  }
  var system = window.matchMedia("(prefers-color-scheme: dark)");
  root.dataset.theme = stored === "light" || stored === "dark" ? stored : system.matches ? "dark" : "light";
  system.addEventListener("change", function (event) {
    var chosen = null;
    try {
      chosen = localStorage.getItem("loracle.theme");
    } catch (e) {
      chosen = null;
    }
    if (!chosen) {
      root.dataset.theme = event.matches ? "dark" : "light";
      document.dispatchEvent(new CustomEvent("themechange"));
    }
  });
})();
