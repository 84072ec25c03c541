// The one way the console talks to the server: the same REST API under /v1 that clients use,
// with the key from this tab's session storage in the Authorization header.

const KEY = "loracle.key";

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An answer that was not a success, in the API's one error shape. */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${status}`;
    super(detail);
    this.status = status;
    // OpenAI's shape on /v1/files and /v1/fine_tuning: {"error": {"code", ...}}.
    const error = body && body.error;
    this.error = (error && typeof error === "object" ? error.code || error.type : error) || "http_error";
    this.detail = detail;
    this.problems = (body && Array.isArray(body.problems) && body.problems) || [];
  }
}

/** Send the reader to sign in again, back to this page afterwards. */
export function signInAgain(reason) {
  key.clear();
  const next = location.pathname + location.search;
  const query = new URLSearchParams({ next });
  if (reason) query.set("reason", reason);
  location.assign(`/sign-in?${query}`);
}

/** No key (signed out in this tab, perhaps while a poll was due): no call, sign in again. */
function signedIn() {
  if (key.get()) return;
  const next = location.pathname + location.search;
  if (location.pathname !== "/sign-in") location.assign(`/sign-in?${new URLSearchParams({ next })}`);
  throw new DOMException("signed out", "AbortError");
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${key.get() || ""}`, ...extra };
}

async function fail(response) {
  let body = null;
  if ((response.headers.get("content-type") || "").includes("json")) {
    body = await response.json().catch(() => null);
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401) signInAgain(error.detail);
  throw error;
}

/**
 * Call the API. `json` sends a JSON body; `form` a FormData (multipart); `extraHeaders` adds
 * headers (an Idempotency-Key). Resolves to the
 * parsed JSON answer; rejects with an ApiError (a 401 also sends the reader to sign in).
 */
export async function api(path, { method = "GET", json, form, signal, extraHeaders } = {}) {
  signedIn();
  const init = { method, signal, headers: headers(extraHeaders) };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const response = await fetch(path, init);
  if (!response.ok) await fail(response);
  return response.status === 204 ? null : response.json();
}

/** Fetch a file the key may read and hand it to the browser as a download. */
export async function download(path, filename) {
  signedIn();
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) await fail(response);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  // The click has handed the blob to the download; free it on the next turn.
  setTimeout(() => URL.revokeObjectURL(url), 0);
}

/**
 * Follow a server-sent event stream. EventSource cannot send an Authorization header, so
 * this reads the stream with fetch(): yields {id, event, data} for each message (data
 * parsed as JSON), and returns when the server closes the stream.
 */
export async function* serverEvents(path, { signal, lastEventId } = {}) {
  signedIn();
  const extra = { Accept: "text/event-stream" };
  if (lastEventId != null) extra["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
  if (!response.ok) await fail(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const message = { id: null, event: "message", data: "" };
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const field = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "data") data.push(field);
        else if (name === "id") message.id = field;
        else if (name === "event") message.event = field;
      }
      if (!data.length) continue;
      message.data = JSON.parse(data.join("\n"));
      yield message;
    }
  }
}

/**
 * The path template of the first route the API offers for `method` whose path matches
 * `pattern`, or null. Read from its OpenAPI document (public, and always what the server
 * runs), so a page shows an action only once the server has the endpoint for it.
 */
let openapi = null;
export async function offered(method, pattern) {
  if (!openapi) {
    openapi = fetch("/openapi.json").then((r) => (r.ok ? r.json() : { paths: {} }));
  }
  const { paths } = await openapi;
  const found = Object.entries(paths || {}).find(
    ([path, operations]) => pattern.test(path) && method.toLowerCase() in operations,
  );
  return found ? found[0] : null;
}
