// json-rewrite: rewrites fields of JSON responses, the way a mitmproxy addon patches an
// API answer before the client sees it.
//
// Config:
//   fields          Assignments `dotted.path=value`, separated by commas or newlines, e.g.
//                     user.email="hidden@example.com", features.beta=true, items.0.price=0
//                   A path is a list of object keys (or array indices) joined with dots.
//                   The value is parsed as JSON if it parses (true, 42, null, "x", [1,2],
//                   {"a":1}), otherwise it is used as a plain string. Commas inside
//                   quotes, brackets or braces do not split assignments.
//   create_missing  "true" to also create a missing last key when its parent object
//                   exists (default "false": only fields already present are rewritten).
//
// Only responses whose content-type mentions "json" are buffered and rewritten. A
// content-encoded body (gzip, deflate, br, zstd) is read decoded and written back encoded
// the same way (`decodedBody` / `setDecodedBody`, WIT 0.2.1), so the client still gets
// what it asked for. When at least one field changed, the body is re-serialized
// (compactly) and an `x-json-rewrite: N` header says how many fields changed.
// A body that is not valid JSON is passed on untouched, with a warning in the log.
// Malformed assignments are logged once as errors and skipped; the rest still apply.
import { get as configGet } from "flowgate:plugin/config@0.2.1";
import { log } from "flowgate:plugin/log@0.2.1";

const CONTINUE = { tag: "continue" };
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

// --- config ---------------------------------------------------------------------------

// Splits `text` at top-level commas and newlines: not inside a JSON string, [..] or {..}.
function splitAssignments(text) {
  const parts = [];
  let current = "";
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      current += c;
      if (c === "\\" && i + 1 < text.length) {
        current += text[++i];
      } else if (c === '"') {
        inString = false;
      }
      continue;
    }
    if (c === '"') inString = true;
    else if (c === "[" || c === "{") depth++;
    else if ((c === "]" || c === "}") && depth > 0) depth--;
    if ((c === "," || c === "\n") && depth === 0) {
      parts.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  parts.push(current);
  return parts.map((p) => p.trim()).filter((p) => p.length > 0);
}

// Parses the `fields` config into [{ path: [...keys], value }], logging bad entries.
function parseFields(text) {
  const rules = [];
  for (const assignment of splitAssignments(text)) {
    const eq = assignment.indexOf("=");
    if (eq < 0) {
      log("error", `fields: ignoring ${JSON.stringify(assignment)}: expected path=value`);
      continue;
    }
    const pathText = assignment.slice(0, eq).trim();
    const path = pathText.split(".").map((k) => k.trim());
    if (path.some((k) => k.length === 0)) {
      log("error", `fields: ignoring ${JSON.stringify(assignment)}: empty key in path ${JSON.stringify(pathText)}`);
      continue;
    }
    const raw = assignment.slice(eq + 1).trim();
    let value;
    try {
      value = JSON.parse(raw);
    } catch {
      value = raw; // not JSON: use the text as a string
    }
    rules.push({ path, value, label: pathText });
  }
  return rules;
}

// The config is read lazily on first use (this world has no `configure` hook to
// validate it at load time) and cached; a pooled instance always sees the same config.
let cached = null;
function settings() {
  const fields = configGet("fields") ?? "";
  const createMissing = (configGet("create_missing") ?? "false").trim().toLowerCase() === "true";
  if (cached === null || cached.fieldsText !== fields || cached.createMissing !== createMissing) {
    const rules = parseFields(fields);
    if (rules.length === 0) log("warn", "no usable `fields` configured: responses pass untouched");
    cached = { fieldsText: fields, createMissing, rules };
  }
  return cached;
}

// --- rewriting ------------------------------------------------------------------------

function isContainer(v) {
  return v !== null && typeof v === "object";
}

// The key to use on `container` for path segment `key`: array indices must be numbers.
function keyFor(container, key) {
  if (Array.isArray(container)) {
    return /^\d+$/.test(key) ? Number(key) : undefined;
  }
  return key;
}

// Applies one rule to `doc`. Returns true if the document changed.
function apply(doc, rule, createMissing) {
  let parent = doc;
  for (const key of rule.path.slice(0, -1)) {
    if (!isContainer(parent)) return false;
    const k = keyFor(parent, key);
    if (k === undefined || !Object.prototype.hasOwnProperty.call(parent, k)) return false;
    parent = parent[k];
  }
  if (!isContainer(parent)) return false;
  const last = keyFor(parent, rule.path[rule.path.length - 1]);
  if (last === undefined) return false;
  const exists = Array.isArray(parent) ? last < parent.length : Object.prototype.hasOwnProperty.call(parent, last);
  // Only objects get new keys: growing an array through an index would leave holes.
  if (!exists && !(createMissing && !Array.isArray(parent))) return false;
  if (exists && JSON.stringify(parent[last]) === JSON.stringify(rule.value)) return false;
  parent[last] = rule.value;
  return true;
}

function describe(e) {
  // Host calls that fail throw; the thrown value carries the WIT error variant as `payload`.
  return JSON.stringify(e?.payload ?? String(e));
}

// --- hooks ----------------------------------------------------------------------------

export const http = {
  requestHeaders(flow, request) {
    return CONTINUE;
  },
  requestBodyChunk(flow, request, chunk, endOfStream) {
    return chunk;
  },
  request(flow, request) {
    return CONTINUE;
  },
  responseHeaders(flow, request, response) {
    if (settings().rules.length === 0) return CONTINUE;
    const contentType = response.getHeader("content-type").join(",").toLowerCase();
    if (!contentType.includes("json")) return CONTINUE;
    try {
      response.setBodyMode("buffer");
    } catch (e) {
      log("error", `cannot buffer the response body: ${describe(e)}`);
    }
    return CONTINUE;
  },
  responseBodyChunk(flow, request, response, chunk, endOfStream) {
    return chunk;
  },
  response(flow, request, response) {
    const { rules, createMissing } = settings();
    if (rules.length === 0) return CONTINUE;
    let bytes;
    try {
      bytes = response.decodedBody();
    } catch (e) {
      // invalid-state: we did not buffer this one (not JSON); limit-exceeded: too big or a
      // decompression bomb; unsupported: a content coding the host does not know.
      if (e?.payload?.tag !== "invalid-state") log("warn", `cannot read the body of ${request.url()}: ${describe(e)}`);
      return CONTINUE;
    }
    if (bytes.length === 0) return CONTINUE;
    let doc;
    try {
      doc = JSON.parse(decoder.decode(bytes));
    } catch (e) {
      log("warn", `${request.url()}: body is not valid JSON, left untouched (${e})`);
      return CONTINUE;
    }
    const changed = [];
    for (const rule of rules) {
      if (apply(doc, rule, createMissing)) changed.push(rule.label);
    }
    if (changed.length === 0) return CONTINUE;
    try {
      response.setDecodedBody(encoder.encode(JSON.stringify(doc)));
      response.setHeader("x-json-rewrite", String(changed.length));
      log("info", `${request.url()}: rewrote ${changed.join(", ")}`);
    } catch (e) {
      log("error", `cannot rewrite ${request.url()}: ${describe(e)}`);
    }
    return CONTINUE;
  },
  error(flow, request, message) {},
  httpConnect(flow, request) {
    return CONTINUE;
  },
};
