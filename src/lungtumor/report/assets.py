"""Inline CSS and JavaScript of the HTML case report (see :mod:`lungtumor.report.html`)."""

CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#e3e7ee;--bg:#f4f6f9;--card:#fff;--accent:#1f5fbf;--red:#ff3b30}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
header.top{background:#16202e;color:#fff;padding:18px 28px}
.brand{font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:#9fb3cc}
h1{margin:4px 0 2px;font-size:24px;font-weight:600;word-break:break-all}
.sub{color:#9fb3cc;font-size:12px}
main{max-width:1180px;margin:0 auto;padding:20px 24px}
h2{font-size:16px;margin:0 0 12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin-bottom:18px}
.stats{display:flex;gap:14px;flex-wrap:wrap;margin-bottom:18px}
.stat{flex:1 1 160px;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px}
.stat-value{font-size:22px;font-weight:600}
.stat-label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.viewer{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
.stage{position:relative;width:min(100%,540px);background:#000;border-radius:6px;overflow:hidden}
.stage img{position:absolute;inset:0;width:100%;height:100%;object-fit:contain}
.stage img[hidden]{display:none}
.ori{position:absolute;color:#ffd54a;font:600 12px/1 monospace;text-shadow:0 0 3px #000}
.ori-t{top:6px;left:50%}.ori-b{bottom:6px;left:50%}.ori-l{left:6px;top:50%}.ori-r{right:6px;top:50%}
.controls{flex:1 1 300px;min-width:280px}
.readout{display:flex;gap:14px;flex-wrap:wrap;font-variant-numeric:tabular-nums;margin-bottom:6px}
#slice-number{font-weight:600}
#slice-position,#slice-area{color:var(--muted)}
#slice-slider{width:100%;margin:0;accent-color:var(--accent)}
.ticks{position:relative;height:8px;margin:2px 8px 12px;background:#eef1f5;border-radius:2px}
.ticks span{position:absolute;top:0;width:2px;height:8px;background:var(--red);margin-left:-1px}
.row{margin:8px 0;display:flex;gap:14px;flex-wrap:wrap;align-items:center}
.lbl{color:var(--muted);min-width:56px}
.swatch{display:inline-block;width:12px;height:12px;background:rgba(255,59,48,.45);border:2px solid var(--red);vertical-align:-2px}
button{font:inherit;padding:5px 12px;border:1px solid #c5cdd8;border-radius:5px;background:#fff;cursor:pointer}
button:hover{background:#eef3fb}
.hint,.note,figcaption{color:var(--muted);font-size:12px}
.empty{color:var(--muted);font-style:italic}
.warning{border:2px solid #ff9500;background:#fff4e5;color:#5c3300;border-radius:8px;padding:10px 14px;margin:0 0 16px;font-weight:600}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse}
table.kv{width:100%}
table.data th,table.data td{padding:6px 9px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
table.data th{background:#f7f9fc;font-weight:600;font-size:12px;color:var(--muted);white-space:normal;vertical-align:bottom}
table.data .num{text-align:right;font-variant-numeric:tabular-nums}
table.data tbody tr[data-slice]{cursor:pointer}
table.data tbody tr:hover{background:#eef3fb}
table.kv th{width:200px;text-align:left;font-weight:500;color:var(--muted);padding:5px 10px;vertical-align:top}
table.kv td{padding:5px 10px;word-break:break-all;font-variant-numeric:tabular-nums}
table.kv tr:nth-child(even){background:#f7f9fc}
img.curves{max-width:100%;height:auto}
figure{margin:0}
footer{text-align:center;color:var(--muted);font-size:12px;padding:8px 0 28px}
@media print{.controls input,.controls button,.hint{display:none}}
"""

SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var slider = document.getElementById("slice-slider");
  var ct = document.getElementById("ct-image");
  var ov = document.getElementById("overlay-image");
  var toggle = document.getElementById("overlay-toggle");
  var num = document.getElementById("slice-number");
  var pos = document.getElementById("slice-position");
  var area = document.getElementById("slice-area");
  var win = "lung";
  if (!data.z.length) { return; }
  function show() {
    var i = Number(slider.value);
    ct.src = data.ct[win][i];
    var o = data.overlay[i];
    if (o) { ov.src = o; }
    ov.hidden = !(o && toggle.checked);
    num.textContent = "Slice " + (data.z[i] + 1) + " of " + data.n_total + " (index " + data.z[i] + ")";
    pos.textContent = "z = " + data.pos_mm[i].toFixed(1) + " mm";
    area.textContent = data.area_mm2[i] > 0 ? "tumour " + data.area_mm2[i].toFixed(0) + " mm\\u00b2" : "no tumour";
  }
  function goTo(z) {
    var best = 0;
    for (var k = 1; k < data.z.length; k++) {
      if (Math.abs(data.z[k] - z) < Math.abs(data.z[best] - z)) { best = k; }
    }
    slider.value = String(best);
    show();
  }
  slider.addEventListener("input", show);
  toggle.addEventListener("change", show);
  document.querySelectorAll('input[name="window"]').forEach(function (r) {
    r.addEventListener("change", function () { if (r.checked) { win = r.value; show(); } });
  });
  document.getElementById("stage").addEventListener("wheel", function (e) {
    e.preventDefault();
    var v = Number(slider.value) + (e.deltaY > 0 ? 1 : -1);
    slider.value = String(Math.max(0, Math.min(data.z.length - 1, v)));
    show();
  }, { passive: false });
  document.getElementById("jump-largest").addEventListener("click", function () {
    slider.value = String(data["default"]);
    show();
  });
  document.querySelectorAll("tr[data-slice]").forEach(function (tr) {
    var go = function () { goTo(Number(tr.getAttribute("data-slice"))); document.getElementById("viewer").scrollIntoView({ behavior: "smooth" }); };
    tr.addEventListener("click", go);
    tr.addEventListener("keydown", function (e) { if (e.key === "Enter") { go(); } });
  });
  show();
})();
"""
