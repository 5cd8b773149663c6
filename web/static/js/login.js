/* Login: POST /api/login {api_key}; the answer sets the HttpOnly session cookie; then go to the dashboard. */
(function () {
  var form = document.getElementById("login-form");
  var err = document.getElementById("login-error");
  var btn = document.getElementById("login-submit");
  form.addEventListener("submit", async function (ev) {
    ev.preventDefault();
    err.textContent = "";
    var key = document.getElementById("api-key").value.trim();
    if (!key) { err.textContent = "Enter the API key."; return; }
    btn.disabled = true;
    try {
      var r = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify({ api_key: key }), credentials: "same-origin" });
      if (r.ok) { window.location.replace("/"); return; }
      var body = await r.json().catch(function () { return {}; });
      err.textContent = typeof body.detail === "string" ? body.detail : "Login failed (" + r.status + ")";
    } catch (e) {
      err.textContent = "The controller does not answer: " + e.message;
    } finally {
      btn.disabled = false;
    }
  });
})();
