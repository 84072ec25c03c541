// The job list: GET /v1/jobs (newest first, `status` filtered by the server, the text filter
// here), refreshed every few seconds while the tab is visible.

import { api } from "./api.js";
import { $, duration, every, frame, h, statusBadge, variantLabel, when } from "./ui.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const PAGE = 20;
const params = new URLSearchParams(location.search);
const statusFilter = $("#filter-status");
const textFilter = $("#filter-text");
let shown = PAGE; // jobs loaded: "Load more" adds a page, and refreshes keep them
let jobs = [];
let hasMore = false;

function progressCell(job) {
  const pct = Math.round(job.progress * 100);
  return h(
    "div",
    { class: "progress-cell" },
    h("progress", { max: "1", value: String(job.progress), "aria-label": `${job.id}: ${pct}%` }),
    h("span", {}, `${pct}%`),
  );
}

function render() {
  const needle = textFilter.value.trim().toLowerCase();
  const visible = jobs.filter((j) =>
    !needle || [j.id, j.model, variantLabel(j.variant, j.combine_with)].some((s) => s.toLowerCase().includes(needle)),
  );
  $("#jobs tbody").replaceChildren(
    ...visible.map((j) =>
      h(
        "tr",
        { dataset: { job: j.id } },
        h("td", {}, h("a", { href: `/jobs/${encodeURIComponent(j.id)}` }, j.id)),
        h("td", {}, h("code", {}, j.model)),
        h("td", {}, variantLabel(j.variant, j.combine_with), j.requested_variant === "auto" ? " (auto)" : ""),
        h("td", {}, statusBadge(j.status)),
        h("td", {}, progressCell(j)),
        h("td", {}, TERMINAL.has(j.status) ? "–" : duration(j.eta_seconds)),
        h("td", {}, when(j.created_at)),
      ),
    ),
  );
  $("#jobs-empty").hidden = visible.length > 0;
  $("#more").hidden = !hasMore;
}

async function load() {
  const query = new URLSearchParams({ limit: String(Math.min(shown, 100)) });
  if (statusFilter.value) query.set("status", statusFilter.value);
  let page = await api(`/v1/jobs?${query}`);
  const all = [...page.data];
  // Past 100 (the API's page limit), follow the pages up to what the reader loaded.
  while (page.has_more && all.length < shown) {
    query.set("after", all[all.length - 1].id);
    page = await api(`/v1/jobs?${query}`);
    all.push(...page.data);
  }
  jobs = all;
  hasMore = page.has_more;
  render();
}

function keepInUrl() {
  const query = new URLSearchParams();
  if (statusFilter.value) query.set("status", statusFilter.value);
  if (textFilter.value.trim()) query.set("q", textFilter.value.trim());
  history.replaceState(null, "", query.size ? `?${query}` : location.pathname);
}

function start() {
  statusFilter.value = params.get("status") || "";
  textFilter.value = params.get("q") || "";
  statusFilter.addEventListener("change", () => {
    shown = PAGE;
    keepInUrl();
    load().catch((e) => $("#jobs-status").replaceChildren(e.message));
  });
  textFilter.addEventListener("input", () => {
    keepInUrl();
    render();
  });
  $("#filters").addEventListener("submit", (e) => e.preventDefault());
  $("#more").addEventListener("click", () => {
    shown += PAGE;
    load();
  });
  every(3000, load);
}

if (frame()) start();
