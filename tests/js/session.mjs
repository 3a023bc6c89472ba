// xmpp.js (@xmpp/client) as a client that stays up while the test drives it, one JSON line at a
// time (ws_chat.mjs does one login and one message; this one also loses its connection and
// reconnects).
// Usage: node session.mjs <service-url> <domain> <username> <password> [fast]
// With "fast", the client asks for a FAST token (XEP-0484) at its password login, keeps it (in
// memory, xmpp.js's own storage) and logs in with it alone from then on, falling back to the
// password only if the server refuses the token; without, it keeps no token.
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
// {"disconnected": true}, {"dropped": true}, {"error": ...}; with "fast", {"token": {"mechanism":
// ..., "expiry": ...}} when the server hands it a token (the token itself is not printed).
// What crosses the wire goes to stderr (the test shows it when something fails).
import readline from "node:readline";
import { client, xml } from "@xmpp/client";
import WebSocket from "ws";

// xmpp.js uses the platform's WebSocket, which Node.js has built in only from version 22.
globalThis.WebSocket ??= WebSocket;
const SM = "urn:xmpp:sm:3"; // XEP-0198

const [service, domain, username, password, mode] = process.argv.slice(2);
const xmpp = client({ service, domain, username, password, resource: "xmppjs" });
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
if (mode === "fast") {
  // xmpp.js's own storage (a variable in @xmpp/client-core/src/fast/fast.js), told to the test.
  // createOnAuthenticate (@xmpp/client/lib) fetches it into credentials.token at the first login
  // after it came, and every SASL2 login from then on tries it before the password. That first
  // token is the one it keeps sending (`credentials.token ??= ...`): a rotated one is saved here
  // but never used, so past the rotation period (a day by default) and its grace, xmpp.js 0.14
  // falls back to its password. The tests reconnect well within it.
  const save = xmpp.fast.saveToken;
  xmpp.fast.saveToken = async (token) => {
    await save(token);
    emit({ token: { mechanism: token.mechanism, expiry: token.expiry } });
  };
} else {
  // The password on every login, as before FAST logins without <fast count=...> were taken
  // (commit 8d7b34f): the tests that do not ask for a token see no FAST login.
  xmpp.fast.saveToken = async () => {};
}

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
