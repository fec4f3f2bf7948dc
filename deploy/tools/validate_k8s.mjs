// Offline validation of rendered Kubernetes manifests against the Kubernetes API schemas.
//
//   node deploy/tools/validate_k8s.mjs [--json OUT.json] RENDERED.yaml...
//
// Uses the npm package kubernetes-models (JSON-schema validators generated from the
// Kubernetes OpenAPI) and, for the cert-manager.io kinds of deploy/k8s/cert-manager,
// @kubernetes-models/cert-manager (generated from cert-manager's CRDs), installed by
// deploy/tools/install_validators.sh into $DION_DEPLOY_TOOLS, default
// ~/.cache/dion-ps/deploy-tools. Two checks per object:
//   1. kubernetes-models' own validate(): types, required fields, enums, formats;
//   2. unknown fields, which those schemas let through (they have no
//      additionalProperties: false): every key of the object must be a property of its type,
//      recursively, as the package's TypeScript declarations (*.d.ts) list them. This is what
//      catches a misspelled securityContext or probe field, which a real API server would
//      reject (or silently drop).
// --json writes every parsed object ([{file, index, object}]) for further checks.
// Exit code 0 when every object is valid, 1 otherwise (one line per problem), 2 on bad usage
// or a missing installation.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { homedir } from "node:os";
import { pathToFileURL } from "node:url";

const toolsDir = process.env.DION_DEPLOY_TOOLS ||
    join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "dion-ps", "deploy-tools");
const modules = join(toolsDir, "node_modules");
// The model packages, tried in this order for an object's apiVersion and kind.
const modelPackages = ["kubernetes-models", "@kubernetes-models/cert-manager"];
if (!modelPackages.every((p) => existsSync(join(modules, p))) || !existsSync(join(modules, "yaml"))) {
  console.error(`validate_k8s: ${modelPackages.join(", ")} or yaml not found in ${modules}; ` +
                "run deploy/tools/install_validators.sh");
  process.exit(2);
}
const YAML = await import(pathToFileURL(join(modules, "yaml", "dist", "index.js")));

// ---- strict field check from the TypeScript declarations ----------------------------------

const declarations = new Map();  // .d.ts path -> {props: Map(name -> type), imports} | null

function resolveImport(fromFile, spec) {
  if (spec.startsWith(".")) return resolve(dirname(fromFile), spec.replace(/\.js$/, ".d.ts"));
  return join(modules, spec.replace(/\.js$/, "") + ".d.ts");
}

function parseDeclaration(path) {
  if (declarations.has(path)) return declarations.get(path);
  let parsed = null;
  if (existsSync(path)) {
    const src = readFileSync(path, "utf8").replace(/\/\*[\s\S]*?\*\//g, "");
    const imports = new Map();
    for (const m of src.matchAll(/import \{([^}]+)\} from "([^"]+)";/g)) {
      for (const name of m[1].split(",").map((s) => s.trim().split(/\s+as\s+/).pop())) {
        if (name) imports.set(name, resolveImport(path, m[2]));
      }
    }
    const body = src.match(/export interface \w+(?: extends [\w, ]+)? \{\n([\s\S]*?)\n\}/);
    if (body) {
      const props = new Map();
      let current = null;
      for (const line of body[1].split("\n")) {
        const m = line.match(/^ {4}"([^"]+)"\??: (.*)$/);
        if (m) {
          current = m[1];
          props.set(current, m[2]);
        } else if (current && line.trim()) {
          props.set(current, props.get(current) + " " + line.trim());
        }
      }
      parsed = { props, imports, path };
    }
  }
  declarations.set(path, parsed);
  return parsed;
}

function typeOf(text, decl) {
  const t = text.trim().replace(/;$/, "").trim();
  let m = t.match(/^Array<(.+)>$/);
  if (m) return { array: typeOf(m[1], decl) };
  m = t.match(/^\{\s*\[key: string\]: (.+?);?\s*\}$/);
  if (m) return { map: typeOf(m[1], decl) };
  if (/^I\w+$/.test(t) && decl.imports.has(t)) return { ref: decl.imports.get(t) };
  return {};  // a primitive, a union of literals, IntOrString, Quantity: nothing to descend
}

function checkFields(value, type, where, problems) {
  if (value === null || value === undefined) return;
  if (type.array) {
    if (Array.isArray(value)) value.forEach((v, i) => checkFields(v, type.array, `${where}[${i}]`, problems));
  } else if (type.map) {
    if (typeof value === "object") {
      for (const [k, v] of Object.entries(value)) checkFields(v, type.map, `${where}.${k}`, problems);
    }
  } else if (type.ref) {
    const decl = parseDeclaration(type.ref);
    if (!decl || typeof value !== "object" || Array.isArray(value)) return;
    for (const [k, v] of Object.entries(value)) {
      if (!decl.props.has(k)) {
        problems.push(`${where}.${k}: unknown field (not in ${decl.path.replace(modules + "/", "")})`);
      } else {
        checkFields(v, typeOf(decl.props.get(k), decl), `${where}.${k}`, problems);
      }
    }
  }
}

// ---- main ---------------------------------------------------------------------------------

const args = process.argv.slice(2);
let jsonOut = null;
if (args[0] === "--json") { jsonOut = args[1]; args.splice(0, 2); }
if (args.length === 0) {
  console.error("usage: validate_k8s.mjs [--json OUT.json] RENDERED.yaml...");
  process.exit(2);
}

const problems = [];
const objects = [];
let checked = 0;
for (const file of args) {
  const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
  for (const [index, doc] of docs.entries()) {
    if (doc.errors.length) {
      problems.push(`${file} #${index}: YAML error: ${doc.errors[0].message}`);
      continue;
    }
    const obj = doc.toJS();
    if (obj === null) continue;
    const where = `${file} ${obj.kind}/${obj.metadata?.name}`;
    objects.push({ file, index, object: obj });
    if (typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") {
      problems.push(`${where}: apiVersion and kind are required`);
      continue;
    }
    const groupVersion = obj.apiVersion.includes("/") ? obj.apiVersion : `v1`;
    const base = modelPackages.map((p) => join(modules, p, groupVersion, obj.kind))
        .find((b) => existsSync(b + ".js"));
    if (!base) {
      problems.push(`${where}: no schema for ${obj.apiVersion} ${obj.kind}`);
      continue;
    }
    const Model = (await import(pathToFileURL(base + ".js")))[obj.kind];
    try {
      new Model(obj).validate();
    } catch (e) {
      problems.push(`${where}: ${e.message}`);
    }
    checkFields(obj, { ref: base + ".d.ts" }, where, problems);
    checked++;
  }
}
if (jsonOut) writeFileSync(jsonOut, JSON.stringify(objects, null, 1));
for (const p of problems) console.log(`FAIL ${p}`);
const versions = modelPackages.map((p) =>
    `${p} ${JSON.parse(readFileSync(join(modules, p, "package.json"))).version}`);
console.log(`validate_k8s: ${checked} objects checked against ${versions.join(", ")}, ` +
            `${problems.length} problems`);
process.exit(problems.length ? 1 : 0);
