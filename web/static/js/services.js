/* Grid services view: the grid frequency over the last minutes with the FCR contribution and the aFRR part
   (ApexCharts), FCR's state and switch (operator keys; POST /api/services/fcr), the aFRR setpoint the grid
   operator sent over IEC 104 and how the plant follows it. Fed by dashboard.js's "bess-status" events (each
   status from /ws or the polling fallback); ids are listed at the top of web/templates/index.html. */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const READ_ONLY = document.body.dataset.readOnly === "true";
  const WINDOW_MS = 10 * 60 * 1000; // the chart's span: the last 10 minutes
  const MAX_SAMPLES = 1200; // 10 minutes of 0.5 s statuses at most
  const REDRAW_MS = 2000; // the chart is redrawn at most this often (statuses come every cycle)
  const fmt = (v, d) => (v == null || !isFinite(v) ? "–" : Number(v).toFixed(d));
  const num = (v) => (v == null || !isFinite(v) ? null : Number(v));

  const samples = []; // [time ms, frequency Hz, FCR MW, aFRR MW]
  let chart = null;
  let lastDraw = 0;
  let fcrEnabled = null;

  function setValue(el, v, d) {
    el.dataset.value = num(v) == null ? "" : String(v);
    el.textContent = fmt(v, d);
  }

  function setState(el, state, text, ok) {
    el.dataset.state = state;
    el.textContent = text;
    el.classList.toggle("msg-ok", ok === true);
    el.classList.toggle("msg-bad", ok === false);
  }

  function frequencyOf(s) {
    if (s.fcr && num(s.fcr.frequency_hz) != null) return num(s.fcr.frequency_hz);
    return s.poi ? num(s.poi.frequency_hz) : null;
  }

  function render(s) {
    const fcr = s.fcr && typeof s.fcr === "object" ? s.fcr : null;
    const afrr = s.afrr && typeof s.afrr === "object" ? s.afrr : null;
    const hz = frequencyOf(s);
    const show = fcr != null || afrr != null || hz != null;
    $("services").classList.toggle("hidden", !show);
    if (!show) return;
    setValue($("services-frequency-value"), hz, 3);
    renderFcr(fcr);
    renderAfrr(afrr);
    const t = s.ts ? Date.parse(s.ts) : Date.now();
    samples.push([isFinite(t) ? t : Date.now(), hz, fcr && fcr.enabled ? num(fcr.contribution_mw) : null,
      afrr ? num(afrr.active_mw) : null]);
    while (samples.length > MAX_SAMPLES || (samples.length && samples[samples.length - 1][0] - samples[0][0] > WINDOW_MS)) samples.shift();
    $("frequency-chart").dataset.samples = String(samples.length);
    if (Date.now() - lastDraw >= REDRAW_MS) draw();
  }

  function renderFcr(fcr) {
    if (fcr == null) {
      setState($("fcr-state"), "none", "not offered", undefined);
      setValue($("fcr-contribution-value"), null, 2);
      $("fcr-capacity").textContent = "–";
    } else {
      setState($("fcr-state"), fcr.enabled ? "on" : "off", fcr.enabled ? "on" : "off", fcr.enabled ? true : undefined);
      setValue($("fcr-contribution-value"), fcr.enabled ? fcr.contribution_mw : 0, 2);
      $("fcr-capacity").textContent = fmt(fcr.capacity_mw, 1);
    }
    renderReserve(fcr);
    fcrEnabled = fcr == null ? null : !!fcr.enabled;
    const btn = $("fcr-toggle");
    if (btn) {
      btn.disabled = fcrEnabled == null;
      btn.textContent = fcrEnabled ? "Switch FCR off" : "Switch FCR on";
      btn.dataset.enable = String(!fcrEnabled);
    }
  }

  // whether the SoC holds FCR's reserve band (the auto-trader restores it; without it the operator does)
  function renderReserve(fcr) {
    const el = $("fcr-reserve");
    if (fcr == null || !fcr.enabled || fcr.reserve_held == null) {
      setState(el, "none", "–", undefined);
    } else if (fcr.reserve_held) {
      setState(el, "held", `held (SoC band ${fmt(fcr.reserve_soc_low_pct, 0)}–${fmt(fcr.reserve_soc_high_pct, 0)} %)`, true);
    } else {
      const way = fcr.reserve_restore_direction < 0 ? "charge" : "discharge";
      setState(el, "restore", `SoC outside the band: ${way} ${fmt(fcr.reserve_restore_mwh, 2)} MWh to restore`, false);
    }
  }

  function renderAfrr(afrr) {
    const state = $("afrr-state");
    if (afrr == null) {
      setState(state, "none", "not offered", undefined);
    } else if (afrr.timed_out) {
      setState(state, "timeout", "setpoints lost: back to 0", false);
    } else if (afrr.following) {
      setState(state, "following", afrr.clamped ? "following (clamped to the band)" : "following", true);
    } else {
      setState(state, "idle", "no setpoint yet", undefined);
    }
    setValue($("afrr-setpoint-value"), afrr ? afrr.setpoint_mw : null, 2);
    setValue($("afrr-active-value"), afrr ? afrr.active_mw : null, 2);
    $("afrr-band-up").textContent = fmt(afrr ? afrr.band_up_mw : null, 1);
    $("afrr-band-down").textContent = fmt(afrr ? afrr.band_down_mw : null, 1);
  }

  function draw() {
    lastDraw = Date.now();
    if (!chart) return;
    const series = [1, 2, 3].map((i, k) => ({
      name: ["Frequency (Hz)", "FCR (MW)", "aFRR (MW)"][k],
      data: samples.filter((p) => p[i] != null).map((p) => [p[0], p[i]]),
    }));
    // the last 10 minutes, or the last 2 while fewer have been seen (a page just opened has a few samples)
    const last = samples.length ? samples[samples.length - 1][0] : Date.now();
    const first = samples.length ? samples[0][0] : last;
    chart.updateOptions({ xaxis: { min: Math.max(last - WINDOW_MS, Math.min(first, last - 2 * 60 * 1000)), max: last } }, false, false);
    chart.updateSeries(series, false);
  }

  function makeChart() {
    if (typeof ApexCharts === "undefined") return;
    const dark = document.documentElement.classList.contains("dark");
    chart = new ApexCharts($("frequency-chart"), {
      chart: { type: "line", height: 270, background: "transparent", toolbar: { show: false }, zoom: { enabled: false },
               animations: { enabled: false }, fontFamily: "inherit" },
      theme: { mode: dark ? "dark" : "light" },
      series: [{ name: "Frequency (Hz)", data: [] }, { name: "FCR (MW)", data: [] }, { name: "aFRR (MW)", data: [] }],
      colors: ["#4FC3F7", dark ? "#FFD700" : "#D9A800", "#00FF00"],
      stroke: { width: [2, 2, 2], curve: "straight" },
      dataLabels: { enabled: false },
      legend: { position: "top", horizontalAlign: "left" },
      xaxis: { type: "datetime", labels: { datetimeUTC: false } },
      yaxis: [
        { seriesName: "Frequency (Hz)", decimalsInFloat: 3, title: { text: "Hz" } },
        { seriesName: "FCR (MW)", opposite: true, decimalsInFloat: 1, title: { text: "MW (+ discharge)" } },
        { seriesName: "FCR (MW)", show: false },
      ],
      tooltip: { theme: dark ? "dark" : "light", x: { format: "HH:mm:ss" } },
      noData: { text: "Waiting for data…" },
    });
    chart.render();
  }

  const confirmDialog = (text) => window.bessConfirmDialog(text); // dashboard.js's, one dialog for the page

  async function switchFcr() {
    const enable = $("fcr-toggle").dataset.enable === "true";
    const result = $("fcr-result");
    const text = enable
      ? "Switch FCR ON? The plant follows the grid frequency with its FCR band, on top of the schedule; every limit still applies."
      : "Switch FCR OFF? The plant stops responding to the grid frequency.";
    if (!(await confirmDialog(text))) { result.textContent = "Not changed."; result.dataset.ok = ""; return; }
    try {
      const r = await fetch("/api/services/fcr", { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ enabled: enable }) });
      let body = null;
      try { body = await r.json(); } catch (e) { body = null; }
      if (!r.ok) throw new Error((body && typeof body.detail === "string" && body.detail) || "HTTP " + r.status);
      result.textContent = "FCR " + (body && body.enabled ? "on" : "off") + ".";
      result.dataset.ok = "true";
      result.classList.add("msg-ok"); result.classList.remove("msg-bad");
      renderFcr(Object.assign({}, body));
    } catch (e) {
      result.textContent = "Refused: " + e.message;
      result.dataset.ok = "false";
      result.classList.add("msg-bad"); result.classList.remove("msg-ok");
    }
  }

  document.addEventListener("bess-status", (ev) => render(ev.detail || {}));
  if (!READ_ONLY && $("fcr-toggle")) $("fcr-toggle").addEventListener("click", switchFcr);
  makeChart();
})();
