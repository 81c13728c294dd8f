// A Grace client in JavaScript, loaded from the same protos/ as the Python services.
// Usage: node client.mjs <scenario> ; addresses come from GRACE_<SERVICE>_ADDR and
// include directories from GRACE_PROTO_INCLUDES (path-separated). Prints one JSON line
// per step so the Python test can assert on what a Node user observes.
import fs from "node:fs";
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

function client(pkg, service, component) {
  const address = process.env[`GRACE_${component.toUpperCase()}_ADDR`];
  if (!address) throw new Error(`GRACE_${component.toUpperCase()}_ADDR is not set`);
  return new pkg[service](address, grpc.credentials.createInsecure());
}

function unary(stub, method, request) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: Date.now() + 10_000 }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function report(step, value) {
  console.log(JSON.stringify({ step, ...value }));
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
