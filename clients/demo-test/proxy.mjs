// A same-origin reverse proxy for working on the demo page without rebuilding
// msgd (the page is compiled into the binary): GET /demo answers the file
// DEMO_HTML with the headers msgd's own /demo sends (its CSP above all, so the
// page runs under the real policy); every other request, WebSocket upgrades
// included, goes to MSGD_URL untouched.
//
//   MSGD_URL=http://127.0.0.1:8080 DEMO_HTML=../../src/http/demo.html [PORT=8081] node proxy.mjs
//
// Prints one line, {"listening": "http://127.0.0.1:PORT"}, once it listens.
import { readFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";

const upstream = new URL(process.env.MSGD_URL ?? "http://127.0.0.1:8080");
const file = process.env.DEMO_HTML;
if (!file) {
  console.error("proxy: set DEMO_HTML to the page to serve at /demo");
  process.exit(2);
}
const target = { host: upstream.hostname, port: Number(upstream.port || 80) };

const server = http.createServer((req, res) => {
  const path = new URL(req.url, "http://proxy").pathname;
  if (path === "/demo" && (req.method === "GET" || req.method === "HEAD")) return serveDemo(req, res);
  const forward = http.request({ ...target, method: req.method, path: req.url, headers: req.headers }, (answer) => {
    res.writeHead(answer.statusCode, answer.rawHeaders);
    answer.pipe(res);
  });
  forward.on("error", (e) => {
    if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
    res.end(`proxy: ${e.message}`);
  });
  req.pipe(forward);
});

// msgd decides whether there is a page (404 when http.demo is off) and which
// headers it has; only the body is swapped for the working copy.
function serveDemo(req, res) {
  const ask = http.request({ ...target, method: "GET", path: "/demo" }, async (answer) => {
    answer.resume();
    if (answer.statusCode !== 200) {
      res.writeHead(answer.statusCode, answer.rawHeaders);
      return res.end();
    }
    try {
      const body = await readFile(file);
      const headers = { ...answer.headers, "content-length": body.length };
      delete headers["transfer-encoding"];
      res.writeHead(200, headers);
      res.end(req.method === "HEAD" ? undefined : body);
    } catch (e) {
      res.writeHead(500, { "content-type": "text/plain" });
      res.end(`proxy: ${e.message}`);
    }
  });
  ask.on("error", (e) => {
    res.writeHead(502, { "content-type": "text/plain" });
    res.end(`proxy: ${e.message}`);
  });
  ask.end();
}

// A WebSocket upgrade: replay the request head to msgd, then pipe both ways.
server.on("upgrade", (req, socket, head) => {
  const conn = net.connect(target.port, target.host, () => {
    let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) text += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    conn.write(`${text}\r\n`);
    if (head.length) conn.write(head);
    socket.pipe(conn).pipe(socket);
  });
  conn.on("error", () => socket.destroy());
  socket.on("error", () => conn.destroy());
  conn.on("close", () => socket.destroy());
  socket.on("close", () => conn.destroy());
});

server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  console.log(JSON.stringify({ listening: `http://127.0.0.1:${server.address().port}` }));
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
