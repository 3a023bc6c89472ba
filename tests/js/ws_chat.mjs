// xmpp.js (@xmpp/client) over WebSocket: log in, send one message, print the first reply.
// Usage: node ws_chat.mjs <ws-url> <domain> <username> <password> <to> <body>
// Prints one JSON line: {"jid": ..., "reply": {"from": ..., "body": ...}} or {"error": ...}.
import { client, xml } from "@xmpp/client";
import WebSocket from "ws";

// xmpp.js uses the platform's WebSocket, which Node.js has built in only from version 22.
globalThis.WebSocket ??= WebSocket;

const [service, domain, username, password, to, body] = process.argv.slice(2);
const xmpp = client({ service, domain, username, password, resource: "xmppjs" });
const done = (result, code) => {
  process.stdout.write(JSON.stringify(result) + "\n");
  xmpp.stop().catch(() => {}).finally(() => process.exit(code));
};
const timer = setTimeout(() => done({ error: "timed out" }, 2), 20000);

// What crosses the wire, on stderr (the test shows it when something fails).
xmpp.on("element", (element) => process.stderr.write("IN " + element.toString() + "\n"));
xmpp.on("send", (element) => process.stderr.write("OUT " + element.toString() + "\n"));
xmpp.on("error", (error) => { clearTimeout(timer); done({ error: String(error) }, 1); });
xmpp.on("stanza", (stanza) => {
  if (stanza.is("message") && stanza.attrs.type !== "error" && stanza.getChild("body")) {
    clearTimeout(timer);
    done({ jid: xmpp.jid.toString(), reply: { from: stanza.attrs.from, body: stanza.getChildText("body") } }, 0);
  }
});
xmpp.on("online", async (address) => {
  await xmpp.send(xml("presence"));
  await xmpp.send(xml("message", { to, type: "chat", id: "js1" }, xml("body", {}, body)));
  process.stderr.write(`online as ${address.toString()}\n`);
});
xmpp.start().catch((error) => { clearTimeout(timer); done({ error: String(error) }, 1); });
