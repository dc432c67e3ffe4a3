// Copies Swagger UI's assets from the swagger-ui-dist package into dist/swagger/, so the service's /docs
// page loads nothing from a CDN.
import { copyFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const source = dirname(require.resolve("swagger-ui-dist/package.json"));
const target = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "swagger");
mkdirSync(target, { recursive: true });
for (const name of ["swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"]) {
  copyFileSync(join(source, name), join(target, name));
}
console.log(`swagger-ui-dist assets copied to ${target}`);
