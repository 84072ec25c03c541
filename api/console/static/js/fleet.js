// The fleet: its workers and their cards once the server lists them (GET /v1/workers), and
// the queue from /v1/jobs meanwhile: what runs where (each running job names its worker),
// and what waits, first in line first.

import { api, offered } from "./api.js";
import { $, every, frame, h, statusBadge, variantLabel, when } from "./ui.js";

let workersPath = null;

function cell(value) {
  if (value == null) return "–";
  if (typeof value === "object") return h("code", {}, JSON.stringify(value));
  return String(value);
}

/** Whatever a worker object holds, one column per key: the page need not know its shape. */
async function loadWorkers() {
  const { data } = await api(workersPath);
  const columns = [...new Set(data.flatMap((w) => Object.keys(w)))].filter((k) => k !== "object");
  $("#workers").replaceChildren(
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, data.map((w) => h("tr", {}, columns.map((c) => h("td", {}, cell(w[c])))))),
  );
}

async function listed(status) {
  return api(`/v1/jobs?status=${status}&limit=100`);
}

async function loadQueue() {
  const [running, queued] = await Promise.all([listed("running"), listed("queued")]);
  const count = (page) => `${page.data.length}${page.has_more ? "+" : ""}`;
  $("#counts").replaceChildren(
    h("div", {}, h("dt", {}, "Running"), h("dd", {}, count(running))),
    h("div", {}, h("dt", {}, "Waiting"), h("dd", {}, count(queued))),
    h("div", {}, h("dt", {}, "Busy workers"), h("dd", {}, String(new Set(running.data.map((j) => j.worker)).size))),
  );
  const byWorker = new Map();
  for (const job of running.data) {
    const where = job.worker || "a worker starting it";
    if (!byWorker.has(where)) byWorker.set(where, []);
    byWorker.get(where).push(job);
  }
  $("#running").replaceChildren(
    ...(byWorker.size
      ? [...byWorker].map(([worker, list]) =>
          h(
            "section",
            { class: "worker", "aria-label": `Worker ${worker}` },
            h("h4", {}, h("code", {}, worker)),
            h(
              "ul",
              { class: "plain" },
              list.map((j) =>
                h(
                  "li",
                  {},
                  h("a", { href: `/jobs/${encodeURIComponent(j.id)}` }, j.id),
                  h("code", {}, j.model),
                  variantLabel(j.variant, j.combine_with),
                  statusBadge(j.status),
                  h("progress", { max: "1", value: String(j.progress), "aria-label": `${j.id} progress` }),
                  `${Math.round(j.progress * 100)}%`,
                ),
              ),
            ),
          ),
        )
      : [h("p", { class: "muted" }, "Nothing is running.")]),
  );
  // The API lists newest first; the worker takes the oldest first.
  const line = [...queued.data].reverse();
  $("#queued tbody").replaceChildren(
    ...line.map((j, i) =>
      h(
        "tr",
        {},
        h("td", {}, String(i + 1)),
        h("td", {}, h("a", { href: `/jobs/${encodeURIComponent(j.id)}` }, j.id)),
        h("td", {}, h("code", {}, j.model)),
        h("td", {}, variantLabel(j.variant, j.combine_with)),
        h("td", {}, when(j.created_at)),
      ),
    ),
  );
  $("#queued-empty").hidden = line.length > 0;
}

async function start() {
  workersPath = await offered("get", /^\/v1\/workers$/);
  $("#workers-panel").hidden = !workersPath;
  $("#fleet-note").textContent = workersPath
    ? "Workers as the server lists them; the queue below is read from /v1/jobs."
    : "This server does not list its workers yet (no GET /v1/workers): the queue below is read from /v1/jobs, and each running job names the worker (host:pid) that runs it.";
  every(3000, async () => {
    await Promise.all([loadQueue(), workersPath ? loadWorkers() : null]);
  });
}

if (frame()) start();
