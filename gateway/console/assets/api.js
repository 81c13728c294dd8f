// Calls to the gateway: every request carries the signed-in bearer token.
const TOKEN_KEY = "grace.token";

export class Unauthorized extends Error {}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const h = { ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function reply(response) {
  if (response.status === 401) throw new Unauthorized("sign in: the gateway answered 401");
  const text = await response.text();
  let body = {};
  try { body = text ? JSON.parse(text) : {}; } catch { body = { text }; }
  if (!response.ok) {
    const message = body.error?.message || text || response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
}

// GET path (relative to the gateway's root) with optional query parameters.
export async function get(path, query = {}) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== "" && v !== undefined) params.set(k, v);
  const qs = params.toString();
  return reply(await fetch(`/${path.replace(/^\//, "")}${qs ? "?" + qs : ""}`, { headers: headers() }));
}

export async function post(path, body = {}) {
  const response = await fetch(`/${path.replace(/^\//, "")}`, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  return reply(response);
}

// A server-sent event stream read with fetch (EventSource cannot send Authorization).
// onMessage(data, event) gets each message's parsed JSON. Reconnects after a drop with
// Last-Event-ID, so no message is missed or repeated. Returns a function that stops it.
export function stream(path, onMessage, onState = () => {}) {
  const controller = new AbortController();
  let lastId = "";
  let stopped = false;
  async function run() {
    while (!stopped) {
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (lastId) h["Last-Event-ID"] = lastId;
        const response = await fetch(`/${path.replace(/^\//, "")}`, { headers: h, signal: controller.signal });
        if (response.status === 401) throw new Unauthorized("401");
        if (!response.ok) throw new Error(`${response.status}: ${await response.text()}`);
        onState("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let data = "", event = "message";
            for (const line of frame.split("\n")) {
              if (line.startsWith(":")) continue; // a keep-alive ping
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (field === "data") data += (data ? "\n" : "") + val;
              else if (field === "id") lastId = val;
              else if (field === "event") event = val;
            }
            if (data) {
              try { onMessage(JSON.parse(data), event); } catch (e) { console.error(e); }
            }
          }
        }
        onState("ended");
        return;
      } catch (e) {
        if (stopped) return;
        if (e instanceof Unauthorized) { onState("unauthorized"); return; }
        onState("reconnecting");
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  }
  run();
  return () => { stopped = true; controller.abort(); };
}
