import { ApiError, key } from "./api.js";
import { $, clearError, frame, showError } from "./ui.js";

frame({ public: true });

const params = new URLSearchParams(location.search);
const form = $("#sign-in");
const input = $("#api-key");
const errorBox = $("#sign-in-error");

// Only a path on this server: a link to /sign-in?next=https://elsewhere must not send the
// reader (and the key they just typed) off the site.
function nextPage() {
  const next = params.get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") ? next : "/";
}

if (params.get("reason")) {
  const note = $("#sign-in-note");
  note.textContent = `Please sign in again: ${params.get("reason")}`;
  note.hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(errorBox);
  const value = input.value.trim();
  if (!value) {
    input.setAttribute("aria-invalid", "true");
    showError(errorBox, new Error("Enter your API key."));
    input.focus();
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    // The cheapest call that needs a key: a wrong key is told here, not on a blank page.
    const response = await fetch("/v1/catalog/gpus", {
      headers: { Authorization: `Bearer ${value}` },
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new ApiError(response.status, body);
    }
    key.set(value);
    location.assign(nextPage());
  } catch (error) {
    input.setAttribute("aria-invalid", "true");
    const why = error instanceof ApiError && error.status === 401
      ? new Error(`That key was refused: ${error.detail}`)
      : error;
    showError(errorBox, why);
    input.focus();
  } finally {
    button.disabled = false;
  }
});

input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
