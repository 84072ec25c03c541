// The advisor: a profile in, POST /v1/recommendations (and POST /v1/estimates for each
// combination) out, drawn as the decision tree and memory bars against the card.

import { api } from "./api.js";
import { MEMORY_PARTS, memoryChart } from "./charts.js";
import { fillFields, readFields } from "./forms.js";
import { renderTree } from "./tree.js";
import {
  $,
  $$,
  clearError,
  frame,
  gib,
  h,
  markProblems,
  pageData,
  pageError,
  showError,
  variantLabel,
} from "./ui.js";

const DRAFT = "loracle.draft";
const LAST = "loracle.advice.profile";

const form = $("#advice-form");
const errorBox = $("#advice-error");
const status = $("#advice-status");
let directoryConfig = null;
let directoryName = "";
let memory = null;
let last = null; // {profile, answer, source}

function source() {
  return form.querySelector("input[name=source]:checked").value;
}

function showSource() {
  for (const panel of $$("[data-source]", form)) panel.hidden = panel.dataset.source !== source();
}

async function start() {
  for (const radio of $$("input[name=source]", form)) radio.addEventListener("change", showSource);
  $("#model-dir").addEventListener("change", readDirectory);
  form.addEventListener("submit", ask);
  $("#train-this").addEventListener("click", trainThis);
  try {
    const [models, gpus] = await Promise.all([
      api("/v1/catalog/models"),
      api("/v1/catalog/gpus"),
    ]);
    fillModels(models.data);
    fillGpus(gpus.data);
    restore();
  } catch (error) {
    pageError(error);
  }
}

function fillModels(models) {
  const select = $("#model-name");
  select.replaceChildren(
    ...models.map((m) =>
      h("option", { value: m.id }, `${m.id} (${(m.total_params / 1e9).toFixed(1)} B parameters)`),
    ),
  );
}

function fillGpus(gpus) {
  const byVendor = new Map();
  for (const g of gpus) {
    if (!byVendor.has(g.vendor)) byVendor.set(g.vendor, []);
    byVendor.get(g.vendor).push(g);
  }
  const select = $("#gpu");
  select.replaceChildren(
    ...[...byVendor].map(([vendor, cards]) =>
      h(
        "optgroup",
        { label: vendor.toUpperCase() },
        cards.map((g) => h("option", { value: g.id }, `${g.name} (${g.memory_gib} GiB)`)),
      ),
    ),
  );
  // A common single card to start from; any other is one choice away.
  if (gpus.some((g) => g.id === "rtx-4090")) select.value = "rtx-4090";
}

/** The last profile asked in this tab, so coming back to the page keeps the form. */
function restore() {
  const saved = sessionStorage.getItem(LAST);
  if (!saved) return;
  const { profile, source: kind } = JSON.parse(saved);
  if (kind === "catalog" && profile.model.name) $("#model-name").value = profile.model.name;
  if (kind === "config") {
    form.querySelector("input[value=config]").checked = true;
    $("#model-config").value = JSON.stringify(profile.model.config, null, 2);
    showSource();
  }
  if (profile.hardware.gpu) $("#gpu").value = profile.hardware.gpu;
  $("#gpu-count").value = profile.hardware.gpu_count;
  fillFields("goal", pageData.goal, profile.goal);
  fillFields("training", pageData.training, profile.training);
}

async function readDirectory(event) {
  const files = [...event.target.files];
  const note = $("#model-dir-problem");
  directoryConfig = null;
  note.hidden = true;
  // Directly inside the chosen folder: a config.json deeper down belongs to something else.
  const config = files.find((f) => f.webkitRelativePath.split("/").length === 2 && f.name === "config.json");
  directoryName = files.length ? files[0].webkitRelativePath.split("/")[0] : "";
  if (!config) {
    note.textContent = `${directoryName || "This folder"} has no config.json at its top; choose the model's own folder (the one holding config.json and the weights).`;
    note.hidden = false;
    return;
  }
  try {
    directoryConfig = JSON.parse(await config.text());
    $("#model-dir-help").textContent = `Read ${directoryName}/config.json (${directoryConfig.model_type || "unknown type"}); no weights are uploaded.`;
  } catch (error) {
    note.textContent = `${directoryName}/config.json is not valid JSON (${error.message}).`;
    note.hidden = false;
  }
}

function modelRef() {
  const kind = source();
  if (kind === "catalog") return { name: $("#model-name").value };
  if (kind === "config") {
    const text = $("#model-config").value.trim();
    try {
      return { config: JSON.parse(text) };
    } catch (error) {
      throw Object.assign(new Error("config.json is not valid JSON"), {
        problems: [
          {
            field: "model.config",
            message: `is not valid JSON (${error.message}); paste the whole content of the model's config.json`,
          },
        ],
      });
    }
  }
  if (!directoryConfig) {
    throw Object.assign(new Error("Choose a model directory that holds a config.json."), {
      problems: [{ field: "model.dir", message: "choose the model's folder first" }],
    });
  }
  return { config: directoryConfig };
}

function profileFromForm() {
  return {
    hardware: { gpu: $("#gpu").value, gpu_count: Number($("#gpu-count").value) },
    model: modelRef(),
    training: readFields("training", pageData.training),
    goal: readFields("goal", pageData.goal),
  };
}

async function ask(event) {
  event.preventDefault();
  clearError(errorBox);
  markProblems(form, []);
  let profile;
  try {
    profile = profileFromForm();
  } catch (error) {
    markProblems(form, error.problems);
    showError(errorBox, error);
    return;
  }
  const button = $("#ask");
  button.disabled = true;
  status.textContent = "Asking…";
  try {
    const answer = await api("/v1/recommendations", { method: "POST", json: profile });
    const combos = await Promise.all(
      pageData.variants.combinations.map(([variant, combineWith]) =>
        api("/v1/estimates", {
          method: "POST",
          json: {
            model: profile.model,
            training: profile.training,
            hardware: profile.hardware,
            variant,
            combine_with: combineWith,
          },
        }),
      ),
    );
    last = { profile, answer, source: source() };
    sessionStorage.setItem(LAST, JSON.stringify({ profile, source: source() }));
    render(answer, combos);
    status.textContent = "";
  } catch (error) {
    status.textContent = "";
    markProblems(form, error.problems);
    showError(errorBox, error);
  } finally {
    button.disabled = false;
  }
}

function render(answer, combos) {
  const section = $("#answer");
  section.hidden = false;
  const card = answer.hardware;
  const cardName = `${card.count > 1 ? `${card.count} × ` : ""}${card.name || "the card"}`;
  $("#answer-title").textContent = `${answer.label} for ${answer.model.name}`;
  $("#answer-summary").replaceChildren(
    answer.fits
      ? h("span", { class: "badge fits" }, "fits")
      : h("span", { class: "badge over" }, "does not fit"),
    " ",
    answer.fits
      ? `${gib(answer.estimate.total_gib)} on ${cardName} (${card.memory_gib} GiB${card.count > 1 ? " each" : ""}), ${gib(answer.headroom_gib)} to spare.`
      : `${gib(answer.estimate.total_gib)} needed, ${cardName} has ${card.memory_gib} GiB.`,
  );

  renderTree($("#tree"), pageData, answer);

  const chosen = variantLabel(answer.variant, answer.combine_with);
  const rows = [
    ...pageData.variants.names.map((v) => ({ label: variantLabel(v), estimate: answer.estimates[v] })),
    ...combos.map((e) => ({ label: variantLabel(e.variant, e.combine_with), estimate: e })),
  ].map((r) => ({ ...r, label: r.label === chosen ? `${r.label} (recommended)` : r.label }));
  const cardLabel = `${card.name || "card"}: ${card.memory_gib} GiB`;
  if (memory) memory.destroy();
  const canvas = $("#memory-chart");
  canvas.setAttribute(
    "aria-label",
    `Memory of ${rows.length} variants against ${cardLabel}: ` +
      rows.map((r) => `${r.label} ${gib(r.estimate.total_gib)}`).join(", "),
  );
  memory = memoryChart(canvas, rows, { memory_gib: card.memory_gib, label: cardLabel });
  const figure = $("#memory-figure");
  figure.dataset.bars = String(rows.length);
  figure.dataset.cardGib = String(card.memory_gib);
  $("#memory-caption").textContent =
    `Each bar is what the card must have free (weights, adapter, gradients, optimizer state, activations and overhead); the dashed line is ${cardLabel}.`;
  renderMemoryTable(rows, card);

  const remedies = $("#remedies-panel");
  remedies.hidden = answer.fits;
  $("#remedies").replaceChildren(
    ...answer.remedies.map((r) =>
      h(
        "li",
        {},
        r.change,
        ": ",
        gib(r.estimate.total_gib),
        " ",
        r.estimate.fits ? h("span", { class: "badge fits" }, "fits") : h("span", { class: "badge over" }, "still over"),
      ),
    ),
  );
  const verdict = $("#verdict");
  verdict.hidden = !answer.verdict;
  verdict.textContent = answer.verdict || "";

  renderHyperparameters(answer.hyperparameters);
  $("#notes").replaceChildren(
    ...answer.notes.map((n) => h("li", {}, `${n.text} (${n.source})`)),
  );
  $("#answer-title").scrollIntoView({ block: "start" });
}

function renderMemoryTable(rows, card) {
  const table = $("#memory-table");
  table.replaceChildren(
    h("caption", { class: "visually-hidden" }, "Memory per variant, GiB"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Variant"),
        MEMORY_PARTS.map(([, label]) => h("th", { scope: "col", class: "num" }, label)),
        h("th", { scope: "col", class: "num" }, "Total"),
        h("th", { scope: "col" }, `On ${card.memory_gib} GiB`),
      ),
    ),
    h(
      "tbody",
      {},
      rows.map((r) =>
        h(
          "tr",
          { class: r.estimate.fits ? "" : "over" },
          h("th", { scope: "row" }, r.label),
          MEMORY_PARTS.map(([part]) => h("td", { class: "num" }, r.estimate.breakdown[part].toFixed(2))),
          h("td", { class: "num" }, r.estimate.total_gib.toFixed(2)),
          h("td", {}, r.estimate.fits ? "fits" : "over"),
        ),
      ),
    ),
  );
}

function renderHyperparameters(hp) {
  const rows = [];
  for (const [name, value] of Object.entries(hp)) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [inner, v] of Object.entries(value)) rows.push([`${name}.${inner}`, v]);
    } else {
      rows.push([name, value]);
    }
  }
  $("#hyperparameters").replaceChildren(
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Setting"), h("th", { scope: "col" }, "Value"))),
    h(
      "tbody",
      {},
      rows.map(([k, v]) =>
        h("tr", {}, h("th", { scope: "row" }, h("code", {}, k)), h("td", {}, v == null ? "–" : Array.isArray(v) ? v.join(", ") : String(v))),
      ),
    ),
  );
}

/** Carry the answer to the job form: the model, the variant and every suggested setting. */
function trainThis() {
  if (!last) return;
  const { profile, answer, source: kind } = last;
  const hp = answer.hyperparameters;
  const lora = hp.lora_config;
  const hyperparameters = {
    learning_rate: hp.learning_rate,
    lora_rank: lora.r,
    lora_alpha: lora.lora_alpha,
    lora_dropout: lora.lora_dropout,
    target_modules: lora.target_modules,
    lr_scheduler: hp.lr_scheduler,
    warmup_ratio: hp.warmup_ratio,
    optimizer: hp.optimizer,
    precision: hp.precision,
    gradient_checkpointing: hp.gradient_checkpointing,
    micro_batch_size: hp.micro_batch_size,
    gradient_accumulation_steps: hp.gradient_accumulation_steps,
    seq_len: hp.seq_len,
  };
  if (hp.loraplus_lr_ratio != null) hyperparameters.loraplus_lr_ratio = hp.loraplus_lr_ratio;
  // A catalog model is known to the server, so 'auto' decides again from the same profile
  // (the same answer) and keeps the decision with the job. A pasted config or a local
  // folder is not known by name there: the advisor's pick is named instead.
  const auto = kind === "catalog";
  const draft = {
    from: `${answer.label} for ${answer.model.name} on ${answer.hardware.name || "the card"}`,
    model: kind === "catalog" ? profile.model.name : kind === "directory" ? directoryName : "",
    variant: auto ? "auto" : answer.variant,
    combine_with: auto ? [] : answer.combine_with,
    profile: { hardware: profile.hardware, goal: profile.goal },
    hyperparameters,
  };
  sessionStorage.setItem(DRAFT, JSON.stringify(draft));
  location.assign("/jobs/new");
}

if (frame()) start();
