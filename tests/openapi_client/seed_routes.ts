// A typed call of every seed route (DESIGN.md section 4), against the client types that
// openapi-typescript generated from the gateway's /openapi.json into generated/. The test
// only compiles this file with `tsc --strict`: a schema that drifts from what the seeds send
// or read (a Struct that is not an object, a field that is not always in replies, a renamed
// operation) fails the compilation.
import createClient from "openapi-fetch";
import type { components, operations, paths } from "./generated/grace-api";

type Schemas = components["schemas"];
const grace = createClient<paths>({ baseUrl: "http://localhost:8000" });

// Operation ids are short and stable: what generated clients name their methods.
type SeedOperations = Pick<
  operations,
  | "registerDomain"
  | "heartbeat"
  | "listDomains"
  | "getDomain"
  | "getCapabilityMap"
  | "findByCapability"
  | "getRegistryStats"
  | "publish"
  | "createSubscription"
  | "listSubscriptions"
  | "getHistory"
  | "eventBusGetStats"
  | "subscribe"
  | "contribute"
  | "query"
  | "verify"
  | "apply"
  | "listByDomain"
  | "topContributors"
  | "sharedMemoryGetStats"
  | "createWorkflow"
  | "executeWorkflow"
  | "getWorkflow"
  | "listWorkflows"
  | "orchestratorGetStats"
  | "checkComponents"
  | "heal"
  | "systemOverview"
  | "systemHealth"
>;
export type { SeedOperations };

export async function seedRoutes(): Promise<string[]> {
  const seen: string[] = [];

  // Registry.
  const registered = await grace.POST("/domains/register", {
    body: { domain_id: "ai_domain", port: 8202, capabilities: ["chat", "ml", "prediction"] },
  });
  const domain: Schemas["grace.registry.v1.Domain"] | undefined = registered.data?.domain;
  if (domain) {
    const id: string = domain.domain_id; // always in replies: no undefined to check
    const capabilities: string[] = domain.capabilities;
    const status: "DOMAIN_STATUS_UNSPECIFIED" | "DOMAIN_STATUS_HEALTHY" | "DOMAIN_STATUS_DEGRADED" | "DOMAIN_STATUS_UNHEALTHY" =
      domain.status;
    seen.push(id, ...capabilities, status);
  }
  await grace.POST("/domains/heartbeat/{domain_id}", {
    params: { path: { domain_id: "ai_domain" } },
    body: { metrics: { load: 0.5, latency_ms: 12, success_rate: 1 } },
  });
  const listed = await grace.GET("/domains/list", {
    params: { query: { page_size: 100, status: "DOMAIN_STATUS_HEALTHY", capability: "ml" } },
  });
  for (const d of listed.data?.domains ?? []) seen.push(d.domain_id, d.address);
  if (listed.data) seen.push(listed.data.next_page_token);
  const one = await grace.GET("/domains/domain/{domain_id}", {
    params: { path: { domain_id: "ai_domain" } },
  });
  seen.push(one.data?.domain?.version ?? "");
  const capabilities = await grace.GET("/domains/capabilities", {
    params: { query: { include_unhealthy: true } },
  });
  for (const [capability, ids] of Object.entries(capabilities.data?.capabilities ?? {})) {
    seen.push(capability, ...ids.domain_ids);
  }
  const found = await grace.GET("/domains/find-by-capability/{capability}", {
    params: { path: { capability: "ml" }, query: { limit: 5 } },
  });
  for (const ranked of found.data?.domains ?? []) seen.push(String(ranked.score));
  const registryStats = await grace.GET("/domains/registry-stats");
  seen.push(String(registryStats.data?.total_domains ?? 0));

  // Event bus: a Struct payload is a free-form object.
  const published = await grace.POST("/domains/events/publish", {
    body: {
      event_type: "ml.prediction",
      source_domain: "ai_domain",
      data: { prediction: "positive", confidence: 0.93, labels: ["a", "b"], nested: { ok: true } },
    },
  });
  if (published.data) seen.push(published.data.id, String(published.data.sequence));
  await grace.POST("/domains/events/subscribe", {
    body: { domain_id: "ai_domain", patterns: ["ml.*"], start: "START_POSITION_NEW" },
  });
  const subscriptions = await grace.GET("/domains/events/subscriptions", {
    params: { query: { domain_id: "ai_domain" } },
  });
  for (const s of subscriptions.data?.subscriptions ?? []) seen.push(s.subscription_id);
  const history = await grace.GET("/domains/events/history", {
    params: { query: { pattern: "ml.*", page_size: 50, newest_first: true } },
  });
  for (const event of history.data?.events ?? []) {
    const data: { [key: string]: unknown } | undefined = event.data;
    seen.push(event.event_type, JSON.stringify(data));
  }
  const busStats = await grace.GET("/domains/events/stats");
  seen.push(String(busStats.data?.head_sequence ?? 0));
  const stream = await grace.GET("/domains/events/stream", {
    params: { query: { pattern: "ml.*" } },
    parseAs: "stream",
  });
  seen.push(String(stream.response.status));

  // Shared memory.
  const contributed = await grace.POST("/domains/memory/contribute", {
    body: {
      domain_id: "ai_domain",
      contribution_type: "optimization",
      content: { technique: "caching", improvement: "2x faster" },
      tags: ["perf"],
    },
  });
  const contribution = contributed.data?.contribution;
  if (contribution) seen.push(contribution.contribution_id, String(contribution.confidence));
  const results = await grace.GET("/domains/memory/query", {
    params: { query: { query: "caching", min_confidence: 0.5 } },
  });
  for (const r of results.data?.results ?? []) seen.push(String(r.score));
  await grace.POST("/domains/memory/verify/{contribution_id}", {
    params: { path: { contribution_id: "c1" } },
    body: { domain_id: "data_domain", reason: "reproduced" },
  });
  await grace.POST("/domains/memory/apply/{contribution_id}", {
    params: { path: { contribution_id: "c1" } },
    body: { domain_id: "data_domain", outcome: "OUTCOME_SUCCESS", detail: "worked" },
  });
  const byDomain = await grace.GET("/domains/memory/domain/{domain_id}", {
    params: { path: { domain_id: "ai_domain" } },
  });
  seen.push(String(byDomain.data?.total_size ?? 0));
  const top = await grace.GET("/domains/memory/top-contributors", {
    params: { query: { limit: 10 } },
  });
  for (const c of top.data?.contributors ?? []) seen.push(c.domain_id);
  const memoryStats = await grace.GET("/domains/memory/stats");
  seen.push(String(memoryStats.data?.total_contributions ?? 0));

  // Workflows: step data is a Struct too.
  const created = await grace.POST("/domains/workflows/create", {
    body: {
      name: "process_document",
      steps: [
        { domain_id: "data_domain", action: "ingest", data: { document: "hello" } },
        { domain_id: "ai_domain", action: "analyze", depends_on: ["step_1"] },
      ],
    },
  });
  const workflowId: string = created.data?.workflow_id ?? "";
  const executed = await grace.POST("/domains/workflows/execute/{workflow_id}", {
    params: { path: { workflow_id: workflowId } },
    body: { wait: true, input: { user: "ada" } },
  });
  for (const step of executed.data?.execution?.steps ?? []) seen.push(step.step_id, step.state);
  const workflow = await grace.GET("/domains/workflows/{workflow_id}", {
    params: { path: { workflow_id: workflowId } },
  });
  seen.push(workflow.data?.workflow?.name ?? "");
  const workflows = await grace.GET("/domains/workflows/list", {
    params: { query: { name: "process_document" } },
  });
  for (const w of workflows.data?.workflows ?? []) seen.push(w.workflow_id);
  const workflowStats = await grace.GET("/domains/workflows-stats");
  seen.push(String(workflowStats.data?.total_executions ?? 0));

  // The whole system.
  const overview = await grace.GET("/domains/system/overview");
  const health = await grace.GET("/domains/system/health");
  seen.push(String(overview.response.status), String(health.response.status));
  const checked = await grace.GET("/kernel-ports/health-check");
  for (const c of checked.data?.checks ?? []) seen.push(c.component_name, c.state);
  const healed = await grace.POST("/network-healer/heal", {
    body: { component_name: "ai_domain", playbook: "diagnose_network" },
  });
  seen.push(String(healed.data?.success ?? false));

  // An error body is typed as well.
  if (one.error) seen.push(one.error.error.status, one.error.error.message);
  return seen;
}
