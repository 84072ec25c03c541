// The job form: POST /v1/jobs. Filled from the advisor's "Train this", or from a file's
// "Train on this file"; every field the API does not require may stay empty.

import { api } from "./api.js";
import { fillFields, readFields } from "./forms.js";
import { $, $$, clearError, frame, h, markProblems, pageData, pageError, showError } from "./ui.js";

const DRAFT = "loracle.draft";
const form = $("#job-form");
const errorBox = $("#job-error");
const params = new URLSearchParams(location.search);
// One key per filled-in form: a double submit, or a retry after a lost answer, gives the
// job already created instead of a second one.
// (getRandomValues, not randomUUID: the latter exists only on https or localhost.)
const newKey = () => [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
let idempotencyKey = newKey();

async function start() {
  $("#job-variant").addEventListener("change", showVariant);
  form.addEventListener("submit", submit);
  form.addEventListener("input", () => (idempotencyKey = newKey()));
  try {
    const [files, gpus] = await Promise.all([api("/v1/files?limit=1000"), api("/v1/catalog/gpus")]);
    fillFiles(files.data);
    fillGpus(gpus.data);
    applyDraft();
  } catch (error) {
    pageError(error);
  }
  showVariant();
}

function fillFiles(files) {
  const option = (f) => h("option", { value: f.id }, `${f.filename} · ${f.rows} rows · ${f.id}`);
  const training = $("#job-training-file");
  training.replaceChildren(
    h("option", { value: "" }, files.length ? "choose a file" : "no files yet: upload one on the Data page"),
    ...files.map(option),
  );
  $("#job-validation-file").replaceChildren(h("option", { value: "" }, "none"), ...files.map(option));
  const wanted = params.get("training_file");
  if (wanted && files.some((f) => f.id === wanted)) training.value = wanted;
  else if (files.length) training.value = files[0].id; // the newest upload
}

function fillGpus(gpus) {
  $("#job-gpu").replaceChildren(
    h("option", { value: "" }, "the server's (LORACLE_WORKER_GPU)"),
    ...gpus.map((g) => h("option", { value: g.id }, `${g.name} (${g.memory_gib} GiB)`)),
  );
}

// The advisor's answer stays in this tab until a job is submitted from it, so a detour to
// the Data page to upload the training file comes back to the same form.
function applyDraft() {
  const saved = sessionStorage.getItem(DRAFT);
  if (!saved) return;
  const draft = JSON.parse(saved);
  $("#job-model").value = draft.model || "";
  $("#job-variant").value = draft.variant;
  for (const box of $$("input[name=combine_with]", form)) box.checked = draft.combine_with.includes(box.value);
  $("#job-gpu").value = draft.profile.hardware.gpu || "";
  $("#job-gpu-count").value = draft.profile.hardware.gpu_count || 1;
  fillFields("profile.goal", pageData.goal, draft.profile.goal);
  fillFields("hyperparameters", pageData.hyperparameters, draft.hyperparameters, { optional: true });
  const note = $("#draft-note");
  note.replaceChildren(
    `Filled in from the advisor: ${draft.from}. ` +
      (draft.variant === "auto"
        ? "'auto' asks the advisor again with the same card and goal, and keeps its decision with the job. "
        : "The advisor's pick is named; give the model's hub id or its folder on the server. "),
    h(
      "button",
      {
        type: "button",
        onclick: () => {
          sessionStorage.removeItem(DRAFT);
          location.assign(location.pathname);
        },
      },
      "Start from an empty form",
    ),
  );
  note.hidden = false;
}

function showVariant() {
  const auto = $("#job-variant").value === "auto";
  // The server refuses combine_with beside 'auto' (the advisor chooses it).
  for (const box of $$("input[name=combine_with]", form)) {
    box.disabled = auto;
    if (auto) box.checked = false;
  }
  for (const input of $$("#profile-fields select, #profile-fields input", form)) input.disabled = !auto;
}

function body() {
  const variant = $("#job-variant").value;
  const out = {
    model: $("#job-model").value.trim(),
    training_file: $("#job-training-file").value,
    variant,
    hyperparameters: readFields("hyperparameters", pageData.hyperparameters, { optional: true }),
  };
  const validation = $("#job-validation-file").value;
  if (validation) out.validation_file = validation;
  if (variant === "auto") {
    const gpu = $("#job-gpu").value;
    out.profile = {
      goal: readFields("profile.goal", pageData.goal),
      ...(gpu ? { hardware: { gpu, gpu_count: Number($("#job-gpu-count").value) } } : {}),
    };
  } else {
    out.combine_with = $$("input[name=combine_with]:checked", form).map((b) => b.value);
  }
  return out;
}

async function submit(event) {
  event.preventDefault();
  clearError(errorBox);
  markProblems(form, []);
  const button = $("#submit-job");
  button.disabled = true;
  $("#job-status").textContent = "Submitting…";
  try {
    const job = await api("/v1/jobs", {
      method: "POST",
      json: body(),
      extraHeaders: { "Idempotency-Key": idempotencyKey },
    });
    sessionStorage.removeItem(DRAFT);
    location.assign(`/jobs/${encodeURIComponent(job.id)}`);
  } catch (error) {
    $("#job-status").textContent = "";
    markProblems(form, error.problems);
    showError(errorBox, error);
    button.disabled = false;
  }
}

if (frame()) start();
