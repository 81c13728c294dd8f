// A Grace client in JavaScript, loaded from the same protos/ as the Python services.
// Usage: node client.mjs <scenario> ; addresses come from GRACE_<SERVICE>_ADDR and
// include directories from GRACE_PROTO_INCLUDES (path-separated). Prints one JSON line
// per step so the Python test can assert on what a Node user observes. Credentials come
// from GRACE_CA_FILE, GRACE_TLS_CERT, GRACE_TLS_KEY and GRACE_TOKEN.
import fs from "node:fs";
import https from "node:https";
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const includeDirs = [
  path.join(root, "protos"),
  ...(process.env.GRACE_PROTO_INCLUDES || "").split(path.delimiter).filter(Boolean),
];

function load(file) {
  const definition = protoLoader.loadSync(file, {
    includeDirs,
    keepCase: true, // proto field names, as in the JSON the Python side prints
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition);
}

// Grace is secure by default: mutual TLS with a certificate from the Grace CA (every Grace
// server certificate carries the name grace.local) and a bearer token on every call.
// Without GRACE_CA_FILE the client speaks plaintext, as to `grace up --insecure`.
function channelCredentials() {
  const ca = process.env.GRACE_CA_FILE;
  if (!ca) return [grpc.credentials.createInsecure(), {}];
  let credentials = grpc.credentials.createSsl(
    fs.readFileSync(ca),
    fs.readFileSync(process.env.GRACE_TLS_KEY),
    fs.readFileSync(process.env.GRACE_TLS_CERT),
  );
  const token = process.env.GRACE_TOKEN;
  if (token) {
    const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
      const metadata = new grpc.Metadata();
      metadata.add("authorization", `Bearer ${token}`);
      callback(null, metadata);
    });
    credentials = grpc.credentials.combineChannelCredentials(credentials, bearer);
  }
  return [credentials, { "grpc.ssl_target_name_override": "grace.local" }];
}

function client(pkg, service, component) {
  const address = process.env[`GRACE_${component.toUpperCase()}_ADDR`];
  if (!address) throw new Error(`GRACE_${component.toUpperCase()}_ADDR is not set`);
  const [credentials, options] = channelCredentials();
  return new pkg[service](address, credentials, options);
}

function httpsHealth(address) {
  return new Promise((resolve, reject) => {
    const colon = address.lastIndexOf(":");
    const [host, port] = [address.slice(0, colon), address.slice(colon + 1)];
    https
      .get({ host, port, path: "/healthz", ca: fs.readFileSync(process.env.GRACE_CA_FILE) }, (res) => {
        res.resume();
        resolve(res.statusCode);
      })
      .on("error", reject);
  });
}

function unary(stub, method, request) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: Date.now() + 30_000 }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function report(step, value) {
  console.log(JSON.stringify({ step, ...value }));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Polls `probe` until it returns a truthy value; generous, since the machine may be busy.
async function eventually(probe, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// Resolves with the first event on `stream` that `match` accepts.
function nextEvent(stream, match, timeoutMs = 30_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no event on the stream")), timeoutMs);
    stream.on("data", (message) => {
      const event = message.events.find(match);
      if (event) {
        clearTimeout(timer);
        resolve(event);
      }
    });
    stream.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

// proto-loader hands google.protobuf.Struct over as its message form
// ({fields: {k: {stringValue: ...}}}), not as JSON: these two convert.
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: struct(value) };
}

function struct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

function fromValue(value) {
  switch (value.kind) {
    case "structValue":
      return fromStruct(value.structValue);
    case "listValue":
      return (value.listValue.values || []).map(fromValue);
    case "nullValue":
      return null;
    default:
      return value[value.kind];
  }
}

function fromStruct(message) {
  return Object.fromEntries(
    Object.entries(message?.fields || {}).map(([k, v]) => [k, fromValue(v)]),
  );
}

// Buffers (proto bytes) as base64, the way the protobuf JSON mapping writes them.
function toJson(message) {
  return JSON.parse(
    JSON.stringify(message, (_, value) =>
      value && value.type === "Buffer" ? Buffer.from(value.data).toString("base64") : value,
    ),
  );
}

const scenarios = {
  async registry() {
    const registry = load("grace/registry/v1/registry.proto").grace.registry.v1;
    const stub = client(registry, "RegistryService", "registry");
    const registered = await unary(stub, "RegisterDomain", {
      domain_id: "node_domain",
      port: 9333,
      capabilities: ["interop", "javascript"],
    });
    report("register", { created: registered.created, address: registered.domain.address });
    const found = await unary(stub, "FindByCapability", { capability: "interop" });
    report("find", {
      domains: found.domains.map((d) => d.domain.domain_id),
      score: found.domains[0]?.score ?? null,
    });
    try {
      await unary(stub, "GetDomain", { domain_id: "missing_domain" });
      report("not_found", { code: "OK" });
    } catch (error) {
      report("not_found", { code: grpc.status[error.code], details: error.details });
    }
  },

  async events() {
    const eventbus = load("grace/eventbus/v1/eventbus.proto").grace.eventbus.v1;
    const bus = client(eventbus, "EventBusService", "eventbus");
    const before = await unary(bus, "GetStats", {});

    // A push subscription, with the seeds' body plus a client id for idempotent retries.
    const created = await unary(bus, "CreateSubscription", {
      domain_id: "memory_domain",
      pattern: "ml.prediction",
      subscription_id: "node-interop",
    });
    report("create_subscription", {
      created: created.created,
      subscription_id: created.subscription.subscription_id,
      patterns: created.subscription.patterns,
    });
    const listed = await unary(bus, "ListSubscriptions", { domain_id: "memory_domain" });
    report("list_subscriptions", {
      subscription_ids: listed.subscriptions.map((sub) => sub.subscription_id),
    });

    // A Subscribe stream opened before the publish. It starts right after the head seen
    // above, so it cannot miss the event however late the server registers it.
    const stream = bus.Subscribe({
      pattern: "ml.*",
      start: "START_POSITION_SEQUENCE",
      start_sequence: String(Number(before.head_sequence) + 1),
    });
    stream.on("error", () => {}); // the cancel below ends the stream with CANCELLED
    await eventually(
      async () => (await unary(bus, "GetStats", {})).active_streams > 0,
      "the stream to open",
    );

    const seed = {
      event_type: "ml.prediction",
      source_domain: "my_app",
      data: struct({ prediction: "positive" }),
    };
    const published = await unary(bus, "Publish", seed);
    report("publish", { id: published.id, sequence: published.sequence });
    // The stream stays paused (buffering) until a "data" listener is attached here.
    const event = await nextEvent(stream, (e) => e.id === published.id);
    stream.cancel();
    report("received", {
      id: event.id,
      sequence: event.sequence,
      event_type: event.event_type,
      source_domain: event.source_domain,
      data: fromStruct(event.data),
    });

    const retried = await unary(bus, "Publish", { ...seed, id: published.id });
    report("retry", { duplicate: retried.duplicate, sequence: retried.sequence });

    // The push subscription delivers the same event to memory_domain.
    const delivered = await eventually(async () => {
      const page = await unary(bus, "ListSubscriptions", { domain_id: "memory_domain" });
      const sub = page.subscriptions.find((s) => s.subscription_id === "node-interop");
      return Number(sub.delivered_sequence) >= Number(published.sequence) && sub;
    }, "the push delivery");
    report("delivered", {
      delivered_sequence: delivered.delivered_sequence,
      delivered_count: delivered.delivered_count,
    });
  },

  async workflow() {
    const registryPkg = load("grace/registry/v1/registry.proto").grace.registry.v1;
    const registry = client(registryPkg, "RegistryService", "registry");
    const orchestratorPkg = load("grace/orchestrator/v1/orchestrator.proto").grace.orchestrator.v1;
    const orchestrator = client(orchestratorPkg, "OrchestratorService", "orchestrator");

    // Choose the domains: the best "nlp" domain, and memory_domain by id.
    const nlp = await unary(registry, "FindByCapability", { capability: "nlp" });
    const analyzer = nlp.domains[0].domain;
    const searcher = (await unary(registry, "GetDomain", { domain_id: "memory_domain" })).domain;
    report("choose", {
      analyzer: analyzer.domain_id,
      searcher: searcher.domain_id,
      statuses: [analyzer.status, searcher.status],
    });

    // The seeds' workflow, as written there.
    const created = await unary(orchestrator, "CreateWorkflow", {
      name: "analyze_code",
      steps: [
        { domain_id: searcher.domain_id, action: "search", data: struct({}) },
        {
          domain_id: analyzer.domain_id,
          action: "analyze",
          data: struct({}),
          depends_on: ["step_1"],
        },
      ],
    });
    report("create", {
      workflow_id: created.workflow_id,
      domains_checked: created.domains_checked,
      steps: created.workflow.steps.map((step) => ({
        id: step.id,
        domain_id: step.domain_id,
        depends_on: step.depends_on,
      })),
    });

    const executed = await unary(orchestrator, "ExecuteWorkflow", {
      workflow_id: created.workflow_id,
      input: struct({ code: "def heal(domain): restart the failed domain quickly and safely" }),
      wait: true,
    });
    report("execute", {
      execution_id: executed.execution_id,
      state: executed.execution.state,
      steps: executed.execution.steps.map((step) => [step.step_id, step.state]),
    });

    const final = (await unary(orchestrator, "GetExecution", { execution_id: executed.execution_id }))
      .execution;
    report("final", { state: final.state, output: fromStruct(final.output) });

    const { proof } = await unary(orchestrator, "GetExecutionProof", {
      execution_id: executed.execution_id,
    });
    report("proof", { proof: toJson(proof) });
    const verdict = await unary(orchestrator, "VerifyProof", { proof });
    report("verify", { valid: verdict.valid, reason: verdict.reason });
  },

  async health() {
    // grpcio ships health as generated code, not as a .proto file: the test hands us its
    // FileDescriptorSet instead, which proto-loader reads just as well.
    const descriptorSet = fs.readFileSync(process.env.GRACE_HEALTH_DESCRIPTOR);
    const health = grpc.loadPackageDefinition(
      protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet, { keepCase: true, enums: String }),
    );
    for (const component of (process.env.GRACE_INTEROP_COMPONENTS || "registry").split(",")) {
      const stub = client(health.grpc.health.v1, "Health", component);
      const reply = await unary(stub, "Check", { service: "" });
      report("health", { component, status: reply.status });
    }
    // The gateway speaks HTTP only; its health is GET /healthz.
    for (const component of (process.env.GRACE_INTEROP_HTTP_COMPONENTS || "").split(",")) {
      if (!component) continue;
      const address = process.env[`GRACE_${component.toUpperCase()}_ADDR`];
      const code = process.env.GRACE_CA_FILE
        ? await httpsHealth(address)
        : (await fetch(`http://${address}/healthz`)).status;
      report("health", { component, status: code === 200 ? "SERVING" : `HTTP ${code}` });
    }
  },
};

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
scenarios[name]().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
