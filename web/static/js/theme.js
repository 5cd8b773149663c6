/* Theme: dark ("gold standard") by default, light on request, remembered in localStorage "bess-theme".
   Loaded in <head> so the page never flashes the wrong theme. #theme-toggle switches it. */
(function () {
  var KEY = "bess-theme";
  function stored() { try { return localStorage.getItem(KEY); } catch (e) { return null; } }
  function apply(theme) {
    var dark = theme !== "light";
    document.documentElement.classList.toggle("dark", dark);
    document.documentElement.dataset.theme = dark ? "dark" : "light";
    var icons = document.querySelectorAll("[data-theme-icon]");
    for (var i = 0; i < icons.length; i++) {
      icons[i].hidden = icons[i].getAttribute("data-theme-icon") !== (dark ? "dark" : "light");
    }
    document.dispatchEvent(new CustomEvent("bess-theme", { detail: dark ? "dark" : "light" }));
  }
  apply(stored() || "dark");
  document.addEventListener("DOMContentLoaded", function () {
    apply(stored() || "dark");
    var btn = document.getElementById("theme-toggle");
    if (!btn) return;
    btn.addEventListener("click", function () {
      var next = document.documentElement.classList.contains("dark") ? "light" : "dark";
      try { localStorage.setItem(KEY, next); } catch (e) { /* private mode: still switch for this page */ }
      apply(next);
    });
  });
})();
