// Small DOM helpers: elements are built from text, never from HTML strings.
const SVG = "http://www.w3.org/2000/svg";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false).map(node));
  return el;
}

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children.flat().map(node));
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
}

function node(c) {
  return c instanceof Node ? c : document.createTextNode(String(c));
}

// A table of rows: columns are [heading, row => cell].
export function table(columns, rows, attrs = {}) {
  return h("div", { class: "scroll" },
    h("table", attrs,
      h("thead", {}, h("tr", {}, columns.map(([title]) => h("th", { scope: "col" }, title)))),
      h("tbody", {}, rows.length
        ? rows.map((row) => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row) ?? ""))))
        : h("tr", {}, h("td", { colspan: String(columns.length), class: "empty" }, "nothing yet")))));
}

// An enum's short name: DOMAIN_STATUS_HEALTHY -> HEALTHY.
export function short(value, prefix) {
  return String(value ?? "").replace(prefix, "");
}

export function badge(text) {
  const t = String(text || "UNKNOWN");
  const tone = /SERVING|HEALTHY|SUCCEEDED|ok|up|APPROVED|PERMIT|true|valid/i.test(t) ? "good"
    : /FAIL|UNHEALTHY|DOWN|REJECTED|FORBID|false|invalid|DEAD|CRASH/i.test(t) ? "bad"
    : /RUNNING|PENDING|DEGRADED|STARTING|WAITING|APPROVAL/i.test(t) ? "warn" : "neutral";
  return h("span", { class: `badge ${tone}` }, t);
}

export function when(ts) {
  if (!ts || ts.startsWith("1970")) return "";
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toLocaleString();
}

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value ?? {}, null, 2));
}
