// keyledger console: the few behaviours HTML alone cannot give. Everything
// works without this script; with it, copying is one click, the revoke
// button waits for the typed name, and the one page that shows a secret
// forgets it as soon as the user is done.
"use strict";
(function () {
  function copyText(el, done) {
    var text = el.textContent.trim();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(selectCopy(el)); });
    } else {
      done(selectCopy(el));
    }
  }
  function selectCopy(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    return ok;
  }
  function forgetSecret() {
    document.querySelectorAll("[data-secret]").forEach(function (el) { el.textContent = ""; });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-copy]").forEach(function (btn) {
      btn.addEventListener("click", function () {
        var el = document.getElementById(btn.getAttribute("data-copy"));
        var out = document.querySelector("[data-copied]");
        copyText(el, function (ok) { if (out) { out.textContent = ok ? "Copied." : "Select the key and copy it."; } });
      });
    });
    var stored = document.querySelector("[data-stored]");
    if (stored) {
      var check = stored.querySelector("[data-stored-check]");
      var done = stored.querySelector("[data-done]");
      done.disabled = !check.checked;
      check.addEventListener("change", function () { done.disabled = !check.checked; });
      stored.addEventListener("submit", function (ev) {
        ev.preventDefault();
        forgetSecret();
        // replace, not assign: Back never returns to the secret page.
        window.location.replace(stored.getAttribute("action"));
      });
      // Leaving the page any other way forgets the secret too, so the
      // back-forward cache holds no copy of it.
      window.addEventListener("pagehide", forgetSecret);
    }
    document.querySelectorAll("[data-confirm-form]").forEach(function (form) {
      var input = form.querySelector("[data-expect]");
      var submit = form.querySelector("[data-confirm-submit]");
      var want = input.getAttribute("data-expect");
      var update = function () { submit.disabled = input.value !== want; };
      update();
      input.addEventListener("input", update);
    });
  });
})();
