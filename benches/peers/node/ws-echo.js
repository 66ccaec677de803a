// Echo server on Node's `ws` package: every text or binary message goes back to its sender.
// Usage: node ws-echo.js [port] (default 9001), listening on 127.0.0.1.
'use strict';

const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 9001);
const server = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: false,
  maxPayload: 16 * 1024 * 1024,
});

server.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
});
server.on('listening', () => console.log(`ws echo listening on 127.0.0.1:${port}`));
