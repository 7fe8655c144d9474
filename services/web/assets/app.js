// The console's few scripts: training curves (uPlot), live updates over server-sent events,
// and the predict box. Pages work without them; they only add charts and live data.
"use strict";

(function () {
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const readJson = (id) => {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  };
  const epochNumber = (epoch, index) => {
    const n = Number(epoch);
    return Number.isFinite(n) ? n : index + 1;
  };
  // The chart fills its box (a grid cell), less the box's padding.
  const chartWidth = (box) => Math.max(240, (box.clientWidth || 400) - 18);

  // window.automl.charts: metric name -> {plot, element}; the tests read data-points.
  const automl = (window.automl = { charts: {} });

  function makeChart(container, title, seriesLabels, data, pointsOnly) {
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.metric = title;
    const heading = document.createElement("h3");
    heading.textContent = title;
    box.appendChild(heading);
    container.appendChild(box);
    const series = [{ label: "epoch" }].concat(
      seriesLabels.map((label, i) => ({
        label,
        stroke: COLORS[i % COLORS.length],
        width: pointsOnly ? 0 : 2,
        points: { show: true, size: pointsOnly ? 8 : 5 },
        spanGaps: true,
      }))
    );
    const plot = new uPlot(
      {
        width: chartWidth(box),
        height: 220,
        scales: { x: { time: false } },
        axes: [{}, { size: 64 }],
        series,
        legend: { live: false },
      },
      data,
      box
    );
    const chart = { plot, box };
    automl.charts[title] = chart;
    setPoints(chart);
    return chart;
  }

  function setPoints(chart) {
    const data = chart.plot.data;
    let points = 0;
    for (let s = 1; s < data.length; s++) {
      points += data[s].filter((v) => v !== null && v !== undefined).length;
    }
    chart.box.dataset.points = String(points);
  }

  window.addEventListener("resize", () => {
    for (const chart of Object.values(automl.charts)) {
      chart.plot.setSize({ width: chartWidth(chart.box), height: 220 });
    }
  });

  // A run: one chart per metric against epoch, growing while the run trains.
  function runPage(run) {
    const container = document.getElementById("charts");
    const seen = new Set();
    const rows = {}; // metric -> [[x...], [y...]]
    const addEpoch = (epoch, index) => {
      if (seen.has(epoch.epoch)) return false;
      seen.add(epoch.epoch);
      const x = epochNumber(epoch.epoch, index);
      for (const [metric, value] of Object.entries(epoch.metrics)) {
        const row = rows[metric] || (rows[metric] = [[], []]);
        row[0].push(x);
        row[1].push(value);
      }
      return true;
    };
    run.epochs.forEach(addEpoch);
    const draw = () => {
      for (const metric of Object.keys(rows).sort()) {
        const chart = automl.charts[metric];
        if (chart) {
          chart.plot.setData(rows[metric]);
          setPoints(chart);
        } else {
          makeChart(container, metric, [metric], rows[metric], false);
        }
      }
    };
    draw();
    if (run.ended) return;
    const events = new EventSource(`/runs/${encodeURIComponent(run.run_id)}/events`);
    events.addEventListener("epoch", (e) => {
      if (addEpoch(JSON.parse(e.data), seen.size)) draw();
    });
    events.addEventListener("state", (e) => {
      const state = JSON.parse(e.data);
      const el = document.getElementById("run-state");
      el.textContent = state.state;
      el.className = `state ${state.state}`;
      document.getElementById("run-message").textContent = state.message;
    });
    events.addEventListener("end", () => events.close());
  }

  // Several runs: per metric, their curves overlaid.
  function comparePage(compare) {
    const container = document.getElementById("charts");
    const metrics = new Set();
    const xs = new Set();
    const byRun = compare.runs.map((run) => {
      const values = {};
      run.epochs.forEach((epoch, i) => {
        const x = epochNumber(epoch.epoch, i);
        xs.add(x);
        for (const [metric, value] of Object.entries(epoch.metrics)) {
          metrics.add(metric);
          (values[metric] || (values[metric] = new Map())).set(x, value);
        }
      });
      return values;
    });
    const x = Array.from(xs).sort((a, b) => a - b);
    for (const metric of Array.from(metrics).sort()) {
      const data = [x].concat(byRun.map((values) => x.map((at) => (values[metric] && values[metric].has(at) ? values[metric].get(at) : null))));
      makeChart(container, metric, compare.runs.map((r) => `run ${r.run_id}`), data, false);
    }
  }

  // An experiment: the objective of each trial.
  function experimentPage(experiment) {
    const trials = experiment.trials.filter((t) => t.objective !== null && t.objective !== undefined);
    if (!trials.length) return;
    const data = [trials.map((t) => t.trial), trials.map((t) => t.objective)];
    makeChart(document.getElementById("charts"), experiment.metric || "objective", [experiment.metric || "objective"], data, true);
  }

  // A job: status and the trainer's log tail, live.
  function jobPage(log) {
    const MAX_LINES = 1000;
    const events = new EventSource(`/jobs/${encodeURIComponent(log.dataset.job)}/events`);
    events.addEventListener("status", (e) => {
      const job = JSON.parse(e.data);
      const status = document.getElementById("job-status");
      status.textContent = job.status;
      status.className = `state ${job.status}`;
      document.getElementById("job-message").textContent = job.message;
      document.getElementById("job-position").textContent = job.position > 0 ? `position ${job.position} in the queue` : "";
      if (["succeeded", "failed", "canceled"].includes(job.status)) {
        const cancel = document.getElementById("cancel-form");
        if (cancel) cancel.remove();
      }
    });
    events.addEventListener("log", (e) => {
      const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      const line = document.createElement("span");
      line.className = "line";
      line.textContent = e.data + "\n";
      log.appendChild(line);
      while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
      if (follow) log.scrollTop = log.scrollHeight;
    });
    events.addEventListener("failure", (e) => {
      const line = document.createElement("span");
      line.className = "line error";
      line.textContent = `(${e.data})\n`;
      log.appendChild(line);
    });
    events.addEventListener("end", () => {
      events.close();
      log.dataset.live = "false";
    });
  }

  // The predict box.
  function predictForm(form) {
    const result = document.getElementById("predict-result");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      result.textContent = "…";
      const body = {
        run_id: document.getElementById("predict-run").value,
        document: document.getElementById("predict-document").value,
      };
      try {
        const response = await fetch("/predict", {
          method: "POST",
          headers: { "content-type": "application/json", "x-csrf-token": csrf() },
          body: JSON.stringify(body),
          credentials: "same-origin",
        });
        if (!response.ok) {
          const page = new DOMParser().parseFromString(await response.text(), "text/html");
          const message = page.querySelector(".error");
          result.innerHTML = "";
          const p = document.createElement("p");
          p.className = "error";
          p.textContent = message ? message.textContent : `error ${response.status}`;
          result.appendChild(p);
          return;
        }
        const answer = await response.json();
        result.innerHTML = "";
        const head = document.createElement("p");
        head.innerHTML = '<span class="predict-label"></span> <span class="predict-score"></span>';
        head.querySelector(".predict-label").textContent = answer.label;
        head.querySelector(".predict-score").textContent = answer.score.toFixed(4);
        result.appendChild(head);
        const list = document.createElement("ol");
        list.className = "predict-top";
        for (const t of answer.top) {
          const li = document.createElement("li");
          li.textContent = `${t.label} ${t.score.toFixed(4)}`;
          list.appendChild(li);
        }
        result.appendChild(list);
      } catch (err) {
        result.textContent = String(err);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const run = readJson("run-data");
    if (run) runPage(run);
    const compare = readJson("compare-data");
    if (compare) comparePage(compare);
    const experiment = readJson("experiment-data");
    if (experiment) experimentPage(experiment);
    const log = document.getElementById("job-log");
    if (log) jobPage(log);
    const predict = document.getElementById("predict-form");
    if (predict) predictForm(predict);
  });
})();
