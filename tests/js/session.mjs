// xmpp.js (@xmpp/client) as a client that stays up while the test drives it, one JSON line at a
// time (ws_chat.mjs does one login and one message; this one also loses its connection and
// reconnects).
// Usage: node session.mjs <service-url> <domain> <username> <password>
// Commands on stdin:
//   {"send": {"to": ..., "body": ...}}  a chat message
//   {"drop": true}       the connection cut under the client, no stream close (a network drop):
//                        the server keeps the session for resumption (XEP-0198). First the
//                        client acknowledges what it received, and knows the server has read
//                        that, so that nothing it has seen is due to come again.
//   {"reconnect": true}  what xmpp.js does of itself a second after a drop: connect to the same
//                        service again (and resume, where the server offers it inline in SASL2)
//   {"stop": true}       close the stream, print {"stopped": true} and exit
// Events on stdout: {"online": jid} (a new session, its presence sent), {"resumed": jid},
// {"message": {"from": ..., "body": ..., "id": <stanza-id>, "delay": <stamp or null>}},
// {"disconnected": true}, {"dropped": true}, {"error": ...}.
// What crosses the wire goes to stderr (the test shows it when something fails).
import readline from "node:readline";
import { client, xml } from "@xmpp/client";
import WebSocket from "ws";

// xmpp.js uses the platform's WebSocket, which Node.js has built in only from version 22.
globalThis.WebSocket ??= WebSocket;
const SM = "urn:xmpp:sm:3"; // XEP-0198

const [service, domain, username, password] = process.argv.slice(2);
const xmpp = client({ service, domain, username, password, resource: "xmppjs" });
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
// xmpp.js 0.14 logs in with its FAST token (XEP-0484) without <fast count=...>, which this server
// refuses (malformed-request, sns_xmpp/auth/fast.py; the XEP asks for the count with TLS 0-RTT
// only); xmpp.js then reports an error and falls back to the password. Until the server takes
// such logins this client keeps no token: its reconnections log in with the password, and an
// error it reports is a real one.
xmpp.fast.saveToken = async () => {};

xmpp.on("element", (element) => process.stderr.write("IN " + element.toString() + "\n"));
xmpp.on("send", (element) => process.stderr.write("OUT " + element.toString() + "\n"));
xmpp.on("status", (status) => process.stderr.write("STATUS " + status + "\n"));
xmpp.on("error", (error) => emit({ error: String(error) }));
xmpp.on("disconnect", () => emit({ disconnected: true }));
xmpp.on("online", async (address) => {
  await xmpp.send(xml("presence"));
  emit({ online: address.toString() });
});
xmpp.streamManagement.on("resumed", () => emit({ resumed: xmpp.jid.toString() }));
xmpp.on("stanza", (stanza) => {
  if (stanza.is("message") && stanza.attrs.type !== "error" && stanza.getChild("body")) {
    const delay = stanza.getChild("delay", "urn:xmpp:delay");
    emit({ message: { from: stanza.attrs.from, body: stanza.getChildText("body"),
                      id: stanza.getChild("stanza-id", "urn:xmpp:sid:0")?.attrs.id ?? null,
                      delay: delay ? delay.attrs.stamp : null } });
  }
});

let sent = 0;
const commands = readline.createInterface({ input: process.stdin });
commands.on("line", async (line) => {
  const command = JSON.parse(line);
  try {
    if (command.send) {
      sent += 1;
      const { to, body } = command.send;
      await xmpp.send(xml("message", { to, type: "chat", id: `js${sent}` }, xml("body", {}, body)));
    } else if (command.drop) {
      // The server's answer to <r/> comes once it has read what was sent before: the <a/>.
      const answered = new Promise((resolve) => {
        const answer = (element) => {
          if (element.is("a", SM)) {
            xmpp.removeListener("nonza", answer);
            resolve();
          }
        };
        xmpp.on("nonza", answer);
      });
      await xmpp.send(xml("a", { xmlns: SM, h: String(xmpp.streamManagement.inbound) }));
      await xmpp.send(xml("r", { xmlns: SM }));
      await answered;
      // Not xmpp.js's own reconnection a second later: the test says when (the "reconnect" command).
      xmpp.reconnect.stop();
      xmpp.socket.socket.terminate(); // the ws package's: the TCP connection destroyed, no close frame
      emit({ dropped: true });
    } else if (command.reconnect) {
      xmpp.reconnect.start();
      await xmpp.reconnect.reconnect();
    } else if (command.stop) {
      await xmpp.stop();
      emit({ stopped: true });
      process.exit(0);
    }
  } catch (error) {
    emit({ error: String(error) });
  }
});
// The test is gone (its end of the pipe closed): so is this client.
commands.on("close", () => process.exit(3));
xmpp.start().catch((error) => emit({ error: String(error) }));
