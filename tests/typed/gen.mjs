// Turns a `dataloom schema export` directory into one TypeScript declaration file:
// node gen.mjs EXPORT_DIR OUT.ts. Each schema's `title` becomes the interface name.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compile } from 'json-schema-to-typescript';

const [dir, out] = process.argv.slice(2);
const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
let ts = '// Generated from `dataloom schema export`: one type per registered schema.\n';
for (const [filter, entry] of Object.entries(index)) {
  const schema = JSON.parse(readFileSync(join(dir, entry.file), 'utf8'));
  ts += `\n/** Governs \`${filter}\` (schema version ${entry.version}). */\n`;
  ts += await compile(schema, entry.title, { bannerComment: '', additionalProperties: false });
}
writeFileSync(out, ts);
console.log(`${Object.keys(index).length} types written to ${out}`);
