// Echo server on Bun.serve, whose WebSocket server is uWebSockets: every text or binary
// message goes back to its sender. Usage: bun bun-echo.js [port] (default 9001), listening
// on 127.0.0.1.

const port = Number(process.argv[2] || 9001);

Bun.serve({
  hostname: '127.0.0.1',
  port,
  fetch(request, server) {
    if (server.upgrade(request)) {
      return undefined;
    }
    return new Response('expected a WebSocket upgrade', { status: 426 });
  },
  websocket: {
    message(socket, message) {
      socket.send(message);
    },
    perMessageDeflate: false,
    maxPayloadLength: 16 * 1024 * 1024,
    // Seconds of inactivity before Bun times a connection out. The idle scenarios hold
    // connections open without traffic, so this is set well above the length of any run.
    idleTimeout: 960,
  },
});
console.log(`bun echo listening on 127.0.0.1:${port}`);
