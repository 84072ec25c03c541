// What every page shares: the page frame (sign-in guard, theme, sign out), a small DOM
// builder (text is always set as text, never parsed as HTML), formatting, and errors.

import { key } from "./api.js";

/** The page's server-rendered data (forms drawn from the API's request models). */
export const pageData = JSON.parse(document.getElementById("page-data").textContent);

/** Build an element: h("a", {href: "/x", class: "y"}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** GiB as the API gives them; under 1 GiB in MiB, where a tiny run's figures would read 0.0. */
export function gib(value, digits = 1) {
  if (value == null) return "–";
  const v = Number(value);
  return Math.abs(v) < 1 && v !== 0 ? `${(v * 1024).toFixed(digits)} MiB` : `${v.toFixed(digits)} GiB`;
}

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : "–";
}

export function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function variantLabel(variant, combineWith = []) {
  const titles = pageData.variants ? pageData.variants.titles : {};
  return [variant, ...combineWith].map((v) => titles[v] || v).join(" + ");
}

export function statusBadge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

/** Show an error (an ApiError or any Error) in `box`, with each problem's field and fix. */
export function showError(box, error) {
  box.replaceChildren(h("strong", {}, error.detail || error.message || String(error)));
  const problems = error.problems || [];
  if (problems.length > 1 || (problems.length === 1 && !(error.detail || "").includes(problems[0].message))) {
    box.append(h("ul", {}, problems.map((p) => h("li", {}, h("code", {}, p.field), ": ", p.message))));
  }
  box.hidden = false;
}

export function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

/** Mark the inputs a 422 names (data-field is the field's path in the request body). */
export function markProblems(form, problems) {
  for (const input of $$("[aria-invalid]", form)) input.removeAttribute("aria-invalid");
  for (const note of $$(".problem", form)) {
    note.hidden = true;
    note.textContent = "";
  }
  let first = null;
  for (const problem of problems || []) {
    const input = $$("[data-field]", form).find((el) => el.dataset.field === problem.field);
    const note = input
      ? document.getElementById(`${input.id}-problem`)
      : $$(".problem[data-for]", form).find((el) => el.dataset.for === problem.field);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    }
    if (note) {
      note.textContent = problem.message;
      note.hidden = false;
    }
  }
  if (first) first.focus();
}

/** A CSS custom property's current value (the charts follow the theme). */
export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function setupTheme() {
  const button = document.getElementById("theme-toggle");
  const show = () => {
    const dark = document.documentElement.dataset.theme === "dark";
    button.setAttribute("aria-pressed", String(dark));
  };
  show();
  button.addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try {
      localStorage.setItem("loracle.theme", next);
    } catch (e) {
      // storage disabled: the choice lasts for this page only
    }
    show();
    document.dispatchEvent(new CustomEvent("themechange"));
  });
  document.addEventListener("themechange", show);
}

/** Frame a page: the theme button, sign out, and (unless public) a key or a sign-in. */
export function frame({ public: isPublic = false } = {}) {
  setupTheme();
  if (isPublic) return true;
  if (!key.get()) {
    const next = location.pathname + location.search;
    location.replace(`/sign-in?${new URLSearchParams({ next })}`);
    return false;
  }
  document.getElementById("sign-out").addEventListener("click", () => {
    key.clear();
    // Back to this page after signing in again (as any call without a key would send it).
    location.assign(`/sign-in?${new URLSearchParams({ next: location.pathname + location.search })}`);
  });
  return true;
}

/** Report an error that stops the page from working, where the reader will see it. */
export function pageError(error) {
  if (error && error.name === "AbortError") return;
  showError(document.getElementById("page-error"), error);
}

/** Run `task` now and every `ms` while the tab is visible; returns a stop function. */
export function every(ms, task) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    timer = null;
    if (stopped) return;
    if (document.visibilityState === "visible") {
      try {
        await task();
      } catch (error) {
        pageError(error);
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}
