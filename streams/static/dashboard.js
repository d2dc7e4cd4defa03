// spendstream live dashboard: polls /dashboard/data every 2 s and renders every budget.
//
// Money arrives as exact decimal strings. Every figure shown is rounded to cents on the
// string (toCents), never through a float; only the chart's points are Numbers (a
// picture, not a figure). The DOM is built with textContent: names are user data.
"use strict";

const POLL_MS = 2000;
const DAY_MS = 86400000;
const charts = new Map(); // budget id -> {chart, key}

// --- exact money ------------------------------------------------------------------------
// A decimal string ("12.3456", "-0.005", "1E+3") rounded half away from zero to 2 places,
// as "12.35": digit arithmetic on the string, with BigInt for the carry.
function toCents(value) {
  if (value === null || value === undefined) return "";
  const m = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(String(value).trim());
  if (!m || (m[2] === "" && (m[3] === undefined || m[3] === ""))) return String(value);
  const negative = m[1] === "-";
  let digits = (m[2] || "") + (m[3] || "");
  let point = (m[2] || "").length + (m[4] ? parseInt(m[4], 10) : 0);
  if (point < 0) {
    digits = "0".repeat(-point) + digits;
    point = 0;
  }
  if (digits.length < point + 3) digits += "0".repeat(point + 3 - digits.length);
  const kept = digits.slice(0, point + 2) || "0";
  let n = BigInt(kept);
  if (digits.charCodeAt(point + 2) - 48 >= 5) n += 1n;
  let s = n.toString().padStart(3, "0");
  s = s.slice(0, -2) + "." + s.slice(-2);
  return negative && /[1-9]/.test(s) ? "-" + s : s;
}

// "1234567.80" -> "1,234,567.80" (display only; data-field elements keep toCents' text)
function grouped(cents) {
  const [whole, frac] = cents.split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const digits = sign ? whole.slice(1) : whole;
  return sign + digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (frac !== undefined ? "." + frac : "");
}

function money(value, currency) {
  if (value === null || value === undefined) return "–";
  return grouped(toCents(value)) + (currency ? " " + currency : "");
}

// --- DOM helpers ------------------------------------------------------------------------
// children without the null/false placeholders of conditional parts
function parts(...children) {
  return children.filter((c) => c !== null && c !== undefined && c !== false);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

function days(value) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(1);
}

// --- one budget -------------------------------------------------------------------------
function figure(label, value, field, extra) {
  return el("div", { class: "figure" },
    el("span", { class: "label" }, label),
    el("span", { class: "value", "data-field": field }, value),
    extra ? el("span", { class: "extra" }, extra) : null);
}

function progress(period) {
  const bar = el("div", { class: "progress" });
  const fill = el("div", { class: "fill state-" + period.state });
  const pct = Math.min(Number(period.percent) || 0, 100);
  fill.style.width = pct + "%";
  bar.append(fill);
  for (const tier of period.tiers) {
    const p = Number(tier.percent);
    if (p > 100) continue;
    const tick = el("div", { class: "tick" + (tier.reached ? " reached" : ""),
      title: tier.percent + " %: " + tier.action });
    tick.style.left = p + "%";
    bar.append(tick);
  }
  return bar;
}

function tiersLine(budget, period) {
  if (!period.tiers.length) return null;
  return el("ul", { class: "tiers", "data-field": "tiers" },
    ...period.tiers.map((t) => el("li", {
      class: t.reached ? "reached" : "",
      "data-tier-percent": t.percent,
      "data-tier-amount": t.amount,
    }, t.percent + " % · " + money(t.amount, period.currency) + " · " + t.action +
      (t.downgrade_to ? " → " + t.downgrade_to : ""))));
}

function alertsBlock(budget) {
  const box = el("div", { class: "alerts" }, el("h3", {}, "Alerts"));
  if (!budget.alerts.length) {
    box.append(el("p", { class: "muted" }, "no alerts"));
    return box;
  }
  const list = el("ul", { "data-field": "alerts" });
  for (const a of budget.alerts) {
    const what = a.kind === "threshold" ? a.tier + " %" : a.kind +
      (a.hour ? " " + when(a.hour) : "");
    list.append(el("li", { "data-alert-id": a.alert_id, "data-alert-state": a.state },
      el("span", { class: "chip " + a.state }, a.state),
      el("span", { class: "what" }, what),
      el("span", { class: "muted" }, a.period_key + (a.by ? " · " + a.by : ""))));
  }
  box.append(list);
  return box;
}

function driversBlock(period, warehouse) {
  const box = el("div", { class: "drivers" }, el("h3", {}, "Top cost drivers"));
  if (!period.drivers) {
    const why = warehouse.available ? "no data for this period" : "no ClickHouse";
    box.append(el("p", { class: "muted no-warehouse", "data-field": "drivers",
      title: warehouse.message || "" }, why));
    return box;
  }
  const grid = el("div", { class: "driver-grid", "data-field": "drivers" });
  for (const [dimension, rows] of Object.entries(period.drivers)) {
    const top = rows.length ? Number(rows[0].cost) || 1 : 1;
    const table = el("table", { "data-dimension": dimension },
      el("caption", {}, dimension));
    for (const r of rows) {
      const bar = el("div", { class: "bar" });
      bar.style.width = Math.max(2, (Number(r.cost) / top) * 100) + "%";
      table.append(el("tr", { "data-driver": r.name },
        el("td", { class: "name" }, r.name || "(none)", bar),
        el("td", { class: "num" }, money(r.cost)),
        el("td", { class: "num muted" }, r.events + " ev")));
    }
    if (!rows.length) table.append(el("tr", {}, el("td", { class: "muted" }, "–")));
    grid.append(table);
  }
  box.append(grid);
  return box;
}

function pastPeriods(budget) {
  const past = budget.periods.filter((p) => !p.current);
  if (!past.length) return null;
  const table = el("table", { class: "past" },
    el("caption", {}, "Other periods"),
    el("tr", {}, el("th", {}, "period"), el("th", {}, "spent"), el("th", {}, "limit"),
      el("th", {}, "state")));
  for (const p of past) {
    table.append(el("tr", { "data-period-key": p.period_key },
      el("td", {}, p.period_key),
      el("td", { class: "num", "data-field": "period-spent" }, toCents(p.spent)),
      el("td", { class: "num" }, money(p.limit)),
      el("td", {}, el("span", { class: "badge state-" + p.state }, p.state))));
  }
  return table;
}

// the legend: one "tiers" entry for every tier line, none for the band's lower edge
function legendLabels(chart) {
  const items = Chart.defaults.plugins.legend.labels.generateLabels(chart);
  let tier = false;
  return items.filter((item) => {
    if (item.text === "95 % low") return false;
    if (!item.text.startsWith("tier ")) return true;
    if (tier) return false;
    tier = true;
    item.text = "tiers";
    return true;
  });
}

function chartConfig(period) {
  const start = Date.parse(period.period_start);
  const end = Date.parse(period.period_end);
  const span = (end - start) / DAY_MS;
  const x = (iso) => Math.min(Math.max((Date.parse(iso) - start) / DAY_MS, 0), span);
  const spent = Number(period.spent);
  const nowX = x(period.updated_at || new Date().toISOString());
  const actual = [{ x: 0, y: 0 }];
  for (const pt of period.curve || []) actual.push({ x: x(pt.t), y: Number(pt.spent) });
  actual.push({ x: nowX, y: spent });
  actual.sort((a, b) => a.x - b.x);
  const line = (y) => [{ x: 0, y: y }, { x: span, y: y }];
  const datasets = [
    { label: "spent", data: actual, borderColor: "#2563eb", backgroundColor: "#2563eb",
      borderWidth: 2, pointRadius: 0, tension: 0 },
  ];
  if (period.projected_total !== null && period.projected_total !== undefined) {
    const to = (v) => [{ x: nowX, y: spent }, { x: span, y: Number(v) }];
    datasets.push(
      { label: "95 % low", data: to(period.projected_low), borderWidth: 0, pointRadius: 0,
        borderColor: "rgba(37,99,235,0)" },
      { label: "95 % band", data: to(period.projected_high), borderWidth: 0, pointRadius: 0,
        borderColor: "rgba(37,99,235,0)", backgroundColor: "rgba(37,99,235,0.15)", fill: "-1" },
      { label: "projected", data: to(period.projected_total), borderColor: "#2563eb",
        borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0 });
  }
  datasets.push({ label: "limit", data: line(Number(period.limit)), borderColor: "#dc2626",
    borderWidth: 2, pointRadius: 0 });
  for (const t of period.tiers) {
    datasets.push({ label: "tier " + t.percent + " %", data: line(Number(t.amount)),
      borderColor: t.reached ? "#f59e0b" : "#9ca3af", borderDash: [2, 3], borderWidth: 1,
      pointRadius: 0 });
  }
  return {
    type: "line",
    data: { datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      interaction: { mode: "nearest", intersect: false },
      plugins: {
        legend: { labels: { boxWidth: 12, generateLabels: legendLabels } },
        tooltip: { callbacks: { label: (c) => c.dataset.label + ": " + c.parsed.y.toFixed(2) } },
      },
      scales: {
        x: { type: "linear", min: 0, max: span, title: { display: true, text: "day of period" },
          ticks: { callback: (v) => new Date(start + v * DAY_MS).toISOString().slice(5, 10) } },
        y: { beginAtZero: true, title: { display: true, text: period.currency } },
      },
    },
  };
}

function renderChart(budgetId, holder, period) {
  const config = chartConfig(period);
  const known = charts.get(budgetId);
  if (typeof Chart === "undefined") {
    holder.replaceChildren(el("p", { class: "muted" }, "chart library not loaded"));
    return;
  }
  if (known && known.key === period.period_key && holder.contains(known.chart.canvas)) {
    known.chart.data.datasets = config.data.datasets;
    known.chart.options.scales = config.options.scales;
    known.chart.update("none");
    return;
  }
  if (known) known.chart.destroy();
  const canvas = el("canvas", { "aria-label": "spend over the period", role: "img" });
  holder.replaceChildren(canvas);
  charts.set(budgetId, { chart: new Chart(canvas, config), key: period.period_key });
}

function section(budget) {
  const existing = document.querySelector(
    'section.budget[data-budget-id="' + CSS.escape(budget.budget_id) + '"]');
  if (existing) return existing;
  const node = el("section", { class: "budget", "data-budget-id": budget.budget_id },
    el("div", { class: "head" }), el("div", { class: "body" }),
    el("div", { class: "chart" }), el("div", { class: "lists" }), el("div", { class: "rest" }));
  return node;
}

function renderBudget(budget, warehouse) {
  const node = section(budget);
  const period = budget.periods.find((p) => p.current) || budget.periods[0];
  const [head, body, chartBox, lists, rest] = node.children;
  node.dataset.state = period ? period.state : "normal";
  head.replaceChildren(...parts(
    el("h2", {}, budget.name, el("span", { class: "id" }, budget.budget_id)),
    period ? el("span", { class: "badge state-" + period.state, "data-field": "state" },
      period.state) : null,
    budget.deleted ? el("span", { class: "badge deleted" }, "deleted") : null,
    el("span", { class: "muted" }, [
      period ? "period " + period.period_key : "no period",
      budget.period ? budget.period + (budget.timezone ? " · " + budget.timezone : "") : null,
      budget.parent_id ? "parent " + budget.parent_id : null,
    ].filter(Boolean).join(" · "))));
  if (!period) {
    body.replaceChildren(el("p", { class: "muted" }, "no status yet"));
    chartBox.replaceChildren();
    lists.replaceChildren(alertsBlock(budget));
    rest.replaceChildren();
    return node;
  }
  node.dataset.periodKey = period.period_key;
  const cur = period.currency;
  const projected = period.projected_total === null || period.projected_total === undefined
    ? "–" : money(period.projected_total, cur);
  const band = period.projected_low === null || period.projected_low === undefined ? null
    : "95 % " + money(period.projected_low) + " – " + money(period.projected_high);
  body.replaceChildren(...parts(
    el("div", { class: "figures" },
      el("div", { class: "figure main" },
        el("span", { class: "label" }, "spent"),
        el("span", { class: "value" },
          el("span", { "data-field": "spent", "data-exact": period.spent }, toCents(period.spent)),
          el("span", { class: "of" }, " of "),
          el("span", { "data-field": "limit" }, toCents(period.limit)),
          " " + cur),
        el("span", { class: "extra", "data-field": "percent" }, period.percent + " %")),
      figure("remaining", money(period.remaining, cur), "remaining"),
      figure("days left", days(period.days_left), "days-left",
        period.state === "exceeded" ? "limit passed"
          : period.days_to_limit !== null && period.days_to_limit !== undefined
            ? "limit in " + days(period.days_to_limit) + " d" : null),
      figure("burn rate", period.burn_rate_per_day === null ||
        period.burn_rate_per_day === undefined ? "–" : money(period.burn_rate_per_day, cur) + "/d",
        "burn-rate"),
      figure("projected", projected, "projected", band),
      figure("events", String(period.event_count), "events",
        period.updated_at ? "updated " + when(period.updated_at) : "no spend yet")),
    progress(period),
    tiersLine(budget, period)));
  renderChart(budget.budget_id, chartBox, period);
  lists.replaceChildren(driversBlock(period, warehouse), alertsBlock(budget));
  const past = pastPeriods(budget);
  rest.replaceChildren(...(past ? [past] : []));
  return node;
}

function render(data) {
  const main = document.getElementById("budgets");
  const wh = document.getElementById("warehouse");
  wh.textContent = data.warehouse.available ? "ClickHouse: connected" : "no ClickHouse";
  wh.title = data.warehouse.message || "";
  wh.className = "warehouse " + (data.warehouse.available ? "ok" : "down");
  const wanted = new Set();
  const nodes = [];
  for (const budget of data.budgets) {
    wanted.add(budget.budget_id);
    nodes.push(renderBudget(budget, data.warehouse));
  }
  for (const [id, known] of charts) {
    if (!wanted.has(id)) {
      known.chart.destroy();
      charts.delete(id);
    }
  }
  if (!nodes.length) {
    nodes.push(el("p", { class: "empty" },
      "No budgets yet: spendstream budgets apply examples/budgets.yaml"));
  }
  // reorder / add / drop without recreating the sections (their charts stay)
  nodes.forEach((node, i) => {
    if (main.children[i] !== node) main.insertBefore(node, main.children[i] || null);
  });
  while (main.children.length > nodes.length) main.lastElementChild.remove();
  for (const chart of charts.values()) chart.chart.resize();
  document.body.dataset.loaded = "true";
  document.body.dataset.generatedAt = data.generated_at;
}

async function poll() {
  const status = document.getElementById("connection");
  try {
    const response = await fetch("/dashboard/data", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    status.textContent = "live · " + new Date().toISOString().slice(11, 19) + " UTC";
    status.className = "connection ok";
  } catch (exc) {
    status.textContent = "offline (" + exc.message + "), retrying";
    status.className = "connection down";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

if (typeof module !== "undefined") {
  module.exports = { toCents, grouped }; // for a quick check under node
} else {
  poll();
}
