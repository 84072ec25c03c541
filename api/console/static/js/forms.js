// Reading and filling the inputs the server drew from a request model (api/console/forms.py;
// each input's id is its body path with dots as dashes, e.g. training-seq_len).

function inputOf(prefix, spec) {
  return document.getElementById(`${prefix}.${spec.name}`.replaceAll(".", "-"));
}

/**
 * The values of `specs` under `prefix`, typed as the API wants them. An optional field
 * left empty is left out, so the server's default applies. A number that does not parse
 * is sent as typed: the server's 422 then names the field and the fix.
 */
export function readFields(prefix, specs, { optional = false } = {}) {
  const out = {};
  for (const spec of specs) {
    const input = inputOf(prefix, spec);
    if (!input) continue;
    if (spec.kind === "bool" && !optional) {
      out[spec.name] = input.checked;
      continue;
    }
    const raw = input.value.trim();
    if (raw === "") {
      if (!optional && spec.default != null) out[spec.name] = spec.default;
      continue;
    }
    if (spec.kind === "int" || spec.kind === "float") {
      const n = Number(raw);
      out[spec.name] = Number.isFinite(n) ? n : raw;
    } else if (spec.kind === "bool") {
      out[spec.name] = raw === "true";
    } else if (spec.kind === "modules") {
      out[spec.name] = raw === "all-linear" ? raw : raw.split(/[\s,]+/).filter(Boolean);
    } else {
      out[spec.name] = raw;
    }
  }
  return out;
}

/** Fill the inputs of `specs` under `prefix` from `values` (missing names are cleared). */
export function fillFields(prefix, specs, values, { optional = false } = {}) {
  for (const spec of specs) {
    const input = inputOf(prefix, spec);
    if (!input) continue;
    const value = values[spec.name];
    if (spec.kind === "bool" && !optional) {
      input.checked = Boolean(value);
    } else if (value == null) {
      input.value = optional ? "" : spec.default ?? "";
    } else if (Array.isArray(value)) {
      input.value = value.join(", ");
    } else {
      input.value = String(value);
    }
  }
}
