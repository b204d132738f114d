// Tessera operator console: live approvals (server-sent events), time left,
// and confirmations. Loaded from the console itself (CSP script-src 'self');
// the pages work without it, only less live.
"use strict";

(function () {
  function refreshApprovals(section) {
    var kept = {};
    section.querySelectorAll("article[data-approval]").forEach(function (a) {
      var input = a.querySelector("input[name=reason]");
      if (input && input.value) kept[a.dataset.approval] = input.value;
    });
    fetch(section.dataset.list, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        section.innerHTML = html;
        section.querySelectorAll("article[data-approval]").forEach(function (a) {
          var input = a.querySelector("input[name=reason]");
          if (input && kept[a.dataset.approval]) input.value = kept[a.dataset.approval];
        });
        tick();
      });
  }

  function live(section) {
    var state = document.getElementById("live");
    var source = new EventSource(section.dataset.events);
    source.addEventListener("open", function () {
      if (state) { state.textContent = "(live)"; state.dataset.state = "live"; }
    });
    source.addEventListener("error", function () {
      if (state) { state.textContent = "(reconnecting…)"; state.dataset.state = "reconnecting"; }
    });
    source.addEventListener("approvals", function () { refreshApprovals(section); });
    // The session ended (sign-out, expiry, identity disabled): stop, say so,
    // and leave navigation to the person (a reload here would race a
    // sign-out's own page).
    source.addEventListener("ended", function (event) {
      source.close();
      if (!state) return;
      if (event.data === "not-allowed") {
        state.textContent = "(not allowed: policy no longer lets you list approvals)";
        state.dataset.state = "not-allowed";
      } else {
        state.textContent = "(session ended: sign in again)";
        state.dataset.state = "ended";
      }
    });
  }

  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll(".countdown[data-expires]").forEach(function (el) {
      var left = Math.floor(Number(el.dataset.expires) - now);
      if (!(left > 0)) { el.textContent = "expired"; return; }
      var s = left % 60;
      el.textContent = Math.floor(left / 60) + "m " + (s < 10 ? "0" : "") + s + "s";
    });
  }

  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var message = button && button.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // Sign-in: the code comes in the URL's fragment (never sent to a server,
  // so never in a proxy's log). Move it into the form, take it out of the
  // address bar and history, and continue to the page that names the
  // identity it signs in as (nothing is spent before that page's button).
  function signin(form) {
    var match = /^#code=([A-Za-z0-9_-]{1,128})$/.exec(window.location.hash);
    window.history.replaceState(null, "", window.location.pathname);
    if (!match) return;
    var input = document.getElementById("code");
    var field = document.getElementById("code-field");
    input.value = match[1];
    if (field) field.hidden = true;
    form.requestSubmit();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("signin-form");
    if (form) signin(form);
    var section = document.getElementById("approvals");
    if (section && section.dataset.events) live(section);
    tick();
    window.setInterval(tick, 1000);
  });
})();
