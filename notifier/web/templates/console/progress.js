(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box || box.getAttribute("data-finished") === "true") { return; }
  var url = box.getAttribute("data-url");
  var bar = document.getElementById("progress-bar");
  var said = document.getElementById("progress-text");
  var body = document.getElementById("progress-counts");
  var statuses = box.getAttribute("data-statuses").split(" ");
  var manual = document.getElementById("progress-refresh");
  if (manual) { manual.hidden = true; }
  function cell(tag, text) {
    var c = document.createElement(tag);
    c.textContent = text;
    if (tag === "th") { c.setAttribute("scope", "row"); }
    return c;
  }
  function show(p) {
    bar.value = p.percent;
    bar.textContent = p.percent + "%";
    said.textContent = p.percent + "% done: " + p.done + " of " + p.total + " deliveries final" + (p.finished ? ". Finished." : ".");
    body.replaceChildren();
    Object.keys(p.counts).sort().forEach(function (channel) {
      var row = document.createElement("tr");
      row.appendChild(cell("th", channel));
      statuses.forEach(function (s) { row.appendChild(cell("td", String(p.counts[channel][s] || 0))); });
      body.appendChild(row);
    });
    if (p.finished) {
      box.setAttribute("data-finished", "true");
      if (manual) {
        manual.querySelector("a").textContent = "Refresh to see the deliveries";
        manual.hidden = false;
      }
    }
  }
  function poll() {
    fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (p) { show(p); }
        if (!p || !p.finished) { setTimeout(poll, 1000); }
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 500);
}());
