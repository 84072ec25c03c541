// Training data: drop or choose a JSONL file, POST /v1/files; the server checks every line,
// and a bad file comes back as a 422 whose problems name each line and its fix.

import { api } from "./api.js";
import { $, bytes, frame, h, pageError, when } from "./ui.js";

const zone = $("#dropzone");
const input = $("#file-input");
const status = $("#upload-status");

function tokenStats(stats) {
  const models = Object.entries(stats || {});
  if (!models.length) return h("span", { class: "muted" }, "after a job first trains on it");
  return h(
    "ul",
    { class: "plain" },
    models.map(([model, s]) =>
      h("li", {}, h("code", {}, model), `${Math.round(s.min)} / ${Math.round(s.median)} / ${Math.round(s.max)}`),
    ),
  );
}

async function loadFiles() {
  const { data } = await api("/v1/files?limit=1000");
  $("#files tbody").replaceChildren(
    ...data.map((f) =>
      h(
        "tr",
        { dataset: { file: f.id } },
        h("td", {}, f.filename, h("br"), h("code", { class: "muted" }, f.id)),
        h("td", { class: "num" }, String(f.rows)),
        h("td", {}, f.format),
        h("td", { class: "num" }, bytes(f.bytes)),
        h("td", {}, tokenStats(f.token_stats)),
        h("td", {}, when(f.created_at)),
        h("td", {}, h("a", { class: "button", href: `/jobs/new?training_file=${encodeURIComponent(f.id)}` }, "Train on it")),
      ),
    ),
  );
  $("#files-empty").hidden = data.length > 0;
}

function showProblems(file, error) {
  const box = $("#upload-problems");
  const rows = error.problems.map((p) => {
    const line = p.value && typeof p.value === "object" ? p.value.line : null;
    // The message starts "line N: "; the line has a column of its own.
    const message = p.message.replace(/^line \d+: /, "");
    return h("tr", {}, h("th", { scope: "row", class: "num" }, line ? String(line) : "file"), h("td", {}, message));
  });
  $("#upload-problems-summary").replaceChildren(
    h("strong", {}, `${file.name} was not stored: `),
    error.error === "invalid_file"
      ? `${error.problems.length} problem(s). Fix each line below and upload it again.`
      : error.detail,
  );
  $("#problems-table tbody").replaceChildren(...rows);
  $("#problems-table").hidden = rows.length === 0;
  box.hidden = false;
}

async function upload(file) {
  $("#upload-problems").hidden = true;
  $("#upload-result").hidden = true;
  status.textContent = `Uploading ${file.name} (${bytes(file.size)})…`;
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  try {
    const stored = await api("/v1/files", { method: "POST", form });
    status.textContent = "";
    const result = $("#upload-result");
    result.replaceChildren(
      h("strong", {}, `${stored.filename} is stored as `, h("code", {}, stored.id), ". "),
      `${stored.rows} rows, format ${stored.format}, ${bytes(stored.bytes)}. Token lengths: `,
      tokenStats(stored.token_stats),
      ". ",
      h("a", { href: `/jobs/new?training_file=${encodeURIComponent(stored.id)}` }, "Train on this file"),
    );
    result.hidden = false;
    await loadFiles();
  } catch (error) {
    status.textContent = "";
    if (error.status === 422 || error.status === 413) showProblems(file, error);
    else pageError(error);
  }
}

function start() {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const [file] = event.dataTransfer.files;
    if (file) upload(file);
  });
  // A file dropped beside the zone would make the browser leave the page to open it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  input.addEventListener("change", () => {
    if (input.files[0]) upload(input.files[0]);
    input.value = "";
  });
  loadFiles().catch(pageError);
}

if (frame()) start();
