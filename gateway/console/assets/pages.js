// One function per page: it fills `root` with live data and registers what to stop on leave.
import { Unauthorized, get, post, stream } from "./api.js";
import { badge, h, json, s, short, table, when } from "./dom.js";
import { dag, lineChart } from "./charts.js";

function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

function status(text = "") {
  return h("p", { class: "status", role: "status", "aria-live": "polite" }, text);
}

function live(ctx, path, onMessage, label) {
  const dot = h("span", { class: "live", title: `live: ${path}` }, "connecting");
  ctx.keep(stream(path, onMessage, (state) => {
    dot.textContent = state;
    dot.dataset.state = state;
    if (state === "unauthorized") ctx.unauthorized();
  }));
  return h("span", { class: "live-wrap" }, label ? `${label}: ` : "", dot);
}

async function attempt(out, fn) {
  out.textContent = "working...";
  out.classList.remove("error");
  try {
    const result = await fn(); // undefined: fn has shown its result itself
    if (result !== undefined) out.textContent = result;
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    out.textContent = String(e.message || e);
    out.classList.add("error");
  }
}

// ---- the domain map -------------------------------------------------------------------
async function map(root, ctx) {
  const [list, components] = await Promise.all([
    get("/domains/list", { page_size: 1000 }),
    get("/guardian/components").catch(() => ({ components: [] })),
  ]);
  const domains = new Map(list.domains.map((d) => [d.domain_id, d]));
  const dependsOn = new Map(components.components.map((c) => [c.name, c.depends_on || []]));
  const graph = h("div", { class: "graph", id: "domain-map" });
  const summary = h("div", { class: "tiles" });
  const rows = h("div");
  root.append(
    h("h1", {}, "Domain map"),
    h("p", { class: "hint" }, "Domains and kernels from the registry; colour is health, the ring is load; lines are start-up dependencies. ",
      live(ctx, "/domains/watch", (msg) => {
        for (const change of msg.changes || []) {
          if (!change.domain) continue;
          if (/REMOVED|DEREGISTERED|EXPIRED/.test(change.kind)) domains.delete(change.domain.domain_id);
          else domains.set(change.domain.domain_id, change.domain);
        }
        draw();
      }, "registry")),
    summary, graph, rows);

  async function overview() {
    try {
      const o = await get("/domains/system/overview");
      // The overview links to the unified telemetry (the immune kernel; absent when it is down).
      const t = await get(o.links?.telemetry || "/domains/system/telemetry").catch(() => null);
      const figures = t ? [
        h("div", { class: "tile", id: "telemetry" }, h("b", {}, String(t.total_requests ?? 0)), " calls in 5 min, ",
          h("b", {}, `${(t.p99_latency_ms ?? 0).toFixed(1)} ms`), " p99, ",
          h("b", {}, `${((t.error_rate ?? 0) * 100).toFixed(1)}%`), " errors"),
        h("div", { class: "tile" }, h("b", {}, `${((t.collaboration_rate ?? 0) * 100).toFixed(0)}%`), " cross-domain, graph at ",
          h("code", {}, o.links?.collaboration_graph || "/domains/system/collaboration-graph")),
      ] : [];
      summary.replaceChildren(
        h("div", { class: "tile" }, h("b", {}, `${o.services_up}/${o.services_total}`), " services up"),
        h("div", { class: "tile" }, h("b", {}, String(domains.size)), " registered"),
        h("div", { class: "tile" }, "system ", badge(o.status)),
        ...figures);
    } catch (e) { if (e instanceof Unauthorized) ctx.unauthorized(); }
  }

  function draw() {
    const all = [...domains.values()].sort((a, b) => a.domain_id.localeCompare(b.domain_id));
    const core = all.filter((d) => d.metadata?.managed_by === "guardian" && d.metadata?.group !== "examples");
    const outer = all.filter((d) => !core.includes(d));
    const W = 900, H = 560, cx = W / 2, cy = H / 2;
    const at = new Map();
    const hub = core.find((d) => d.domain_id === "registry");
    const ring = core.filter((d) => d !== hub);
    if (hub) at.set(hub.domain_id, [cx, cy]);
    const place = (list, rx, ry, turn) => list.forEach((d, i) => {
      const a = (2 * Math.PI * i) / Math.max(list.length, 1) + turn;
      at.set(d.domain_id, [cx + rx * Math.cos(a), cy + ry * Math.sin(a)]);
    });
    place(ring, 170, 165, -Math.PI / 2);
    place(outer, 400, 235, -Math.PI / 4);
    const edges = [];
    for (const [name, deps] of dependsOn) for (const dep of deps) if (at.has(name) && at.has(dep)) edges.push([at.get(name), at.get(dep)]);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "domain map" },
      edges.map(([[x1, y1], [x2, y2]]) => s("line", { x1, y1, x2, y2, class: "edge" })),
      all.map((d) => {
        const [x, y] = at.get(d.domain_id);
        const load = Math.max(0, Math.min(1, d.metrics?.load ?? 0));
        const health = short(d.status, "DOMAIN_STATUS_");
        return s("g", { class: `node ${health.toLowerCase()}`, "data-domain": d.domain_id, transform: `translate(${x},${y})` },
          s("title", {}, `${d.domain_id}: ${health}, load ${load.toFixed(2)}, ${(d.capabilities || []).join(", ")}`),
          s("circle", { r: 30, class: "body" }),
          s("circle", { r: 34, class: "load", "stroke-dasharray": `${(2 * Math.PI * 34 * load).toFixed(1)} 1000` }),
          s("text", { y: 48, "text-anchor": "middle" }, d.domain_id),
          s("text", { y: 5, "text-anchor": "middle", class: "small" }, health));
      }));
    graph.replaceChildren(svg);
    rows.replaceChildren(section("Domains", table([
      ["domain", (d) => d.domain_id],
      ["health", (d) => badge(short(d.status, "DOMAIN_STATUS_"))],
      ["load", (d) => (d.metrics?.load ?? 0).toFixed(2)],
      ["latency ms", (d) => (d.metrics?.latency_ms ?? 0).toFixed(1)],
      ["success", (d) => (d.metrics?.success_rate ?? 0).toFixed(2)],
      ["capabilities", (d) => (d.capabilities || []).join(", ")],
      ["last heartbeat", (d) => when(d.last_heartbeat_at)],
    ], all, { id: "domains-table" })));
  }
  draw();
  await overview();
  ctx.every(overview, 10000); // the overview has no stream: refreshed every 10 s
}

// ---- the health matrix ----------------------------------------------------------------
async function health(root, ctx) {
  const components = new Map();
  const body = h("div");
  const probes = h("div");
  root.append(h("h1", {}, "Health matrix"),
    h("p", { class: "hint" }, "Components as Guardian supervises them. ",
      live(ctx, "/guardian/watch", (msg) => {
        if (msg.component) { components.set(msg.component.name, msg.component); draw(); }
      }, "guardian")),
    body, probes);
  function draw() {
    const rows = [...components.values()];
    body.replaceChildren(section("Components", table([
      ["component", (c) => c.name],
      ["group", (c) => c.group],
      ["state", (c) => badge(short(c.state, "COMPONENT_STATE_"))],
      ["since", (c) => when(c.state_since)],
      ["restarts", (c) => String(c.total_restarts ?? 0)],
      ["probe ms", (c) => (c.probe_latency_ms ?? 0).toFixed(1)],
      ["port", (c) => String(c.port || "")],
      ["last error", (c) => c.last_error || ""],
    ], rows, { id: "health-table" })));
  }
  const initial = await get("/guardian/components");
  for (const c of initial.components) if (!components.has(c.name)) components.set(c.name, c);
  draw();
  async function check() {
    try {
      const r = await get("/kernel-ports/health-check");
      probes.replaceChildren(section("Port probes", table([
        ["component", (c) => c.component_name], ["port", (c) => String(c.port)],
        ["healthy", (c) => badge(String(c.healthy))], ["status", (c) => c.status],
        ["latency ms", (c) => (c.latency_ms ?? 0).toFixed(1)], ["error", (c) => c.error],
      ], r.checks)));
    } catch (e) { if (e instanceof Unauthorized) ctx.unauthorized(); }
  }
  await check();
  ctx.every(check, 15000); // active probes have no stream: refreshed every 15 s
}

// ---- events -------------------------------------------------------------------------
function eventRow(e) {
  return [e.sequence, when(e.time), e.event_type, e.source_domain, JSON.stringify(e.data ?? {})];
}

async function events(root, ctx) {
  const tail = h("tbody", { id: "tail" });
  const pattern = h("input", { id: "tail-pattern", value: "*", "aria-label": "pattern" });
  let stop = null;
  const state = h("span");
  function start() {
    if (stop) stop();
    tail.replaceChildren();
    const path = `/domains/events/stream?pattern=${encodeURIComponent(pattern.value || "*")}`;
    let ended = false;
    stop = stream(path, (msg) => {
      for (const e of msg.events || []) tail.prepend(h("tr", {}, eventRow(e).map((c) => h("td", {}, String(c ?? "")))));
      while (tail.children.length > 200) tail.lastChild.remove();
    }, (st) => { state.textContent = st; if (st === "unauthorized" && !ended) { ended = true; ctx.unauthorized(); } });
  }
  ctx.keep(() => stop && stop());
  const histPattern = h("input", { id: "history-pattern", value: "*", "aria-label": "history pattern" });
  const histSource = h("input", { id: "history-source", placeholder: "source domain", "aria-label": "source domain" });
  const history = h("div");
  async function search() {
    const r = await get("/domains/events/history", { pattern: histPattern.value, source_domain: histSource.value, page_size: 50 });
    history.replaceChildren(table([
      ["seq", (e) => e.sequence], ["time", (e) => when(e.time)], ["type", (e) => e.event_type],
      ["source", (e) => e.source_domain], ["data", (e) => JSON.stringify(e.data ?? {})],
    ], r.events, { id: "history-table" }));
  }
  const dead = h("div");
  async function deadLetters() {
    const r = await get("/domains/events/dead-letters", { page_size: 100 });
    dead.replaceChildren(table([
      ["id", (d) => d.dead_letter_id], ["subscription", (d) => d.subscription_id],
      ["event", (d) => d.event?.event_type], ["attempts", (d) => String(d.attempts ?? "")],
      ["error", (d) => d.last_error || d.error || ""],
      ["", (d) => { const out = h("span"); return h("span", {}, h("button", { onclick: () => attempt(out, async () => { await post(`/domains/events/dead-letters/${encodeURIComponent(d.dead_letter_id)}/redeliver`, {}); await deadLetters(); return "redelivered"; }) }, "Redeliver"), out); }],
    ], r.dead_letters, { id: "dead-letters" }));
  }
  root.append(h("h1", {}, "Events"),
    section("Live tail",
      h("form", { class: "row", onsubmit: (ev) => { ev.preventDefault(); start(); } },
        h("label", { for: "tail-pattern" }, "Pattern"), pattern, h("button", {}, "Tail"), state),
      h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, ["seq", "time", "type", "source", "data"].map((t) => h("th", { scope: "col" }, t)))), tail))),
    section("History",
      h("form", { class: "row", onsubmit: (ev) => { ev.preventDefault(); search(); } },
        h("label", { for: "history-pattern" }, "Pattern"), histPattern, histSource, h("button", {}, "Search")),
      history),
    section("Dead letters", dead));
  start();
  await Promise.all([search(), deadLetters()]);
}

// ---- workflows ----------------------------------------------------------------------
const EXAMPLE = {
  name: "process_document",
  description: "ingest, analyze and remember a document (started from the console)",
  steps: [
    { domain_id: "data_domain", action: "ingest", data: { document: "Restarting fixed the port timeout. Great result." } },
    { domain_id: "ai_domain", action: "analyze", depends_on: ["step_1"] },
    { domain_id: "memory_domain", action: "store", depends_on: ["step_2"] },
  ],
};

// What an operator may do to an execution in its state: cancel a running one; retry or
// abandon a compensation that failed (as the named operator, with a reason).
function executionActions(e, changed) {
  const path = `/domains/workflows/executions/${encodeURIComponent(e.execution_id)}`;
  const out = h("span");
  // A secure Grace records the signed-in caller; a name matters only in an insecure one.
  const operator = () => (sessionStorage.getItem("grace.approver") || "").trim();
  const act = (label, fn) => h("button", { onclick: () => attempt(out, async () => { await fn(); changed(); return `${label}: sent`; }) }, label);
  if (/RUNNING|COMPENSATING/.test(e.state) && !e.cancel_requested) {
    return [act("Cancel", () => post(`${path}/cancel`, { reason: "cancelled from the console" })), out];
  }
  if (/COMPENSATION_FAILED/.test(e.state)) {
    const reason = h("input", { placeholder: "reason to abandon", "aria-label": "reason to abandon" });
    return [act("Retry compensation", () => post(`${path}/compensation/retry`, { operator: operator() })),
      reason, act("Abandon compensation", () => post(`${path}/compensation/abandon`, { operator: operator(), reason: reason.value })), out];
  }
  return [];
}

async function workflows(root, ctx) {
  const defs = h("div");
  const execs = h("div");
  const detail = h("div", { id: "execution" });
  const out = status();
  let stopWatch = null;
  ctx.keep(() => stopWatch && stopWatch());

  async function loadDefs() {
    const r = await get("/domains/workflows/list", { page_size: 100 });
    defs.replaceChildren(table([
      ["workflow", (w) => w.name], ["id", (w) => w.workflow_id],
      ["steps", (w) => String(w.steps?.length ?? 0)], ["runs", (w) => String(w.execution_count ?? 0)],
      ["", (w) => h("button", { class: "run", "data-workflow": w.workflow_id, onclick: () => attempt(out, async () => {
        const e = await post(`/domains/workflows/execute/${encodeURIComponent(w.workflow_id)}`, {});
        await loadExecs();
        show(e.execution.execution_id);
        return `started ${e.execution.execution_id}`;
      }) }, "Run")],
    ], r.workflows, { id: "definitions" }));
  }
  async function loadExecs() {
    const r = await get("/domains/workflows/executions", { page_size: 50 });
    execs.replaceChildren(table([
      ["execution", (e) => h("a", { href: `#/workflows/${e.execution_id}`, onclick: (ev) => { ev.preventDefault(); show(e.execution_id); } }, e.execution_id)],
      ["workflow", (e) => e.workflow_name], ["state", (e) => badge(short(e.state, "EXECUTION_STATE_"))],
      ["started", (e) => when(e.created_at)], ["finished", (e) => when(e.finished_at)],
    ], r.executions, { id: "executions" }));
  }
  function show(id) {
    if (stopWatch) stopWatch();
    const graph = h("div", { class: "dag", id: "dag" });
    const state = h("span", { id: "execution-state" });
    const io = h("div", { class: "io" });
    const verdict = h("span", { id: "proof-verdict" });
    const proofOut = h("div");
    const actions = h("div", { class: "row" });
    detail.replaceChildren(section(`Execution ${id}`,
      h("p", {}, "State: ", state, " ", h("span", { class: "hint" }, "(live from the watch stream)")),
      graph, actions, io,
      h("p", { class: "row" }, h("button", { id: "verify-proof", onclick: () => attempt(verdict, async () => {
        const { proof } = await get(`/domains/workflows/executions/${encodeURIComponent(id)}/proof`);
        const v = await post("/domains/workflows/proofs/verify", { proof });
        proofOut.replaceChildren(json(proof));
        verdict.replaceChildren(badge(v.valid ? "valid" : `invalid: ${v.reason}`));
        return undefined;
      }) }, "Verify proof"), verdict), proofOut));
    stopWatch = stream(`/domains/workflows/executions/${encodeURIComponent(id)}/watch`, (msg) => {
      const e = msg.execution;
      if (!e) return;
      state.replaceChildren(badge(short(e.state, "EXECUTION_STATE_")));
      state.dataset.state = short(e.state, "EXECUTION_STATE_");
      graph.replaceChildren(dag(e.steps || [], definitionSteps.get(e.workflow_id) || []));
      io.replaceChildren(h("details", {}, h("summary", {}, "Input"), json(e.input)),
        h("details", { open: true }, h("summary", {}, "Output"), json(e.output)),
        ...(e.steps || []).filter((st) => st.error || st.compensation_error).map((st) => h("p", { class: "error" }, `${st.step_id}: ${st.error} ${st.compensation_error}`)));
      actions.replaceChildren(...executionActions(e, () => loadExecs().catch(() => {})));
      if (/SUCCEEDED|FAILED|ROLLED_BACK/.test(e.state)) loadExecs().catch(() => {});
    }, (st) => { if (st === "unauthorized") ctx.unauthorized(); });
  }
  const definitionSteps = new Map();
  root.append(h("h1", {}, "Workflows"),
    section("Definitions", h("p", { class: "row" }, h("button", { id: "create-example", onclick: () => attempt(out, async () => {
      const r = await post("/domains/workflows/create", EXAMPLE);
      await loadDefs();
      return `created ${r.workflow_id}`;
    }) }, "Create the document example"), out), defs),
    section("Executions", execs), detail);
  const [, list] = await Promise.all([loadDefs(), get("/domains/workflows/list", { page_size: 100 })]);
  for (const w of list.workflows) definitionSteps.set(w.workflow_id, w.steps || []);
  await loadExecs();
  const id = location.hash.split("/")[2];
  if (id) show(id);
}

// ---- approvals ----------------------------------------------------------------------
async function approvals(root, ctx) {
  const body = h("div");
  const approver = h("input", { id: "approver", value: sessionStorage.getItem("grace.approver") || "", autocomplete: "name" });
  async function load() {
    const r = await get("/kernels/governance/approvals", { status: "APPROVAL_STATUS_PENDING", page_size: 100 });
    body.replaceChildren(table([
      ["approval", (a) => a.approval_id], ["actor", (a) => a.actor], ["action", (a) => a.action],
      ["resource", (a) => a.resource], ["risk", (a) => short(a.risk_level, "RISK_LEVEL_")],
      ["requested", (a) => when(a.created_at)],
      ["decide", (a) => {
        const reason = h("input", { class: "reason", placeholder: "reason", "aria-label": `reason for ${a.approval_id}` });
        const out = h("span");
        const decide = (verb) => attempt(out, async () => {
          // Empty: the server records the signed-in caller (a secure Grace refuses any other
          // name); an insecure Grace needs the name typed here.
          sessionStorage.setItem("grace.approver", approver.value.trim());
          await post(`/kernels/governance/approvals/${encodeURIComponent(a.approval_id)}/${verb}`, { approver: approver.value.trim(), reason: reason.value });
          await load();
          return `${verb}d`;
        });
        return h("span", { class: "row", "data-approval": a.approval_id }, reason,
          h("button", { class: "approve", onclick: () => decide("approve") }, "Approve"),
          h("button", { class: "reject", onclick: () => decide("reject") }, "Reject"), out);
      }],
    ], r.approvals, { id: "approvals" }));
    const t = await get("/tasks", { page_size: 50 }).catch((e) => { if (e instanceof Unauthorized) throw e; return { tasks: [] }; });
    tasks.replaceChildren(table([
      ["task", (x) => x.task_id], ["remedy", (x) => x.remedy], ["target", (x) => x.target],
      ["risk", (x) => x.risk], ["state", (x) => badge(short(x.state, "TASK_STATE_"))],
      ["approval", (x) => x.approval_id], ["reason", (x) => x.reason],
    ], t.tasks || [], { id: "tasks" }));
  }
  const tasks = h("div");
  root.append(h("h1", {}, "Approvals"),
    h("p", { class: "hint" }, "Requests governance holds for a person. ",
      live(ctx, "/domains/events/stream?pattern=governance.*", () => load().catch(() => {}), "governance events")),
    h("p", { class: "row" }, h("label", { for: "approver" }, "Decided by (insecure Grace only; a secure one records who signed in)"), approver),
    body, section("Tasks the tasks kernel proposed", tasks));
  await load();
}

// ---- memory -------------------------------------------------------------------------
async function memory(root) {
  const query = h("input", { id: "memory-query", value: "timeout", "aria-label": "query" });
  const results = h("div");
  const stats = h("div");
  async function search() {
    const r = await get("/domains/memory/query", { query: query.value, page_size: 50 });
    results.replaceChildren(table([
      ["contribution", (x) => x.contribution?.contribution_id], ["domain", (x) => x.contribution?.domain_id],
      ["type", (x) => x.contribution?.contribution_type],
      ["confidence", (x) => (x.contribution?.confidence ?? 0).toFixed(2)],
      ["relevance", (x) => (x.relevance ?? x.score ?? 0).toFixed?.(2) ?? ""],
      ["content", (x) => JSON.stringify(x.contribution?.content ?? {})],
    ], r.results || [], { id: "memory-results" }));
    const l = await get("/librarian/search", { query: query.value, page_size: 20 }).catch((e) => { if (e instanceof Unauthorized) throw e; return { hits: [] }; });
    library.replaceChildren(table([
      ["document", (x) => x.document?.id], ["title", (x) => x.document?.title], ["source", (x) => x.document?.source],
      ["score", (x) => (x.score ?? 0).toFixed(3)],
      ["matched", (x) => (x.highlights || []).map((hl) => `${hl.field}: ${hl.fragment}`).join(" | ")],
    ], l.hits || [], { id: "library-results" }));
  }
  const library = h("div");
  root.append(h("h1", {}, "Shared memory"),
    section("Search", h("form", { class: "row", onsubmit: (ev) => { ev.preventDefault(); search(); } },
      h("label", { for: "memory-query" }, "Query"), query, h("button", {}, "Search")), results),
    section("The librarian's documents", library),
    section("Statistics", stats));
  stats.replaceChildren(json(await get("/domains/memory/stats")));
  await search();
}

// ---- governance ---------------------------------------------------------------------
async function governance(root) {
  const [mode, policies, decisions] = await Promise.all([
    get("/kernels/governance/mode"),
    get("/kernels/governance/policies", { page_size: 100 }),
    get("/kernels/governance/decisions", { page_size: 50 }),
  ]);
  root.append(h("h1", {}, "Governance"),
    section("Mode", h("p", { id: "governance-mode" }, badge(short(mode.mode, "MODE_"))),
      table([["risk", (d) => short(d.risk_level, "RISK_LEVEL_")], ["default", (d) => badge(short(d.effect, "EFFECT_"))]], mode.defaults || [])),
    section("Policies", table([
      ["policy", (p) => p.policy_id], ["principal", (p) => p.principal], ["action", (p) => p.action],
      ["resource", (p) => p.resource], ["min risk", (p) => short(p.min_risk_level, "RISK_LEVEL_")],
      ["effect", (p) => badge(short(p.effect, "EFFECT_"))], ["mode", (p) => short(p.mode, "MODE_")],
      ["description", (p) => p.description],
    ], policies.policies, { id: "policies" })),
    section("Recent decisions", table([
      ["decision", (d) => d.decision_id], ["actor", (d) => d.actor], ["action", (d) => d.action],
      ["resource", (d) => d.resource], ["risk", (d) => short(d.risk_level, "RISK_LEVEL_")],
      ["verdict", (d) => badge(short(d.verdict, "VERDICT_"))],
      ["when", (d) => when(d.time)], ["reasons", (d) => (d.reasons || []).join("; ")],
    ], decisions.decisions, { id: "decisions" })));
}

// ---- the immutable log --------------------------------------------------------------
async function log(root) {
  const checkpoint = h("div");
  const verdict = h("span", { id: "log-verdict" });
  async function load() {
    const c = await get("/kernels/log/checkpoint");
    checkpoint.replaceChildren(
      h("p", {}, "Tree size ", h("b", { id: "tree-size" }, String(c.tree_size)), ", root ", h("code", {}, c.root_hash)),
      h("p", {}, "Verifier key ", h("code", {}, c.verifier_key)),
      h("pre", { class: "json" }, c.checkpoint));
  }
  root.append(h("h1", {}, "Immutable log"),
    section("Signed checkpoint", checkpoint, h("p", { class: "row" },
      h("button", { id: "refresh-checkpoint", onclick: () => load() }, "Refresh"),
      h("button", { id: "verify-log", onclick: () => attempt(verdict, async () => {
        const v = await post("/kernels/log/verify-integrity", {});
        verdict.replaceChildren(badge(v.valid ? `valid: ${v.checked} entries checked` : `invalid at ${v.first_bad_index}: ${v.reason}`));
        return undefined;
      }) }, "Verify the whole log"), verdict)));
  await load();
}

// ---- performance --------------------------------------------------------------------
const samples = [];
async function performance(root, ctx) {
  const charts = h("div", { class: "charts", id: "charts" });
  const figures = h("div");
  root.append(h("h1", {}, "Performance"),
    h("p", { class: "hint" }, "Figures from /domains/system/overview and the immune kernel, sampled every 5 s while this page is open (they have no stream)."),
    charts, figures);
  async function sample() {
    const [o, immune] = await Promise.all([get("/domains/system/overview"), get("/kernels/immune/stats").catch(() => ({}))]);
    const bus = o.services?.eventbus?.stats?.GetStats || {};
    const orch = o.services?.orchestrator?.stats?.GetStats || {};
    samples.push({ t: Date.now(), latency: Object.fromEntries(Object.entries(o.services || {}).map(([k, v]) => [k, v.latency_ms ?? 0])),
      published: Number(bus.published_total ?? 0), executions: Number(orch.executions_total ?? orch.total_executions ?? 0),
      anomalies: Number(immune.anomalies ?? 0) });
    while (samples.length > 120) samples.shift();
    const rate = samples.slice(1).map((x, i) => ({ t: x.t, v: Math.max(0, (x.published - samples[i].published) / ((x.t - samples[i].t) / 1000)) }));
    const names = Object.keys(samples.at(-1).latency);
    charts.replaceChildren(
      section("Events published per second", lineChart({ bus: rate })),
      section("Health-check latency per service (ms)", lineChart(Object.fromEntries(names.map((n) => [n, samples.map((x) => ({ t: x.t, v: x.latency[n] ?? 0 }))])))),
      section("Anomalies found by the immune kernel", lineChart({ anomalies: samples.map((x) => ({ t: x.t, v: x.anomalies })) })));
    figures.replaceChildren(section("Latest figures", table([["service", (r) => r[0]], ["status", (r) => badge(r[1].status)], ["latency ms", (r) => (r[1].latency_ms ?? 0).toFixed(1)]], Object.entries(o.services || {}), { id: "perf-table" })),
      section("Orchestrator", json(orch)), section("Immune kernel", json(immune)));
  }
  await sample();
  ctx.every(() => sample().catch((e) => { if (e instanceof Unauthorized) ctx.unauthorized(); }), 5000);
}

export const pages = { map, health, events, workflows, approvals, memory, governance, log, performance };
