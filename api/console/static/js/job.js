// One job: its state from GET /v1/jobs/{id}, its events live from the event stream (the
// loss curve, the log, checkpoints), its artifacts, and the actions the API offers on it.

import { api, download, offered, serverEvents } from "./api.js";
import { lossChart } from "./charts.js";
import { renderTree } from "./tree.js";
import {
  $,
  bytes,
  duration,
  frame,
  gib,
  h,
  pageData,
  pageError,
  showError,
  statusBadge,
  variantLabel,
  when,
} from "./ui.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// The log keeps the latest events; the loss curve keeps every point.
const LOG_LIMIT = 2000;
const id = pageData.job_id;
const base = `/v1/jobs/${encodeURIComponent(id)}`;
let job = null;
let loss = null;
let lastEventId = null;
let actions = { pause: null, resume: null };
const checkpoints = new Map();

async function start() {
  loss = lossChart($("#loss-chart"), caption);
  $("#cancel").addEventListener("click", () => act("cancel", `${base}/cancel`));
  $("#pause").addEventListener("click", () => act("pause", actions.pause));
  $("#resume").addEventListener("click", () => act("resume", actions.resume));
  try {
    // Pause and resume show only once the server has them (its OpenAPI document says so).
    const [pause, resume] = await Promise.all([
      offered("post", /^\/v1\/(fine_tuning\/)?jobs\/\{[^}]+\}\/pause$/),
      offered("post", /^\/v1\/(fine_tuning\/)?jobs\/\{[^}]+\}\/resume$/),
    ]);
    const at = (template) => template && template.replace(/\{[^}]+\}/, encodeURIComponent(id));
    actions = { pause: at(pause), resume: at(resume) };
    await refresh();
    await refreshArtifacts();
  } catch (error) {
    pageError(error);
    return;
  }
  follow();
}

async function refresh() {
  job = await api(base);
  renderJob();
}

function fact(term, ...value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, ...value));
}

function renderJob() {
  const chosen = variantLabel(job.variant, job.combine_with);
  const facts = [
    fact("Status", statusBadge(job.status), job.cancel_requested && !TERMINAL.has(job.status) ? " (cancel requested)" : ""),
    fact("Model", h("code", {}, job.model)),
    fact("Variant", job.requested_variant === "auto" ? `${chosen} (chosen by the advisor)` : chosen),
    fact("Training file", h("code", {}, job.training_file)),
    job.validation_file ? fact("Validation file", h("code", {}, job.validation_file)) : null,
    fact("Created", when(job.created_at)),
    fact("Started", when(job.started_at)),
    fact("Finished", when(job.finished_at)),
    fact("Loss", job.loss == null ? "–" : job.loss.toFixed(4)),
    fact("Tokens / s", job.tokens_per_second == null ? "–" : Math.round(job.tokens_per_second)),
    fact("Worker", job.worker || "–"),
    fact("Attempts", job.attempts),
  ];
  $("#job-facts").replaceChildren(...facts.filter(Boolean));
  showProgress(job.step, job.total_steps, job.eta_seconds, job.progress);
  const errorBox = $("#job-error");
  if (job.error) {
    showError(errorBox, new Error(`${job.error.type}: ${job.error.message}`));
  } else if (job.cancel_outcome) {
    showError(errorBox, new Error(job.cancel_outcome));
  } else {
    errorBox.hidden = true;
  }
  const live = !TERMINAL.has(job.status);
  $("#cancel").hidden = !live || job.cancel_requested;
  $("#pause").hidden = !actions.pause || !["queued", "running"].includes(job.status);
  $("#resume").hidden = !actions.resume || job.status !== "paused";
  renderMemory();
  renderDecision();
  renderEvaluation();
}

/** The worker's comparison at the end of a run with a validation file (GET job's evaluation). */
function renderEvaluation() {
  const ev = job.evaluation;
  const panel = $("#evaluation-panel");
  panel.hidden = !ev;
  if (!ev) return;
  const table = $("#evaluation");
  const note = $("#evaluation-note");
  if (!ev.base || !ev.adapter) {
    table.replaceChildren();
    table.closest(".table-wrap").hidden = true;
    note.textContent = ev.error
      ? `The comparison failed (${ev.error}); the adapter was trained and saved all the same.`
      : `The comparison was skipped: ${ev.skipped || "no reason given"}.`;
    return;
  }
  table.closest(".table-wrap").hidden = false;
  const fixed = (digits) => (v) => (v == null ? "–" : Number(v).toFixed(digits));
  const signed = (digits) => (v) => (v == null ? "–" : `${v > 0 ? "+" : ""}${Number(v).toFixed(digits)}`);
  const match = (m) => (m && m.rows ? `${m.matched} / ${m.rows} (${Math.round(100 * m.rate)}%)` : "–");
  const rows = [
    ["Validation loss", ev.base.loss, ev.adapter.loss, ev.delta.loss, fixed(4), signed(4)],
    ["Perplexity", ev.base.perplexity, ev.adapter.perplexity, ev.delta.perplexity, fixed(2), signed(2)],
  ];
  if (ev.base.exact_match) {
    rows.push([
      "Exact match (greedy)",
      ev.base.exact_match,
      ev.adapter.exact_match,
      ev.delta.exact_match,
      match,
      (v) => (v == null ? "–" : `${v > 0 ? "+" : ""}${Math.round(100 * v)} pts`),
    ]);
  }
  table.replaceChildren(
    h("caption", { class: "visually-hidden" }, "The base model and the adapter on the validation file"),
    h(
      "thead",
      {},
      h("tr", {}, ["", "Base model", "Adapter", "Change"].map((c, i) => h(i ? "th" : "td", i ? { scope: "col" } : {}, c))),
    ),
    h(
      "tbody",
      {},
      rows.map(([name, b, a, d, show, change]) =>
        h("tr", {}, h("th", { scope: "row" }, name), h("td", { class: "num" }, show(b)), h("td", { class: "num" }, show(a)), h("td", { class: "num" }, change(d))),
      ),
    ),
  );
  const skipped = ev.adapter.exact_match && ev.adapter.exact_match.skipped;
  note.textContent =
    `${ev.validation_rows} validation rows, ${ev.tokens} trained tokens; loss per trained token, the base with the adapter disabled.` +
    (ev.base.exact_match
      ? ` Exact match: greedy completions of the first ${ev.max_match_rows} prompt/completion rows (at most ${ev.max_new_tokens} new tokens) equal to the reference${skipped ? `; ${skipped} rows did not fit and were left out` : ""}.`
      : "");
}

function showProgress(step, total, eta, progress) {
  const value = progress ?? (total ? step / total : 0);
  const bar = $("#job-progress");
  bar.value = Math.min(Math.max(value, 0), 1);
  const parts = [`${Math.round(bar.value * 100)}%`];
  if (total) parts.push(`step ${step} of ${total}`);
  if (job && !TERMINAL.has(job.status) && eta != null) parts.push(`about ${duration(eta)} left`);
  $("#job-progress-label").textContent = parts.join(" · ");
}

function renderMemory() {
  const est = job.estimate;
  const memory = job.memory || {};
  const measured = memory.measured || {};
  const onCpu = measured.device === "cpu";
  const main = [
    ["Estimated peak allocated (advisor, CUDA card)", memory.estimated_peak_allocated_gib, "--series-1"],
    onCpu
      ? ["Measured process memory growth (CPU run)", measured.rss_growth_gib, "--series-2"]
      : ["Measured peak allocated", measured.peak_allocated_gib, "--series-2"],
    ["Estimated total the card needs", memory.estimated_total_gib, "--series-4"],
  ];
  if (!onCpu) main.push(["Measured peak reserved", measured.peak_reserved_gib, "--series-3"]);
  const most = Math.max(...main.map(([, v]) => v || 0)) || 1;
  // Bars to the same scale: the estimate and the measurement side by side.
  const bar = (value, color) =>
    value == null ? "" : h("span", { class: "bar", dataset: { width: String(Math.round((100 * value) / most)), color } });
  const rows = main.map(([k, v, color]) =>
    h("tr", {}, h("th", { scope: "row" }, k), h("td", { class: "num" }, gib(v, 2)), h("td", { class: "bar-cell" }, bar(v, color))),
  );
  if (measured.device_name) {
    rows.push(h("tr", { class: "detail" }, h("th", { scope: "row" }, "ran on"), h("td", {}, `${measured.device} · ${measured.device_name} · ${job.precision || "?"}`), h("td")));
  }
  if (est && est.breakdown) {
    for (const [part, value] of Object.entries(est.breakdown)) {
      rows.push(h("tr", { class: "detail" }, h("th", { scope: "row" }, `estimated ${part}`), h("td", { class: "num" }, gib(value, 2)), h("td")));
    }
  }
  $("#memory").replaceChildren(h("tbody", {}, rows));
  // Sizes set through the CSSOM: the page's policy allows no inline style attributes.
  for (const el of document.querySelectorAll("#memory .bar")) {
    el.style.width = `${el.dataset.width}%`;
    el.style.background = `var(${el.dataset.color})`;
  }
  $("#memory-note").textContent =
    measured.measures == null ? "The measured peaks are recorded when the run ends." : memory.note || "";
}

function renderDecision() {
  const box = $("#decision");
  if (!job.decision) {
    box.replaceChildren(
      h("p", { class: "muted" }, `The request named the variant (${job.requested_variant}); the advisor was not asked. Submit with variant 'auto' to keep its decision with the job.`),
    );
    return;
  }
  const d = job.decision;
  const tree = h("div");
  renderTree(tree, pageData, d);
  box.replaceChildren(
    h(
      "p",
      { class: "lead" },
      `${d.label}: ${gib(d.estimate.total_gib)} on ${d.hardware.name || "a"} ${d.hardware.memory_gib} GiB card`,
      d.fits ? `, ${gib(d.headroom_gib)} to spare.` : ".",
    ),
    tree,
  );
}

function caption(train, validation) {
  const figure = $("#loss-figure");
  figure.dataset.trainPoints = String(train.length);
  figure.dataset.validationPoints = String(validation.length);
  const lastTrain = train[train.length - 1];
  const lastValidation = validation[validation.length - 1];
  $("#loss-caption").textContent = lastTrain
    ? `${train.length} training points; loss ${lastTrain.y.toFixed(4)} at step ${lastTrain.x}` +
      (lastValidation ? `; validation loss ${lastValidation.y.toFixed(4)} at step ${lastValidation.x}` : "")
    : "No loss logged yet.";
}

/** An event without a message, as its plain values (paths cut to their last parts). */
function summary(data) {
  return Object.entries(data || {})
    .filter(([, v]) => v != null && typeof v !== "object")
    .map(([k, v]) => `${k}=${typeof v === "string" && v.includes("/") ? v.split("/").slice(-2).join("/") : v}`)
    .join(" ");
}

function logEvent(event) {
  const list = $("#events");
  const box = $("#events-box");
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
  list.append(
    h(
      "li",
      { class: event.level === "info" ? null : event.level },
      h("span", { class: "t" }, new Date(event.created_at * 1000).toLocaleTimeString()),
      h("span", { class: "type" }, `[${event.type}] `),
      event.message || summary(event.data),
    ),
  );
  while (list.childElementCount > LOG_LIMIT) list.firstElementChild.remove();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function renderCheckpoints() {
  const list = $("#checkpoints");
  if (!checkpoints.size) {
    list.replaceChildren(h("li", { class: "muted" }, "None yet: a job saves them every checkpoint_steps steps, when set."));
    return;
  }
  list.replaceChildren(
    ...[...checkpoints.values()].map((c) =>
      h("li", {}, h("strong", {}, `step ${c.step}`), h("code", {}, String(c.path || "").split("/").slice(-2).join("/")), c.note ? h("span", { class: "muted" }, c.note) : null),
    ),
  );
}

function handle(event) {
  logEvent(event);
  const data = event.data || {};
  if (event.type === "metrics") {
    if (data.loss != null) loss.add("train", data.step, data.loss);
    if (data.eval_loss != null) loss.add("validation", data.step, data.eval_loss);
    showProgress(data.step, data.total_steps, data.eta_seconds, null);
  } else if (event.type === "finished") {
    if (data.eval_loss != null) loss.add("validation", data.step, data.eval_loss);
  } else if (event.type === "checkpoint") {
    checkpoints.set(data.step, { step: data.step, path: data.path });
    renderCheckpoints();
  } else if (event.type === "resumed") {
    checkpoints.set(data.step, { step: data.step, path: data.checkpoint, note: "resumed from here" });
    renderCheckpoints();
  }
}

async function follow() {
  const status = $("#stream-status");
  let wait = 1000;
  for (;;) {
    try {
      status.textContent = "Following the job's events live.";
      const url = lastEventId == null ? `${base}/events/stream` : `${base}/events/stream?after=${lastEventId}`;
      for await (const message of serverEvents(url)) {
        wait = 1000;
        if (message.event === "end") {
          await Promise.all([refresh(), refreshArtifacts()]);
          status.textContent = `The job ended (${message.data.status}); the stream is closed.`;
          return;
        }
        lastEventId = message.id;
        const before = job && job.status;
        handle(message.data);
        if (message.data.type === "status" && message.data.data.status !== before) await refresh();
      }
    } catch (error) {
      if (error.name === "AbortError") return;
      if (error.status && error.status < 500) {
        pageError(error);
        return;
      }
    }
    // The connection dropped (a restart, a network blip): pick up after the last event seen.
    status.textContent = "The connection dropped; reconnecting…";
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, 15000);
  }
}

async function refreshArtifacts() {
  const { data } = await api(`${base}/artifacts`);
  const list = $("#artifacts");
  if (!data.length) {
    list.replaceChildren(h("li", { class: "muted" }, "None yet: the adapter and its record are written when the run succeeds."));
    return;
  }
  list.replaceChildren(
    ...data.map((a) =>
      h(
        "li",
        {},
        h("code", {}, a.name),
        h("span", { class: "muted" }, bytes(a.bytes)),
        h(
          "button",
          {
            type: "button",
            "aria-label": `Download ${a.name}`,
            onclick: () =>
              download(`${base}/artifacts/${a.name.split("/").map(encodeURIComponent).join("/")}`, a.name.split("/").pop()).catch(pageError),
          },
          "Download",
        ),
      ),
    ),
  );
}

async function act(name, path) {
  if (!path) return;
  if (name === "cancel" && !confirm("Cancel this job? A running job stops within one optimizer step.")) return;
  const note = $("#action-status");
  note.textContent = `${name}…`;
  try {
    job = await api(path, { method: "POST" });
    renderJob();
    note.textContent = name === "cancel" ? "Cancel requested." : `${name} requested.`;
  } catch (error) {
    note.textContent = "";
    showError($("#job-error"), error);
  }
}

renderCheckpoints();
if (frame()) start();
