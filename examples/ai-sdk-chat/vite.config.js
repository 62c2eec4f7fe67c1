// Relative asset URLs, so the built page works wherever it is served (/, /ai-sdk/, a CDN path).
// `npm run dev` asks `make local`'s chat page server for /config.json (the WebSocket URL).
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  plugins: [react()],
  build: { outDir: 'dist', emptyOutDir: true },
  server: { proxy: { '/config.json': 'http://127.0.0.1:3000' } },
});
