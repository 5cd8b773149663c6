/* Dashboard: live status over the websocket (polling every 10 s while it is down), status cards with number
   tickers, binding limit and alarms in plain words, market / VWAP / schedule charts (ApexCharts), the auto-trader's
   plan chart and switch, order form with the pre-trade check inline, active orders and trades, mode and
   telemetry controls. The market chart starts from the history the controller stored (GET /api/market-history).
   Element ids are listed at the top of web/templates/index.html. */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  // services.js (loaded after this file) asks through the same dialog; set first, so nothing below can skip it
  window.bessConfirmDialog = confirmDialog;
  // a read-only session (a key from API_KEY_READ) gets no write controls: the page leaves them out, the API
  // refuses the writes anyway
  const READ_ONLY = document.body.dataset.readOnly === "true";
  const on = (id, type, fn) => { const el = $(id); if (el) el.addEventListener(type, fn); };
  const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  const POLL_MS = 10000;
  const PERIOD_MS = 15 * 60 * 1000;
  const GATE_MS = 5 * 60 * 1000;
  const GREEN = "#00FF00";
  const GOLD = "#FFD700";
  const gold = () => (document.documentElement.classList.contains("dark") ? GOLD : "#D9A800"); // #FFD700 is too pale on white
  let serverOffsetMs = 0; // controller clock minus browser clock: delivery periods are the controller's

  const BINDING_WORDS = {
    none: "Nothing: the plant follows its target.",
    p_charge_max: "The configured maximum charge power.",
    p_discharge_max: "The configured maximum discharge power.",
    bms_allowed_charge: "The charge power the battery management system allows.",
    bms_allowed_discharge: "The discharge power the battery management system allows.",
    soc_min: "State of charge at its minimum: no discharge.",
    soc_max: "State of charge at its maximum: no charge.",
    soc_taper: "State of charge close to a limit: power tapered.",
    temperature: "Temperature: power derated.",
    ramp: "The ramp rate limit.",
    grid_limit: "The grid connection limit.",
    stale: "Telemetry too old: held at 0 MW (safe state).",
    alarm: "A device alarm: held at 0 MW (safe state).",
    comm_loss: "Communication with a device lost: held at 0 MW (safe state).",
    mode_stopped: "Stopped by an operator: 0 MW.",
    unit_unavailable: "A unit is unavailable: it is held at 0 MW and the others take its share.",
    poi_limit: "The grid limit measured at the point of interconnection.",
  };

  // ------------------------------------------------------------------ API
  class ApiError extends Error {
    constructor(status, body) {
      super(detailText(body) || "HTTP " + status);
      this.status = status;
      this.body = body || {};
    }
  }

  function detailText(body) {
    if (!body) return "";
    const d = body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => (e.loc || []).slice(1).join(".") + ": " + e.msg).join("; ");
    return d ? JSON.stringify(d) : "";
  }

  async function api(path, opts) {
    const o = Object.assign({ credentials: "same-origin", headers: {} }, opts || {});
    if (o.body !== undefined && typeof o.body !== "string") {
      o.body = JSON.stringify(o.body);
      o.headers["Content-Type"] = "application/json";
    }
    const r = await fetch(path, o);
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (r.status === 401) {
      window.location.replace("/login");
    }
    if (!r.ok) throw new ApiError(r.status, body);
    return body;
  }

  // ------------------------------------------------------------------ formatting
  const fmt = (v, d) => (v == null || !isFinite(v) ? "–" : Number(v).toFixed(d));
  const localTime = (iso, withSeconds) => {
    if (!iso) return "–";
    const t = new Date(iso);
    return t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: withSeconds ? "2-digit" : undefined, hour12: false });
  };
  const localPeriod = (iso) => {
    const t = new Date(iso);
    const end = new Date(t.getTime() + PERIOD_MS);
    const day = t.toDateString() === new Date(Date.now() + serverOffsetMs).toDateString() ? "" : t.toLocaleDateString([], { weekday: "short" }) + " ";
    return day + localTime(t) + "–" + localTime(end);
  };
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  function setMsg(el, text, ok) {
    el.textContent = text;
    el.dataset.ok = ok === undefined ? "" : String(ok);
    el.classList.toggle("msg-ok", ok === true);
    el.classList.toggle("msg-bad", ok === false);
  }

  // animated number ticker; data-value always holds the raw number for tests and tools
  function tick(el, value, decimals) {
    const ok = value != null && isFinite(value);
    el.dataset.value = ok ? String(value) : "";
    if (!ok) { cancelAnimationFrame(el._raf); el._v = null; el.textContent = "–"; return; }
    const from = el._v;
    el._v = value;
    if (from == null || reduceMotion || document.hidden || from === value) { el.textContent = fmt(value, decimals); return; }
    const t0 = performance.now();
    const dur = 600;
    cancelAnimationFrame(el._raf);
    const step = (now) => {
      const k = Math.min(1, (now - t0) / dur);
      const e = 1 - Math.pow(1 - k, 3);
      el.textContent = fmt(from + (value - from) * e, decimals);
      if (k < 1) el._raf = requestAnimationFrame(step);
    };
    el._raf = requestAnimationFrame(step);
  }

  // ------------------------------------------------------------------ status
  let lastStatus = null;

  function renderStatus(s) {
    lastStatus = s;
    if (s.ts) {
      const t = Date.parse(s.ts);
      if (isFinite(t)) serverOffsetMs = t - Date.now();
    }
    tick($("soc-value"), s.soc_pct, 1);
    $("soc-bar").style.width = (s.soc_pct == null ? 0 : Math.max(0, Math.min(100, s.soc_pct))) + "%";
    tick($("power-value"), s.power_mw, 2);
    const p = s.power_mw;
    $("power-direction").textContent = p == null ? "unknown" : p > 0.005 ? "discharging" : p < -0.005 ? "charging" : "idle";
    $("setpoint-value").textContent = fmt(s.setpoint_mw, 2);
    tick($("temperature-value"), s.temperature_c, 1);
    const st = $("status-value");
    st.textContent = s.status || "–";
    st.dataset.value = s.status || "";
    st.classList.toggle("msg-ok", s.status === "online");
    st.classList.toggle("msg-bad", s.status !== "online");
    $("mode-value").textContent = s.mode + (s.mode === "manual" && s.manual_setpoint_mw != null ? " " + fmt(s.manual_setpoint_mw, 1) + " MW until " + localTime(s.manual_expires) : "");
    $("last-update").textContent = localTime(s.ts, true);
    $("last-update").title = s.ts || "";
    const b = $("binding");
    b.dataset.binding = s.binding || "";
    b.textContent = BINDING_WORDS[s.binding] || ("Limit: " + (s.binding || "unknown"));
    $("reasons").innerHTML = (s.reasons || []).map((r) => "<li>" + esc(r) + "</li>").join("");
    const alarms = s.alarms || [];
    $("alarms").innerHTML = alarms.length
      ? alarms.map((a) => '<li data-testid="alarm" class="msg-bad flex gap-2"><i class="fa-solid fa-circle-exclamation mt-1"></i><span>' + esc(a) + "</span></li>").join("")
      : '<li class="text-muted">No active alarms</li>';
    renderUnits(s.units);
    renderPoi(s.poi);
    document.dispatchEvent(new CustomEvent("bess-status", { detail: s })); // other views (services.js) follow it
    for (const btn of document.querySelectorAll("#mode-form [data-mode]")) {
      const active = btn.dataset.mode === s.mode;
      btn.classList.toggle("ring-2", active);
      btn.classList.toggle("ring-gold", active);
      btn.setAttribute("aria-pressed", String(active));
    }
  }

  // ------------------------------------------------------------------ units and the POI meter
  // The cards are built once per set of unit names (fixed by the site file) and then only updated, so the
  // tickers animate and nothing flickers. Shown only for a plant of two or more units: a one-unit plant's card
  // would repeat the plant cards above.
  const UNIT_FIELDS = [["soc_pct", "SoC", "%", 1], ["power_mw", "Power", "MW", 2], ["setpoint_mw", "Setpoint", "MW", 2],
    ["temperature_c", "Temp.", "°C", 1]];

  function unitCard(name) {
    const rows = UNIT_FIELDS.map(([f, label, unit]) =>
      '<div class="flex justify-between gap-2"><span class="text-muted">' + label + '</span><span class="tabular">' +
      '<span data-field="' + f + '" data-value="">–</span> ' + unit + "</span></div>").join("");
    return '<div class="card" data-testid="unit-card" data-unit="' + esc(name) + '" data-available="">' +
      '<div class="card-title justify-between"><span><i class="fa-solid fa-cube text-gold"></i> <span class="normal-case tracking-normal">' + esc(name) + "</span></span>" +
      '<span data-field="available" class="pill normal-case tracking-normal">–</span></div>' +
      '<div class="mt-2 space-y-1 text-sm">' + rows + "</div>" +
      '<p class="mt-2 text-xs text-muted">limit: <span data-field="binding" data-binding="">–</span></p></div>';
  }

  function renderUnits(units) {
    const list = Array.isArray(units) ? units : [];
    const show = list.length > 1;
    $("units").classList.toggle("hidden", !show);
    if (!show) { syncUnitsSection(); return; }
    const grid = $("units-grid");
    const names = list.map((u) => String(u.unit)).join("\n");
    if (grid.dataset.names !== names) {
      grid.innerHTML = list.map((u) => unitCard(String(u.unit))).join("");
      grid.dataset.names = names;
    }
    for (const u of list) {
      const card = grid.querySelector('[data-testid="unit-card"][data-unit="' + CSS.escape(String(u.unit)) + '"]');
      if (!card) continue;
      for (const [f, , , d] of UNIT_FIELDS) tick(card.querySelector('[data-field="' + f + '"]'), u[f], d);
      const av = card.querySelector('[data-field="available"]');
      card.dataset.available = String(!!u.available);
      av.textContent = u.available ? "available" : "unavailable";
      av.classList.toggle("msg-ok", !!u.available);
      av.classList.toggle("msg-bad", !u.available);
      const b = card.querySelector('[data-field="binding"]');
      b.dataset.binding = u.binding || "";
      b.textContent = (u.binding || "none").replace(/_/g, " ");
      b.title = BINDING_WORDS[u.binding] || "";
    }
    syncUnitsSection();
  }

  function renderPoi(poi) {
    const show = poi != null && typeof poi === "object";
    $("poi").classList.toggle("hidden", !show);
    if (show) {
      tick($("poi-power-value"), poi.power_mw, 2);
      tick($("poi-frequency-value"), poi.frequency_hz, 3);
      $("poi-age").textContent = poi.ts == null ? "no reading" : "read " + localTime(poi.ts, true);
      $("poi-age").title = poi.ts || "";
    }
    syncUnitsSection();
  }

  // the section itself is hidden when both of its parts are, so a plain site shows no empty gap
  function syncUnitsSection() {
    $("units-poi").classList.toggle("hidden", $("units").classList.contains("hidden") && $("poi").classList.contains("hidden"));
  }

  // ------------------------------------------------------------------ connection: websocket, polling fallback
  const conn = { ws: null, pollTimer: null, retry: 0, reconnectTimer: null };

  function setConn(state) {
    const el = $("conn-state");
    el.className = "pill state-" + state;
    el.dataset.state = state;
    $("conn-text").textContent = state;
  }

  const wsOpen = () => conn.ws && conn.ws.readyState === WebSocket.OPEN;

  async function pollStatus() {
    try {
      renderStatus(await api("/api/bess-status"));
      if (!wsOpen()) setConn("polling");
    } catch (e) {
      if (!wsOpen()) setConn("offline");
    }
  }

  function startPolling() {
    if (conn.pollTimer) return;
    conn.pollTimer = setInterval(pollStatus, POLL_MS);
    pollStatus();
  }

  function stopPolling() {
    clearInterval(conn.pollTimer);
    conn.pollTimer = null;
  }

  function scheduleReconnect() {
    clearTimeout(conn.reconnectTimer);
    const delay = Math.min(30000, 1000 * Math.pow(2, conn.retry++));
    conn.reconnectTimer = setTimeout(connectWs, delay);
  }

  async function connectWs() {
    if (conn.ws) return;
    let token;
    try {
      token = (await api("/api/ws-token")).token;
    } catch (e) {
      startPolling();
      scheduleReconnect();
      return;
    }
    const proto = window.location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + window.location.host + "/ws?token=" + encodeURIComponent(token));
    conn.ws = ws;
    ws.onopen = () => { conn.retry = 0; stopPolling(); setConn("live"); };
    ws.onmessage = (ev) => {
      try { renderStatus(JSON.parse(ev.data)); } catch (e) { console.error("bad status message", e); }
    };
    ws.onclose = () => {
      conn.ws = null;
      setConn("polling");
      startPolling();
      scheduleReconnect();
    };
  }

  // ------------------------------------------------------------------ charts
  const charts = {};
  const PLAN_COLORS = () => [gold(), "#4FC3F7", "#FF8A00", GREEN];
  const themeMode = () => (document.documentElement.classList.contains("dark") ? "dark" : "light");
  const cssColor = (name) => "rgb(" + getComputedStyle(document.documentElement).getPropertyValue("--" + name).trim().split(/\s+/).join(",") + ")";

  function baseOptions() {
    const mode = themeMode();
    return {
      chart: { background: "transparent", foreColor: cssColor("muted"), toolbar: { show: false }, zoom: { enabled: false },
               animations: { enabled: !reduceMotion }, fontFamily: "inherit", height: 270 },
      theme: { mode: mode },
      grid: { borderColor: cssColor("line"), strokeDashArray: 3 },
      dataLabels: { enabled: false },
      legend: { position: "top", horizontalAlign: "left", labels: { colors: cssColor("ink") } },
      xaxis: { type: "datetime", labels: { datetimeUTC: false }, axisBorder: { color: cssColor("line") }, axisTicks: { color: cssColor("line") } },
      tooltip: { theme: mode, x: { format: "HH:mm" } },
      noData: { text: "Waiting for data…", style: { color: cssColor("muted") } },
    };
  }

  function makeCharts() {
    if (typeof ApexCharts === "undefined") { console.error("ApexCharts did not load"); return; }
    charts.market = new ApexCharts($("market-chart"), Object.assign(baseOptions(), {
      series: [{ name: "Mark", data: [] }, { name: "EMA", data: [] }, { name: "VWAP", data: [] }],
      colors: [gold(), "#FF8A00", GREEN],
      stroke: { width: [3, 2, 2], curve: "straight", dashArray: [0, 4, 0] },
      yaxis: { decimalsInFloat: 1, title: { text: "EUR/MWh" } },
      tooltip: { theme: themeMode(), x: { format: "HH:mm:ss" } },
    }));
    charts.vwap = new ApexCharts($("vwap-chart"), Object.assign(baseOptions(), {
      chart: Object.assign(baseOptions().chart, { type: "bar" }),
      series: [{ name: "VWAP", data: [] }],
      colors: [GREEN],
      fill: { opacity: 1 },
      plotOptions: { bar: { columnWidth: "70%", borderRadius: 2 } },
      yaxis: { decimalsInFloat: 1, title: { text: "EUR/MWh" } },
    }));
    charts.schedule = new ApexCharts($("schedule-chart"), Object.assign(baseOptions(), {
      chart: Object.assign(baseOptions().chart, { type: "line", height: 310 }),
      series: [{ name: "Schedule (MW)", data: [] }, { name: "Actual power (MW)", data: [] }, { name: "SoC (%)", data: [] }],
      colors: [gold(), "#4FC3F7", GREEN],
      stroke: { width: [3, 2, 2], curve: ["stepline", "straight", "smooth"], dashArray: [0, 0, 5] },
      yaxis: [
        { seriesName: "Schedule (MW)", decimalsInFloat: 1, title: { text: "MW (+ discharge)" } },
        { seriesName: "Schedule (MW)", show: false },
        { seriesName: "SoC (%)", opposite: true, min: 0, max: 100, decimalsInFloat: 0, title: { text: "SoC %" } },
      ],
    }));
    charts.plan = new ApexCharts($("plan-chart"), Object.assign(baseOptions(), {
      chart: Object.assign(baseOptions().chart, { type: "line", height: 310 }),
      series: [{ name: "Plan (MW)", data: [] }, { name: "Traded position (MW)", data: [] }, { name: "Forecast price (EUR/MWh)", data: [] }, { name: "SoC (%)", data: [] }],
      colors: PLAN_COLORS(),
      stroke: { width: [3, 2, 2, 2], curve: ["stepline", "stepline", "stepline", "smooth"], dashArray: [0, 4, 0, 5] },
      yaxis: [
        { seriesName: "Plan (MW)", decimalsInFloat: 1, title: { text: "MW (+ discharge)" } },
        { seriesName: "Plan (MW)", show: false },
        { seriesName: "Forecast price (EUR/MWh)", opposite: true, decimalsInFloat: 0, title: { text: "EUR/MWh" } },
        { seriesName: "SoC (%)", opposite: true, min: 0, max: 100, decimalsInFloat: 0, title: { text: "SoC %" } },
      ],
      tooltip: { theme: themeMode(), shared: true, x: { format: "ddd HH:mm" } },
    }));
    charts.market.render();
    charts.vwap.render();
    charts.schedule.render();
    charts.plan.render();
  }

  document.addEventListener("bess-theme", () => {
    for (const c of Object.values(charts)) {
      const o = baseOptions();
      const colors = c === charts.vwap ? [GREEN] : c === charts.market ? [gold(), "#FF8A00", GREEN] : c === charts.plan ? PLAN_COLORS() : [gold(), "#4FC3F7", GREEN];
      c.updateOptions({ theme: o.theme, colors: colors, chart: { foreColor: o.chart.foreColor }, grid: o.grid, legend: o.legend,
                        tooltip: { theme: o.theme.mode } }, false, false);
    }
  });

  // market samples accumulate in the page (kept for the session, 2 h at most)
  const MARKET_KEY = "bess-market-samples";
  let marketSamples = [];
  try { marketSamples = JSON.parse(sessionStorage.getItem(MARKET_KEY) || "[]"); } catch (e) { marketSamples = []; }

  // a page just opened shows the last hours: the samples the controller stored, merged with this session's
  async function loadMarketHistory() {
    let h;
    try { h = await api("/api/market-history?hours=2"); } catch (e) { return; }
    const stored = (h.samples || []).map((x) => [Date.parse(x.ts), x.mark, x.ema, x.vwap]).filter((x) => isFinite(x[0]));
    const seen = new Set(marketSamples.map((x) => Math.round(x[0] / 1000)));
    marketSamples = stored.filter((x) => !seen.has(Math.round(x[0] / 1000))).concat(marketSamples).sort((a, b) => a[0] - b[0]);
    $("market-chart").dataset.samples = String(marketSamples.length);
  }

  let pricePrefilled = false;
  async function refreshMarket() {
    let m;
    try { m = await api("/api/market-data"); } catch (e) { $("market-summary").textContent = "unavailable"; return; }
    $("market-summary").textContent = "mark " + fmt(m.mark, 2) + " · EMA " + fmt(m.ema, 2) + " · VWAP " + fmt(m.vwap, 2) + (m.stale ? " · stale" : "");
    const now = Date.now() + serverOffsetMs;
    marketSamples.push([now, m.mark, m.ema, m.vwap]);
    marketSamples = marketSamples.filter((s) => now - s[0] < 2 * 3600 * 1000).slice(-1440);
    $("market-chart").dataset.samples = String(marketSamples.length);
    try { sessionStorage.setItem(MARKET_KEY, JSON.stringify(marketSamples)); } catch (e) { /* quota: keep in memory */ }
    if (!READ_ONLY && !pricePrefilled && m.mark != null) { $("order-price").value = Number(m.mark).toFixed(2); pricePrefilled = true; }
    if (charts.market) {
      // a window of at least the last 15 minutes up to now: a page just opened has a sample or two, and
      // ApexCharts would otherwise stretch a single point over days
      const first = marketSamples.length ? marketSamples[0][0] : now;
      charts.market.updateOptions({ xaxis: { min: Math.min(first, now - 15 * 60 * 1000), max: now + 30 * 1000 } }, false, false);
      charts.market.updateSeries([1, 2, 3].map((i, k) => ({ name: ["Mark", "EMA", "VWAP"][k], data: marketSamples.filter((s) => s[i] != null).map((s) => [s[0], s[i]]) })));
    }
    if (charts.vwap) {
      charts.vwap.updateSeries([{ name: "VWAP", data: (m.series || []).filter((p) => p.vwap != null).map((p) => [Date.parse(p.period_start) + PERIOD_MS / 2, p.vwap]) }]);
    }
  }

  async function refreshSchedule() {
    let s;
    try { s = await api("/api/schedule"); } catch (e) { return; }
    const from = Date.parse(s.from), to = Date.parse(s.to);
    const byPeriod = new Map((s.periods || []).map((p) => [Date.parse(p.period_start), p.position_mw]));
    const plan = [];
    for (let t = from; t <= to; t += PERIOD_MS) plan.push([t, byPeriod.get(t) || 0]);
    const actual = (s.actual || []).map((a) => [Date.parse(a.ts), a.power_mw]).filter((a) => a[1] != null);
    const soc = (s.actual || []).map((a) => [Date.parse(a.ts), a.soc_pct]).filter((a) => a[1] != null);
    if (charts.schedule) {
      charts.schedule.updateOptions({
        xaxis: { min: from, max: to },
        annotations: { xaxis: [{ x: Date.now() + serverOffsetMs, borderColor: GOLD, label: { text: "now", style: { background: GOLD, color: "#1a1a1a" } } }] },
      }, false, false);
      charts.schedule.updateSeries([{ name: "Schedule (MW)", data: plan }, { name: "Actual power (MW)", data: actual }, { name: "SoC (%)", data: soc }]);
    }
  }

  // ------------------------------------------------------------------ auto-trading: plan and switch
  const AUTO_WORDS = {
    running: "running", off: "off (kill switch)", disabled: "disabled in the site file", stopped: "stopped (mode)",
    safe_state: "paused: plant safe state", exchange_down: "paused: exchange down", no_forecast: "waiting: no prices",
    no_soc: "waiting: SoC unknown", no_plan: "no plan",
  };

  async function refreshPlan() {
    let p;
    try { p = await api("/api/plan"); } catch (e) { return; }
    const per = p.periods || [];
    const el = $("plan-chart");
    el.dataset.periods = String(per.length);
    el.dataset.status = p.status || "";
    $("plan-summary").textContent = p.status === "none" ? "no plan yet" :
      p.status + " · objective " + fmt(p.objective_eur, 0) + " EUR · solved in " + fmt(p.solve_ms, 1) + " ms";
    if (!charts.plan) return;
    const t = (x) => Date.parse(x.period_start);
    charts.plan.updateSeries([
      { name: "Plan (MW)", data: per.map((x) => [t(x), x.plan_mw]) },
      { name: "Traded position (MW)", data: per.map((x) => [t(x), x.position_mw]) },
      { name: "Forecast price (EUR/MWh)", data: per.map((x) => [t(x), x.price_eur_mwh]) },
      { name: "SoC (%)", data: per.map((x) => [t(x) + PERIOD_MS, x.soc_pct_end]) },
    ]);
  }

  async function refreshAuto() {
    let a;
    try { a = await api("/api/auto"); } catch (e) { return; }
    const st = $("auto-state");
    st.dataset.state = a.state || "";
    st.textContent = AUTO_WORDS[a.state] || a.state || "–";
    st.classList.toggle("msg-ok", a.state === "running");
    st.classList.toggle("msg-bad", a.state === "exchange_down" || a.state === "safe_state" || a.state === "stopped");
    st.classList.toggle("msg-warn", a.state === "off");
    $("auto-reason").textContent = a.reason || "";
    const refused = Object.entries(a.orders_refused || {}).map(([k, v]) => k + " " + v).join(", ");
    $("auto-counts").textContent = "replans " + (a.replans || 0) + " · placed " + (a.orders_placed || 0) +
      " · cancelled " + (a.orders_cancelled || 0) + " · refused " + (refused || "0");
    const pnl = (a.pnl_by_day || []).slice(-3).map((d) => d.day.slice(5) + ": " + fmt(d.pnl_eur, 0) + " EUR").join(" · ");
    $("auto-pnl").textContent = pnl ? "realised PnL " + pnl : "no delivered trades yet";
    const btn = $("auto-toggle");
    if (btn) {
      btn.dataset.enabled = String(!!a.enabled);
      $("auto-toggle-text").textContent = a.enabled ? "Stop auto-trading (kill switch)" : "Start auto-trading";
      btn.classList.toggle("btn-danger", !!a.enabled);
      btn.disabled = !a.configured;
      btn.title = a.configured ? "" : "trading.auto.enabled is false in the site file";
    }
  }

  on("auto-toggle", "click", async () => {
    const on_ = $("auto-toggle").dataset.enabled !== "true";
    const text = on_ ? "START auto-trading? It places orders on its own, within its risk limits." :
      "STOP auto-trading? It places nothing more and cancels its open orders.";
    if (!(await confirmDialog(text))) { setMsg($("auto-result"), "Not changed.", undefined); return; }
    try {
      const a = await api("/api/auto", { method: "POST", body: { enabled: on_ } });
      setMsg($("auto-result"), "Auto-trading " + (a.enabled ? "on" : "off") + ".", true);
    } catch (e) {
      setMsg($("auto-result"), "Refused: " + e.message, false);
    }
    refreshAuto();
    refreshPlan();
  });

  // ------------------------------------------------------------------ orders and trades
  async function refreshOrders() {
    let o;
    try { o = await api("/api/orders"); } catch (e) { return; }
    $("orders-stale").classList.toggle("hidden", !o.stale);
    const rows = (o.orders || []).map((x) =>
      '<tr data-testid="order-row" data-order-id="' + esc(x.order_id) + '">' +
      '<td title="' + esc(x.delivery_start) + '">' + esc(x.delivery_start ? localPeriod(x.delivery_start) : "–") + "</td>" +
      '<td class="' + (x.side === "sell" ? "msg-ok" : "msg-warn") + '">' + esc(x.side) + "</td>" +
      '<td class="text-right">' + fmt(x.quantity_mw, 1) + '</td><td class="text-right">' + fmt(x.price_eur_mwh, 2) + "</td>" +
      '<td title="' + esc(x.reason || "") + '">' + esc(x.status) + (x.placed_by === "auto" ? ' <span class="pill" data-testid="auto-order">auto</span>' : "") +
      '</td><td class="text-right">' + fmt(x.filled_mw, 1) + "</td>" +
      '<td class="text-right">' + (READ_ONLY ? "" : '<button type="button" class="btn btn-danger px-3" data-testid="cancel-order" data-order-id="' + esc(x.order_id) + '" aria-label="Cancel order"><i class="fa-solid fa-xmark"></i><span class="hidden sm:inline">Cancel</span></button>') + "</td></tr>");
    $("orders-table").tBodies[0].innerHTML = rows.join("") || '<tr><td colspan="7" class="text-muted">No active orders</td></tr>';
  }

  async function refreshTrades() {
    let t;
    try { t = await api("/api/trades?limit=20"); } catch (e) { return; }
    const rows = (t.trades || []).map((x) =>
      '<tr data-testid="trade-row" data-trade-id="' + esc(x.trade_id) + '">' +
      '<td title="' + esc(x.executed_at) + '">' + esc(localTime(x.executed_at, true)) + "</td>" +
      '<td title="' + esc(x.delivery_start) + '">' + esc(localPeriod(x.delivery_start)) + "</td>" +
      '<td class="' + (x.side === "sell" ? "msg-ok" : "msg-warn") + '">' + esc(x.side || "–") + "</td>" +
      '<td class="text-right">' + fmt(x.quantity_mw, 1) + '</td><td class="text-right">' + fmt(x.price_eur_mwh, 2) + "</td></tr>");
    $("trades-table").tBodies[0].innerHTML = rows.join("") || '<tr><td colspan="5" class="text-muted">No trades yet</td></tr>';
  }

  $("orders-table").addEventListener("click", async (ev) => {
    const btn = ev.target.closest("[data-testid=cancel-order]");
    if (!btn) return;
    btn.disabled = true;
    try {
      await api("/api/orders/" + encodeURIComponent(btn.dataset.orderId), { method: "DELETE" });
      setMsg($("order-result"), "Order " + btn.dataset.orderId + " cancelled.", true);
    } catch (e) {
      setMsg($("order-result"), "Cancel refused: " + e.message, false);
    }
    refreshOrders();
  });

  // ------------------------------------------------------------------ order form
  function fillDeliveryOptions() {
    if (READ_ONLY) return;
    const sel = $("order-delivery");
    const keep = sel.value;
    const now = Date.now() + serverOffsetMs;
    let t = Math.ceil(now / PERIOD_MS) * PERIOD_MS;
    if (t - now < GATE_MS) t += PERIOD_MS;
    const opts = [];
    for (let i = 0; i < 24; i++, t += PERIOD_MS) {
      const iso = new Date(t).toISOString().replace(".000Z", "Z");
      opts.push('<option value="' + iso + '"' + (iso === keep ? " selected" : "") + ">" + esc(localPeriod(iso)) + "</option>");
    }
    sel.innerHTML = opts.join("");
  }

  function orderBody() {
    const f = $("order-form");
    return {
      side: f.querySelector("input[name=side]:checked").value,
      quantity_mw: parseFloat($("order-quantity").value),
      price_eur_mwh: parseFloat($("order-price").value),
      market: $("order-market").value,
      delivery_start: $("order-delivery").value,
    };
  }

  function localProblem(b) {
    if (!isFinite(b.quantity_mw) || b.quantity_mw <= 0) return "Quantity: a number of MW above 0.";
    if (!isFinite(b.price_eur_mwh)) return "Price: a number in EUR/MWh.";
    if (!b.delivery_start) return "Delivery: choose a period.";
    return null;
  }

  let checkTimer = null;
  let checkSeq = 0;
  function scheduleCheck() {
    if (READ_ONLY) return;
    clearTimeout(checkTimer);
    checkTimer = setTimeout(runCheck, 300);
  }

  async function runCheck() {
    const b = orderBody();
    const problem = localProblem(b);
    if (problem) { setMsg($("order-check"), problem, false); return; }
    const seq = ++checkSeq;
    try {
      const r = await api("/api/orders/check", { method: "POST", body: b });
      if (seq !== checkSeq) return;
      setMsg($("order-check"), r.ok ? "Pre-trade check: feasible, limits kept." : "Pre-trade check: " + r.reason, r.ok);
    } catch (e) {
      if (seq === checkSeq) setMsg($("order-check"), "Pre-trade check: " + e.message, false);
    }
  }

  on("order-price", "input", () => { pricePrefilled = true; }); // never overwrite what was typed
  on("order-form", "input", scheduleCheck);
  on("order-form", "change", scheduleCheck);
  on("order-form", "submit", async (ev) => {
    ev.preventDefault();
    const b = orderBody();
    const problem = localProblem(b);
    if (problem) { setMsg($("order-result"), problem, false); return; }
    const btn = $("order-submit");
    btn.disabled = true;
    try {
      const o = await api("/api/orders", { method: "POST", body: b });
      setMsg($("order-result"), "Order " + o.order_id + " placed: " + o.status + ".", true);
      refreshOrders();
      refreshTrades();
    } catch (e) {
      const extra = e.body && e.body.limit ? " (limit: " + e.body.limit + ")" : "";
      setMsg($("order-result"), (e.status === 409 ? "Refused: " : "Not sent: ") + e.message + extra, false);
    } finally {
      btn.disabled = false;
      scheduleCheck();
    }
  });

  // ------------------------------------------------------------------ mode and telemetry
  function confirmDialog(text) {
    const dlg = $("confirm-dialog");
    $("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
      dlg.returnValue = "";
      dlg.showModal();
    });
  }

  on("mode-form", "click", async (ev) => {
    const btn = ev.target.closest("[data-mode]");
    if (!btn) return;
    const mode = btn.dataset.mode;
    const body = { mode: mode };
    let text;
    if (mode === "manual") {
      body.setpoint_mw = parseFloat($("mode-setpoint").value);
      const minutes = parseFloat($("mode-expires").value);
      if (!isFinite(body.setpoint_mw)) { setMsg($("mode-result"), "Setpoint: a number of MW.", false); return; }
      if (!isFinite(minutes) || minutes <= 0 || minutes > 1440) { setMsg($("mode-result"), "Expiry: 1 to 1440 minutes.", false); return; }
      body.expires_s = minutes * 60;
      text = "Switch to MANUAL at " + body.setpoint_mw + " MW (" + (body.setpoint_mw > 0 ? "discharge" : body.setpoint_mw < 0 ? "charge" : "idle") +
             ") for " + minutes + " min? Every limit still applies.";
    } else if (mode === "stopped") {
      text = "STOP the plant? It goes to 0 MW and stays there until you switch to auto or manual.";
    } else {
      text = "Switch to AUTO? The plant follows the traded schedule.";
    }
    if (!(await confirmDialog(text))) { setMsg($("mode-result"), "Not changed.", undefined); return; }
    try {
      const r = await api("/api/mode", { method: "POST", body: body });
      setMsg($("mode-result"), "Mode: " + r.mode + (r.mode === "manual" ? " " + r.setpoint_mw + " MW until " + localTime(r.expires) : "") + ".", true);
      pollStatus();
    } catch (e) {
      setMsg($("mode-result"), "Refused: " + e.message, false);
    }
  });

  on("telemetry-form", "submit", async (ev) => {
    ev.preventDefault();
    const body = {
      soc_pct: parseFloat($("telemetry-soc").value),
      power_mw: parseFloat($("telemetry-power").value),
      temperature_c: parseFloat($("telemetry-temperature").value),
    };
    if (!Object.values(body).every(isFinite)) { setMsg($("telemetry-result"), "Every field needs a number.", false); return; }
    try {
      const r = await api("/api/telemetry", { method: "POST", body: body });
      setMsg($("telemetry-result"), "Sample sent at " + localTime(r.ts, true) + " (source: " + r.source + ").", true);
    } catch (e) {
      setMsg($("telemetry-result"), "Refused: " + e.message, false);
    }
  });

  $("logout").addEventListener("click", async () => {
    try { await api("/api/logout", { method: "POST" }); } finally { window.location.replace("/login"); }
  });

  // ------------------------------------------------------------------ clock and start
  function updateClock() {
    const now = new Date();
    $("clock").textContent = now.toLocaleTimeString([], { hour12: false });
    $("clock").title = now.toISOString().replace(/\.\d+Z$/, "Z") + " UTC";
  }

  updateClock();
  setInterval(updateClock, 1000);
  makeCharts();
  pollStatus().then(() => { fillDeliveryOptions(); scheduleCheck(); });
  fillDeliveryOptions();
  connectWs();
  loadMarketHistory().then(refreshMarket);
  refreshOrders();
  refreshTrades();
  refreshSchedule();
  refreshPlan();
  refreshAuto();
  setInterval(refreshPlan, 30000);
  setInterval(refreshAuto, POLL_MS);
  setInterval(refreshMarket, 5000);
  setInterval(() => { refreshOrders(); refreshTrades(); }, POLL_MS);
  setInterval(refreshSchedule, 60000);
  setInterval(fillDeliveryOptions, 30000);
})();
