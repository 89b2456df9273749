(function () {
  "use strict";
  var body = document.body, tiles = Array.prototype.slice.call(document.querySelectorAll(".tile"));
  var dialog = document.getElementById("detail"), slot = document.getElementById("detail-body");
  var search = document.getElementById("q"), technique = document.getElementById("technique");
  var shown = document.getElementById("shown"), state = "";
  var counts = { yes: 0, no: 0 };
  function mark(img) {
    var now = img.complete && img.naturalWidth > 0 ? "yes" : "no", was = img.dataset.loaded;
    if (was === now) return;
    if (was) counts[was] -= 1;
    counts[now] += 1;
    img.dataset.loaded = now;
    img.classList.toggle("broken", now === "no");
    body.dataset.brokenImages = String(counts.no);
    body.dataset.loadedImages = String(counts.yes);
  }
  document.addEventListener("load", function (e) { if (e.target.tagName === "IMG") mark(e.target); }, true);
  document.addEventListener("error", function (e) { if (e.target.tagName === "IMG") mark(e.target); }, true);
  Array.prototype.forEach.call(document.images, function (img) { if (img.complete && img.naturalWidth) mark(img); });
  if (!body.dataset.brokenImages) body.dataset.brokenImages = "0";
  var seen = {}, techs = {};
  tiles.forEach(function (t) {
    techs[t.dataset.technique] = true;
    if (seen[t.dataset.group]) return;
    seen[t.dataset.group] = true;
    var b = document.createElement("button"), n = document.createElement("span");
    b.type = "button"; b.dataset.filter = t.dataset.group;
    b.textContent = t.dataset.group.replace(/_/g, " ") + " ";
    n.className = "n"; b.appendChild(n);
    document.getElementById("states").appendChild(b);
  });
  Object.keys(techs).sort().forEach(function (name) {
    var o = document.createElement("option");
    o.value = name; o.textContent = name; technique.appendChild(o);
  });
  function apply() {
    var words = search.value.toLowerCase().split(/\s+/).filter(Boolean), tech = technique.value;
    var n = 0, counts = {};
    tiles.forEach(function (t) {
      var text = t.dataset.text;
      var fits = (!tech || t.dataset.technique === tech) &&
        words.every(function (w) { return text.indexOf(w) >= 0; });
      if (fits) counts[t.dataset.group] = (counts[t.dataset.group] || 0) + 1;
      var show = fits && (!state || t.dataset.group === state);
      t.hidden = !show;
      if (show) n += 1;
    });
    document.querySelectorAll("button[data-filter]").forEach(function (b) {
      var g = b.dataset.filter, c = g ? (counts[g] || 0) : Object.keys(counts).reduce(function (s, k) { return s + counts[k]; }, 0);
      b.querySelector(".n").textContent = String(c);
      b.setAttribute("aria-pressed", String(g === state));
    });
    shown.textContent = n + " of " + tiles.length + " shown";
    body.dataset.shown = String(n);
  }
  document.querySelectorAll("button[data-filter]").forEach(function (b) {
    b.addEventListener("click", function () { state = b.dataset.filter; apply(); });
  });
  document.querySelectorAll("button[data-view]").forEach(function (b) {
    b.addEventListener("click", function () {
      body.classList.toggle("list", b.dataset.view === "list");
      document.querySelectorAll("button[data-view]").forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
    });
  });
  search.addEventListener("input", apply);
  technique.addEventListener("change", apply);
  function open(tile) {
    var tpl = tile.querySelector("template");
    slot.replaceChildren(tpl.content.cloneNode(true));
    slot.querySelectorAll("img").forEach(function (img) { if (img.complete) mark(img); });
    dialog.showModal();
  }
  tiles.forEach(function (t) {
    t.addEventListener("click", function () { open(t); });
    t.addEventListener("keydown", function (e) { if (e.key === "Enter") open(t); });
  });
  dialog.querySelector(".close").addEventListener("click", function () { dialog.close(); });
  dialog.addEventListener("click", function (e) { if (e.target === dialog) dialog.close(); });
  apply();
})();
