// Minimal WebSocket relay with the `ws` package: the Node peer of `voxgate bench`.
//
// What a typical Node voice proxy does: accept a client, open the upstream (same path and
// query), queue client messages until the upstream is open, relay messages both ways with
// their type kept, and close each side when the other closes. No compression.
//
// Env: UPSTREAM (ws://host:port), PORT (0 = any free port). Prints
// "node relay listening on 127.0.0.1:PORT (pid N)".
'use strict';

const http = require('http');
const WebSocket = require('ws');

const upstreamBase = process.env.UPSTREAM;
const port = Number(process.env.PORT || 0);

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const wss = new WebSocket.Server({ server, perMessageDeflate: false, maxPayload: 1 << 20 });

function safeCode(code) {
  return code >= 1000 && code < 5000 && code !== 1005 && code !== 1006 && code !== 1015 ? code : 1000;
}

wss.on('connection', (client, req) => {
  const upstream = new WebSocket(upstreamBase + req.url, { perMessageDeflate: false });
  const pending = [];

  client.on('message', (data, isBinary) => {
    if (upstream.readyState === WebSocket.OPEN) {
      upstream.send(data, { binary: isBinary });
    } else {
      pending.push([data, isBinary]);
    }
  });
  upstream.on('open', () => {
    for (const [data, isBinary] of pending) upstream.send(data, { binary: isBinary });
    pending.length = 0;
  });
  upstream.on('message', (data, isBinary) => {
    if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
  });

  client.on('close', (code) => {
    if (upstream.readyState === WebSocket.OPEN) upstream.close(safeCode(code));
    else upstream.terminate();
  });
  upstream.on('close', (code) => {
    if (client.readyState === WebSocket.OPEN) client.close(safeCode(code));
  });
  client.on('error', () => upstream.terminate());
  upstream.on('error', () => {
    if (client.readyState === WebSocket.OPEN) client.close(1011);
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`node relay listening on 127.0.0.1:${server.address().port} (pid ${process.pid})`);
});
