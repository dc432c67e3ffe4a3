// The generator's configuration (@hey-api/openapi-ts, pinned in package.json). Paths are relative to the
// working directory, so the consistency test can run this same file in a temporary copy of the package.
// Regenerate (exports openapi.json from the app, then generates src/gen): `npm run generate -w @medialab/client`.
/** @type {import('@hey-api/openapi-ts').UserConfig} */
export default {
  input: "openapi.json",
  output: { path: "src/gen", clean: true },
  logs: { file: false },
  plugins: [
    // throwOnError: a failed call throws (a ProblemError, see src/errors.ts) and `data` is never undefined.
    { name: "@hey-api/client-fetch", throwOnError: true, baseUrl: false },
    "@hey-api/typescript",
    { name: "@hey-api/sdk" },
  ],
};
