import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the API to `medialab serve` (MEDIALAB_URL, default http://127.0.0.1:8000).
const target = process.env.MEDIALAB_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  base: "/studio/",
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 400 },
  server: { proxy: { "/v1": { target, changeOrigin: true }, "/docs": { target }, "/openapi.json": { target } } },
  preview: { proxy: { "/v1": { target, changeOrigin: true } } },
});
