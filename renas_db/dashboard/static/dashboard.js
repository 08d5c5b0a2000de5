// renas-db dashboard: plain script, no build step. One poller per page: tick() fetches
// what is new (cursors for the progress, controller and events answers) and redraws.
// body[data-ready="1"] once the page shows its data; data-ticks counts good updates.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const params = new URLSearchParams(location.search);
  const POLL = Math.min(60000, Math.max(100, parseInt(params.get("poll") || "2000", 10) || 2000));
  const main = document.getElementById("main");
  const conn = document.getElementById("conn");

  // -- helpers ------------------------------------------------------------------------

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") e.textContent = v;
      else if (k === "cls") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const kid of kids) {
      if (kid === null || kid === undefined) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && isNaN(v))) return "-";
    if (typeof v === "number" && !Number.isInteger(v)) return v.toFixed(digits === undefined ? 4 : digits);
    return String(v);
  }

  function big(n) {
    if (n === null || n === undefined) return "-";
    if (n >= 1e9) return (n / 1e9).toFixed(2) + "G";
    if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return String(n);
  }

  function mutation(actions) {
    if (!actions || !actions.length) return "-";
    return actions.map((a) => "b" + a[0] + "." + a[1] + "=" + a[2]).join(", ");
  }

  class Unreachable extends Error {}

  async function api(path) {
    let r;
    try {
      r = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch (e) {
      throw new Unreachable("dashboard unreachable");
    }
    if (r.status === 503) throw new Unreachable("database unreachable");
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
    return data;
  }

  function setConn(ok, text) {
    conn.className = "conn " + (ok ? "ok" : "down");
    conn.textContent = ok ? "live" : text;
    body.dataset.conn = ok ? "ok" : "down";
  }

  // a table whose columns sort on click; the order survives refreshes
  class SortTable {
    constructor(columns, opts) {
      this.columns = columns;      // [{key, label, fmt?, link?, num?}]
      this.sortKey = (opts && opts.sortKey) || null;
      this.desc = !!(opts && opts.desc);
      this.rows = [];
      this.table = el("table", { cls: "data" });
      this.head = el("tr");
      for (const c of columns) {
        const th = el("th", { text: c.label, title: c.title || null, "data-key": c.key,
          onclick: () => { this.sortBy(c.key); } });
        if (c.num) th.className = "num";
        this.head.append(th);
      }
      this.table.append(el("thead", {}, this.head));
      this.tbody = el("tbody");
      this.table.append(this.tbody);
    }
    sortBy(key) {
      if (this.sortKey === key) this.desc = !this.desc;
      else { this.sortKey = key; this.desc = true; }
      this.render(this.rows);
    }
    render(rows) {
      this.rows = rows;
      let shown = rows.slice();
      if (this.sortKey) {
        const k = this.sortKey, sign = this.desc ? -1 : 1;
        shown.sort((a, b) => {
          const x = a[k], y = b[k];
          if (x === y) return 0;
          if (x === null || x === undefined) return 1;
          if (y === null || y === undefined) return -1;
          return (x < y ? -1 : 1) * sign;
        });
      }
      for (const th of this.head.children) {
        th.dataset.sorted = th.dataset.key === this.sortKey ? (this.desc ? "desc" : "asc") : "";
      }
      this.tbody.replaceChildren(...shown.map((r) => el("tr", {}, ...this.columns.map((c) => {
        const v = c.fmt ? c.fmt(r[c.key], r) : fmt(r[c.key]);
        const td = el("td", { cls: c.num ? "num" : (c.cls || null) });
        if (c.link) td.append(el("a", { href: c.link(r), text: v }));
        else if (v instanceof Node) td.append(v);
        else td.textContent = v;
        if (c.klass) { const k = c.klass(r); if (k) td.classList.add(k); }
        return td;
      }))));
      if (!shown.length) {
        this.tbody.append(el("tr", {}, el("td", { colspan: String(this.columns.length),
          cls: "empty", text: "none" })));
      }
    }
  }

  // the section's inner width (the box itself may be hidden while it has no chart)
  function chartWidth(box) {
    const section = box.parentElement;
    const style = getComputedStyle(section);
    const inner = section.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return Math.max(320, Math.floor(inner) - 8);
  }

  // a uPlot chart that keeps its options and takes new data
  class Chart {
    constructor(box, opts) {
      this.box = box;
      this.opts = opts;
      this.plot = null;
      this.key = "";
    }
    set(data, key) {
      // a new series list (an overlay added) needs a new chart; data alone does not
      if (!this.plot || key !== this.key) {
        if (this.plot) this.plot.destroy();
        this.key = key;
        const opts = Object.assign({ width: chartWidth(this.box), height: 300 }, this.opts());
        this.plot = new uPlot(opts, data, this.box);
      } else {
        this.plot.setData(data);
      }
    }
  }

  // -- the progress of one search, fetched with a cursor -------------------------------

  class Progress {
    constructor(name) {
      this.name = name;
      this.stride = null;
      this.after = 0;
      this.samples = [];
      this.dots = [];
      this.tail = null;
      this.stepsDone = 0;
      this.steps = null;
      this.complete = true;
    }
    async update() {
      let q = "?after=" + this.after;
      if (this.stride !== null) q += "&stride=" + this.stride;
      const r = await api("/api/searches/" + encodeURIComponent(this.name) + "/progress" + q);
      if (r.reset) { this.samples = []; this.dots = []; }
      this.stride = r.stride;
      this.samples.push(...r.samples);
      this.dots.push(...r.children);
      if (this.samples.length) this.after = this.samples[this.samples.length - 1].step;
      this.tail = r.tail;
      this.stepsDone = r.steps_done;
      this.steps = r.steps;
      this.complete = r.complete;
    }
    points() {
      return this.tail ? this.samples.concat([this.tail]) : this.samples;
    }
  }

  // -- pages ----------------------------------------------------------------------------

  function searchesPage() {
    const table = new SortTable([
      { key: "name", label: "search", link: (r) => "/search/" + encodeURIComponent(r.name) },
      { key: "status", label: "status", klass: (r) => "st-" + r.status },
      { key: "steps_done", label: "steps", num: true,
        fmt: (v, r) => v + " / " + fmt(r.steps) },
      { key: "best_fitness", label: "best", num: true },
      { key: "mean_fitness", label: "mean", num: true },
      { key: "models_trained", label: "#M", title: "models trained", num: true },
      { key: "examples_per_model", label: "#Ex", title: "examples per model", num: true,
        fmt: (v) => big(v === null ? null : Math.round(v)) },
      { key: "cost_examples", label: "Cost", title: "examples trained on in all", num: true,
        fmt: (v) => big(v) },
      { key: "live_workers", label: "live workers", num: true },
      { key: "mutator", label: "mutator" },
      { key: "created_at", label: "created" },
    ]);
    main.replaceChildren(el("h1", { text: "Searches" }), table.table);
    document.getElementById("crumbs").textContent = "";
    return async function tick() {
      const r = await api("/api/searches");
      table.render(r.searches);
    };
  }

  function searchPage() {
    const name = body.dataset.search;
    document.title = name + " - renas-db";
    document.getElementById("crumbs").replaceChildren(" / ", el("span", { text: name }));
    const summary = el("div", { cls: "summary", id: "summary" });
    const overlaySelect = el("select", { id: "overlay", "aria-label": "overlay a search" },
      el("option", { value: "", text: "overlay another search..." }));
    const overlays = new Map();   // name -> Progress
    const progBox = el("div", { cls: "chart", id: "progress-chart" });
    const ctlBox = el("div", { cls: "chart", id: "controller-chart" });
    const ratioBox = el("div", { cls: "chart", id: "ratio-chart" });
    const sizeBox = el("div", { cls: "chart", id: "size-chart" });
    const ctlNote = el("p", { cls: "note", id: "controller-note" });
    const progNote = el("p", { cls: "note", id: "progress-reading" });
    const pop = new SortTable([
      { key: "id", label: "id", link: (r) => "/individual/" + r.id, num: true },
      { key: "origin", label: "origin" },
      { key: "fitness", label: "fitness", num: true },
      { key: "val_loss", label: "val loss", num: true },
      { key: "age_steps", label: "age (steps)", num: true },
      { key: "parent_id", label: "parent", num: true },
      { key: "n_params", label: "params", num: true, fmt: big },
      { key: "mult_adds", label: "mult-adds", num: true, fmt: big },
      { key: "genotype", label: "genotype", cls: "mono" },
    ], { sortKey: "fitness", desc: true });
    const running = new SortTable([
      { key: "job", label: "job", num: true },
      { key: "kind", label: "kind" },
      { key: "step_index", label: "index", num: true },
      { key: "attempt", label: "attempt", num: true },
      { key: "host", label: "worker", fmt: (v, r) => (v || "?") + ":" + fmt(r.pid) },
      { key: "device", label: "device" },
      { key: "heartbeat_age_s", label: "heartbeat age / lease", num: true,
        fmt: (v, r) => fmt(v, 1) + " s / " + fmt(r.lease_s, 0) + " s",
        klass: (r) => (r.heartbeat_age_s !== null && r.heartbeat_age_s > r.lease_s ? "late" : null) },
      { key: "running_s", label: "running for", num: true, fmt: (v) => fmt(v, 0) + " s" },
      { key: "progress", label: "examples done", num: true, fmt: big },
    ]);
    const workers = new SortTable([
      { key: "id", label: "worker", num: true },
      { key: "host", label: "host", fmt: (v, r) => v + ":" + r.pid },
      { key: "device", label: "device" },
      { key: "state", label: "state" },
      { key: "heartbeat_age_s", label: "heartbeat age", num: true, fmt: (v) => fmt(v, 1) + " s" },
      { key: "jobs_done", label: "jobs done", num: true },
      { key: "failures", label: "failures", num: true },
      { key: "started_at", label: "started" },
    ]);
    const dead = new SortTable([
      { key: "job", label: "job", num: true },
      { key: "kind", label: "kind" },
      { key: "step_index", label: "index", num: true },
      { key: "attempt", label: "attempts", num: true, fmt: (v, r) => v + " / " + r.max_attempts },
      { key: "error", label: "error", cls: "err" },
      { key: "finished_at", label: "at" },
    ]);
    const eventList = el("ol", { cls: "events", id: "events", reversed: "" });
    const retrain = new SortTable([
      { key: "id", label: "id", link: (r) => "/individual/" + r.id, num: true },
      { key: "source_id", label: "from", num: true },
      { key: "search_fitness", label: "search fitness", num: true },
      { key: "val_accuracy", label: "val accuracy", num: true },
      { key: "test_accuracy", label: "test accuracy", num: true },
      { key: "n_params", label: "params", num: true, fmt: big },
      { key: "genotype", label: "genotype", cls: "mono" },
    ], { sortKey: "val_accuracy", desc: true });
    const study = el("div", { id: "study" });

    main.replaceChildren(
      el("h1", { text: "Search " + name }), summary,
      el("section", { id: "sec-progress" }, el("h2", { text: "Progress" }),
        el("p", { cls: "note", text: "Population best and mean ± std after each step; " +
          "each child a dot, green when better than its parent, red when not." }),
        overlaySelect, progNote, progBox),
      el("section", { id: "sec-population" }, el("h2", { text: "Population" }), pop.table),
      el("section", { id: "sec-controller" }, el("h2", { text: "Controller" }), ctlNote, ctlBox, ratioBox, sizeBox),
      el("section", { id: "sec-workers" }, el("h2", { text: "Workers and jobs" }),
        el("h3", { text: "Running leases" }), running.table,
        el("h3", { text: "Workers" }), workers.table,
        el("h3", { text: "Dead jobs" }), dead.table,
        el("h3", { text: "Events" }), eventList),
      el("section", { id: "sec-reports" }, el("h2", { text: "Reports" }),
        el("h3", { text: "Retrained networks" }), retrain.table, study));

    const prog = new Progress(name);
    const COLORS = ["#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
    const progChart = new Chart(progBox, () => {
      const series = [{ label: "step" },
        { label: "best", stroke: "#1f77b4", width: 2, spanGaps: true },
        { label: "mean", stroke: "#ff7f0e", width: 1.5, spanGaps: true },
        { label: "mean + std", stroke: "#ffbb78", dash: [4, 4], spanGaps: true },
        { label: "mean - std", stroke: "#ffbb78", dash: [4, 4], spanGaps: true },
        { label: "child, gain > 0", stroke: "#2ca02c", paths: () => null,
          points: { show: true, size: 5, fill: "#2ca02c" } },
        { label: "child, gain <= 0", stroke: "#d62728", paths: () => null,
          points: { show: true, size: 4, fill: "#f4a6a6" } }];
      let i = 0;
      for (const other of overlays.keys()) {
        series.push({ label: other + " best", stroke: COLORS[i++ % COLORS.length], width: 1.5,
          spanGaps: true });
      }
      return { series, scales: { x: { time: false } },
        axes: [{ label: "step" }, { label: "fitness", size: 60 }] };
    });
    const ctlChart = new Chart(ctlBox, () => ({
      title: "mean reward, baseline and policy entropy per version",
      series: [{ label: "version" }, { label: "mean reward", stroke: "#1f77b4", spanGaps: true },
        { label: "baseline", stroke: "#ff7f0e", spanGaps: true },
        { label: "entropy (nats, right)", stroke: "#2ca02c", scale: "nats", spanGaps: true }],
      scales: { x: { time: false }, nats: { auto: true } },
      axes: [{ label: "controller version" }, { size: 60 },
        { scale: "nats", side: 1, size: 50, grid: { show: false } }] }));
    const ratioChart = new Chart(ratioBox, () => ({
      title: "stale-episode probability ratio (PPO) per update",
      series: [{ label: "version" }, { label: "ratio mean", stroke: "#1f77b4", spanGaps: true },
        { label: "ratio min", stroke: "#aec7e8", spanGaps: true },
        { label: "ratio max", stroke: "#aec7e8", spanGaps: true },
        { label: "clipped share", stroke: "#d62728", spanGaps: true }],
      scales: { x: { time: false } }, axes: [{ label: "controller version" }, { size: 60 }] }));
    const sizeChart = new Chart(sizeBox, () => ({
      title: "mutation size (nodes changed per child) per version",
      series: [{ label: "version" }, { label: "mean nodes changed", stroke: "#2ca02c", spanGaps: true }],
      scales: { x: { time: false } }, axes: [{ label: "controller version" }, { size: 60 }] }));

    let ctlAfter = 0;
    const versions = [];
    const sizes = new Map();
    let eventAfter = 0;
    const EVENTS_SHOWN = 300;
    let othersLoaded = false;

    overlaySelect.addEventListener("change", async () => {
      const other = overlaySelect.value;
      if (!other || overlays.has(other)) return;
      const p = new Progress(other);
      overlays.set(other, p);
      await p.update();
      drawProgress();
    });

    function drawProgress() {
      const pts = prog.points();
      const dotAt = new Map(prog.dots.map((d) => [d.step, d]));
      const xs = pts.map((p) => p.step);
      const main = [xs, pts.map((p) => p.best), pts.map((p) => p.mean),
        pts.map((p) => (p.mean === null ? null : p.mean + p.std)),
        pts.map((p) => (p.mean === null ? null : p.mean - p.std)),
        xs.map((x) => { const d = dotAt.get(x); return d && d.gain !== null && d.gain > 0 ? d.fitness : null; }),
        xs.map((x) => { const d = dotAt.get(x); return d && (d.gain === null || d.gain <= 0) ? d.fitness : null; })];
      let data = main;
      if (overlays.size) {
        const tables = [main];
        for (const p of overlays.values()) {
          const o = p.points();
          tables.push([o.map((q) => q.step), o.map((q) => q.best)]);
        }
        data = uPlot.join(tables);
      }
      progChart.set(data, [...overlays.keys()].join("|"));
      // a long history is read in chunks: until it is all read, the curve is its first steps
      progNote.textContent = prog.complete ? "" :
        "reading the history: the first " + prog.stepsDone + " steps so far";
      progBox.dataset.points = String(xs.length);
      progBox.dataset.lastStep = String(xs.length ? xs[xs.length - 1] : 0);
    }

    function drawSummary(s) {
      const jobs = Object.entries(s.jobs).map(([kind, states]) => kind + ": " +
        Object.entries(states).map(([st, n]) => n + " " + st).join(", ")).join("; ");
      summary.replaceChildren(
        el("span", { cls: "st st-" + s.status, id: "status", text: s.status }),
        el("span", {}, "steps ", el("b", { id: "steps", text: s.steps_done + " / " + fmt(s.steps) })),
        el("span", {}, "init " + s.init_done + " / " + fmt(s.population)),
        el("span", {}, "models " + fmt(s.models_trained)),
        el("span", {}, "examples " + big(s.cost_examples)),
        el("span", {}, "mutator " + fmt(s.config.mutator)),
        el("span", { cls: "jobs" }, "jobs: " + (jobs || "none")));
    }

    return async function tick() {
      const s = await api("/api/searches/" + encodeURIComponent(name));
      await prog.update();
      for (const p of overlays.values()) await p.update();
      const pop_ = await api("/api/searches/" + encodeURIComponent(name) + "/population");
      const ctl = await api("/api/searches/" + encodeURIComponent(name) + "/controller?after=" + ctlAfter);
      const w = await api("/api/searches/" + encodeURIComponent(name) + "/workers?after_event=" + eventAfter);
      const rep = await api("/api/searches/" + encodeURIComponent(name) + "/reports");
      if (!othersLoaded) {
        const all = await api("/api/searches");
        for (const o of all.searches) {
          if (o.name !== name) overlaySelect.append(el("option", { value: o.name, text: o.name }));
        }
        othersLoaded = true;
      }
      drawSummary(s);
      drawProgress();
      pop.render(pop_.population);
      versions.push(...ctl.versions);
      for (const m of ctl.mutation_size) sizes.set(m.version, m.mutation_size);
      if (ctl.versions.length) ctlAfter = ctl.versions[ctl.versions.length - 1].version;
      if (versions.length) {
        ctlNote.textContent = versions.length + " controller versions; the latest: mean reward " +
          fmt(versions[versions.length - 1].mean_reward) + ", baseline " +
          fmt(versions[versions.length - 1].baseline) + ", policy entropy " +
          fmt(versions[versions.length - 1].entropy) + " nats";
        const vx = versions.map((v) => v.version);
        ctlChart.set([vx, versions.map((v) => v.mean_reward), versions.map((v) => v.baseline),
          versions.map((v) => v.entropy)], "");
        ratioChart.set([vx, versions.map((v) => v.ratio_mean), versions.map((v) => v.ratio_min),
          versions.map((v) => v.ratio_max), versions.map((v) => v.ratio_clipped)], "");
      } else {
        ctlNote.textContent = "no controller versions: mutator " + fmt(ctl.mutator) +
          " learns no controller, or none has been trained yet";
      }
      if (sizes.size) {
        const sx = [...sizes.keys()].sort((a, b) => a - b);
        sizeChart.set([sx, sx.map((v) => sizes.get(v))], "");
      }
      running.render(w.running);
      workers.render(w.workers);
      dead.render(w.dead);
      for (const e of w.events) {
        eventList.prepend(el("li", {}, el("span", { cls: "when", text: e.created_at }), " ",
          el("b", { text: e.kind }), " ", e.message));
        eventAfter = Math.max(eventAfter, e.id);
      }
      while (eventList.children.length > EVENTS_SHOWN) eventList.lastChild.remove();
      retrain.render(rep.retrain);
      if (rep.study) {
        const t = new SortTable([
          { key: "name", label: "search", link: (r) => "/search/" + encodeURIComponent(r.name) },
          { key: "status", label: "status" },
          { key: "models_trained", label: "#M", num: true },
          { key: "best_fitness", label: "best", num: true }]);
        t.render(rep.study.searches);
        study.replaceChildren(el("h3", { text: "Study " + rep.study.name }), t.table);
      } else {
        study.replaceChildren(el("p", { cls: "note", text: "not part of a study" }));
      }
    };
  }

  function individualPage() {
    const id = body.dataset.id;
    let drawn = false;
    const facts = el("dl", { cls: "facts", id: "facts" });
    const cell = el("div", { cls: "cell", id: "cell" });
    const lineage = new SortTable([
      { key: "depth", label: "depth", num: true },
      { key: "id", label: "id", link: (r) => "/individual/" + r.id, num: true },
      { key: "origin", label: "origin" },
      { key: "fitness", label: "fitness", num: true },
      { key: "gain", label: "gain over parent", num: true,
        klass: (r) => (r.gain === null ? null : (r.gain > 0 ? "up" : "down")) },
      { key: "mutation", label: "mutation (edge from parent)", fmt: (v) => mutation(v), cls: "mono" },
      { key: "genotype", label: "genotype", cls: "mono" },
    ], { sortKey: "depth", desc: false });
    const title = el("h1", { text: "Individual " + id });
    main.replaceChildren(title, facts,
      el("section", { id: "sec-cell" }, el("h2", { text: "Cell" }), cell),
      el("section", { id: "sec-lineage" }, el("h2", { text: "Lineage" }), lineage.table));
    return async function tick() {
      const r = await api("/api/individuals/" + encodeURIComponent(id));
      document.getElementById("crumbs").replaceChildren(" / ",
        el("a", { href: "/search/" + encodeURIComponent(r.search), text: r.search }),
        " / individual " + r.id);
      const row = (k, v) => [el("dt", { text: k }), el("dd", { text: v })];
      facts.replaceChildren(
        ...row("search", r.search), ...row("origin", r.origin),
        ...row("state", (r.alive ? "alive" : "dead") + (r.quarantined ? ", quarantined" : "")),
        ...row("fitness", fmt(r.fitness)), ...row("val loss", fmt(r.val_loss)),
        ...row("test accuracy", fmt(r.test_accuracy)),
        ...row("parameters", fmt(r.n_params)), ...row("mult-adds", fmt(r.mult_adds)),
        ...row("parent", fmt(r.parent_id)), ...row("mutation", mutation(r.mutation)),
        ...row("controller version", fmt(r.controller_version)),
        ...row("examples seen", fmt(r.examples_seen)),
        ...row("train seconds", fmt(r.train_seconds, 1)),
        ...row("checkpoint", r.checkpoint), ...row("created", fmt(r.created_at)),
        ...row("died", fmt(r.died_at)), ...row("genotype", r.genotype));
      if (!drawn) {
        if (r.cell_svg) cell.innerHTML = r.cell_svg;   // Graphviz's SVG, made by the server
        else cell.textContent = "(Graphviz's dot is not installed: no drawing)";
        drawn = true;
      }
      lineage.render(r.lineage);
    };
  }

  // -- the poller -------------------------------------------------------------------------

  const pages = { searches: searchesPage, search: searchPage, individual: individualPage };
  if (!pages[page]) return;
  const tick = pages[page]();
  let ticks = 0;
  async function loop() {
    try {
      await tick();
      setConn(true);
      ticks += 1;
      body.dataset.ticks = String(ticks);
      body.dataset.ready = "1";
    } catch (e) {
      if (e instanceof Unreachable) setConn(false, e.message + " \u2014 retrying");
      else setConn(false, "error: " + e.message + " \u2014 retrying");
    }
    setTimeout(loop, POLL);
  }
  loop();
})();
