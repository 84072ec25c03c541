// Charts, drawn with Chart.js (vendored: /console/static/vendor/chart.js, loaded before the
// page's module). Each chart also says what it shows in text (a caption or a table), since
// a canvas alone tells a screen reader nothing.

import { cssVar } from "./ui.js";

const Chart = window.Chart;

export const MEMORY_PARTS = [
  ["weights", "Weights"],
  ["adapter", "Adapter"],
  ["gradients", "Gradients"],
  ["optimizer", "Optimizer state"],
  ["activations", "Activations"],
  ["overhead", "Overhead"],
];

// A vertical line at the card's memory across the whole plot, with its name: the bar of
// every variant that crosses it does not fit.
const cardLine = {
  id: "cardLine",
  afterDatasetsDraw(chart, _args, options) {
    if (options.value == null) return;
    const x = chart.scales.x.getPixelForValue(options.value);
    const { top, bottom, left, right } = chart.chartArea;
    if (x < left || x > right) return;
    const ctx = chart.ctx;
    ctx.save();
    ctx.strokeStyle = options.color;
    ctx.fillStyle = options.color;
    ctx.lineWidth = 2;
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    ctx.moveTo(x, top);
    ctx.lineTo(x, bottom);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.font = `600 12px ${getComputedStyle(document.body).fontFamily}`;
    const toLeft = x > left + (right - left) * 0.6;
    ctx.textAlign = toLeft ? "right" : "left";
    // Above the plot (the chart keeps room there), where no bar can hide it.
    ctx.fillText(options.label, x + (toLeft ? -6 : 6), top - 6);
    ctx.restore();
  },
};

function axisColors() {
  return { text: cssVar("--fg"), muted: cssVar("--muted"), grid: cssVar("--grid") };
}

function themed(chart, restyle) {
  const apply = () => {
    restyle(chart, axisColors());
    chart.update("none");
  };
  document.addEventListener("themechange", apply);
  return apply;
}

/**
 * Stacked horizontal bars, one per variant or combination, split into the memory terms,
 * against a line at the card's memory. rows: [{label, estimate}] (estimate as the API
 * answers it: breakdown and total_gib, GiB); card: {memory_gib, label}.
 */
export function memoryChart(canvas, rows, card) {
  const totals = rows.map((r) => r.estimate.total_gib);
  const most = Math.max(card.memory_gib, ...totals);
  const colors = axisColors();
  const chart = new Chart(canvas, {
    type: "bar",
    data: {
      labels: rows.map((r) => r.label),
      datasets: MEMORY_PARTS.map(([part, label], i) => ({
        label,
        data: rows.map((r) => r.estimate.breakdown[part]),
        backgroundColor: cssVar(`--series-${i + 1}`),
        borderWidth: 0,
      })),
    },
    options: {
      indexAxis: "y",
      layout: { padding: { top: 22 } },
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      scales: {
        x: {
          stacked: true,
          min: 0,
          suggestedMax: most * 1.08,
          title: { display: true, text: "GiB", color: colors.text },
          ticks: { color: colors.text },
          grid: { color: colors.grid },
        },
        y: { stacked: true, ticks: { color: colors.text }, grid: { display: false } },
      },
      plugins: {
        legend: { position: "bottom", labels: { color: colors.text, boxWidth: 14 } },
        tooltip: {
          callbacks: {
            label: (item) => `${item.dataset.label}: ${item.parsed.x.toFixed(2)} GiB`,
            footer: (items) => `total ${totals[items[0].dataIndex].toFixed(2)} GiB`,
          },
        },
        cardLine: { value: card.memory_gib, label: card.label, color: colors.text },
      },
    },
    plugins: [cardLine],
  });
  themed(chart, (c, col) => {
    c.data.datasets.forEach((d, i) => (d.backgroundColor = cssVar(`--series-${i + 1}`)));
    c.options.scales.x.ticks.color = col.text;
    c.options.scales.x.title.color = col.text;
    c.options.scales.x.grid.color = col.grid;
    c.options.scales.y.ticks.color = col.text;
    c.options.plugins.legend.labels.color = col.text;
    c.options.plugins.cardLine.color = col.text;
  });
  return chart;
}

/**
 * A loss curve that grows as points arrive: train loss per logged step, and validation
 * loss where the run measured it. add("train" | "validation", step, loss).
 */
export function lossChart(canvas, onChange) {
  const colors = axisColors();
  const series = (label, color, points) => ({
    label,
    data: [],
    borderColor: color,
    backgroundColor: color,
    borderWidth: 2,
    pointRadius: points ? 5 : 0,
    pointHoverRadius: 5,
    showLine: !points,
    tension: 0,
  });
  const chart = new Chart(canvas, {
    type: "line",
    data: {
      datasets: [
        series("Train", cssVar("--train"), false),
        series("Validation", cssVar("--validation"), true),
      ],
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      parsing: false,
      normalized: true,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: {
          type: "linear",
          title: { display: true, text: "step", color: colors.text },
          ticks: { color: colors.text, precision: 0 },
          grid: { color: colors.grid },
        },
        y: {
          title: { display: true, text: "loss", color: colors.text },
          ticks: { color: colors.text },
          grid: { color: colors.grid },
        },
      },
      plugins: {
        // A series shows in the legend once it has a point: most runs measure no validation.
        legend: { labels: { color: colors.text, filter: (item, data) => data.datasets[item.datasetIndex].data.length > 0 } },
      },
    },
  });
  themed(chart, (c, col) => {
    c.data.datasets[0].borderColor = c.data.datasets[0].backgroundColor = cssVar("--train");
    c.data.datasets[1].borderColor = c.data.datasets[1].backgroundColor = cssVar("--validation");
    for (const axis of ["x", "y"]) {
      c.options.scales[axis].ticks.color = col.text;
      c.options.scales[axis].title.color = col.text;
      c.options.scales[axis].grid.color = col.grid;
    }
    c.options.plugins.legend.labels.color = col.text;
  });
  let pending = false;
  const seen = { train: new Set(), validation: new Set() };
  return {
    chart,
    add(kind, step, loss) {
      if (loss == null || !isFinite(loss) || seen[kind].has(step)) return;
      seen[kind].add(step);
      const data = chart.data.datasets[kind === "train" ? 0 : 1].data;
      data.push({ x: step, y: loss });
      // A resumed run repeats no step but may arrive out of order: keep the line drawn by step.
      if (data.length > 1 && data[data.length - 2].x > step) data.sort((a, b) => a.x - b.x);
      if (!pending) {
        // Many points in one burst (a page opened on a long job): draw once per frame.
        pending = true;
        requestAnimationFrame(() => {
          pending = false;
          chart.update("none");
          if (onChange) onChange(chart.data.datasets[0].data, chart.data.datasets[1].data);
        });
      }
    },
  };
}
