// Finds the WebSocket URL (?ws=... or the serving origin's /config.json), then shows the chat.
import './csp.js';
import { createRoot } from 'react-dom/client';
import { App } from './App.jsx';
import './style.css';

async function webSocketUrl() {
  const fromQuery = new URLSearchParams(location.search).get('ws');
  if (fromQuery) return fromQuery;
  const response = await fetch(new URL('/config.json', location.href));
  if (!response.ok) throw new Error(`/config.json answered ${response.status}`);
  const { wsUrl } = await response.json();
  if (typeof wsUrl !== 'string' || !wsUrl) throw new Error('/config.json has no wsUrl');
  return wsUrl;
}

const root = createRoot(document.getElementById('root'));
webSocketUrl().then(
  (url) => root.render(<App url={url} />),
  (error) =>
    root.render(
      <p className="fatal" role="alert">
        No WebSocket URL: open this page with <code>?ws=wss://…</code> ({error.message}).
      </p>,
    ),
);
