"""The one stylesheet of the HTTP side's pages (the start page, the hand-over page, the demo site,
the device and logout pages), served by this server at ``/static/sns-xmpp.css``: no external
fonts or CDNs, readable at phone width and on a desktop, touch-sized buttons. Every page's
Content-Security-Policy allows styles from 'self'."""

from __future__ import annotations

from twisted.web import resource, server

PATH = "/static/sns-xmpp.css"
LINK = f'<link rel="stylesheet" href="{PATH}">'

STYLESHEET = b"""\
:root { color-scheme: light dark; --accent: #2563eb; --muted: #6b7280; --line: #d1d5db; --card: #ffffff;
        --page: #f3f4f6; --text: #111827; }
@media (prefers-color-scheme: dark) {
  :root { --card: #1f2937; --page: #111827; --text: #f9fafb; --line: #374151; --muted: #9ca3af; }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; padding: 1rem; background: var(--page); color: var(--text);
       font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; }
body > * { max-width: 40rem; margin-left: auto; margin-right: auto; }
h1 { font-size: 1.5rem; margin: .5rem auto 1rem; }
p, dl, form, figure, ul { background: var(--card); margin-top: 0; margin-bottom: .75rem; }
p, dl, form, ul { padding: .75rem 1rem; border: 1px solid var(--line); border-radius: .5rem; }
p:empty { display: none; }
ul { padding-left: 2rem; }
dt { font-weight: 600; color: var(--muted); font-size: .9rem; }
dd { margin: 0 0 .75rem 0; display: flex; flex-wrap: wrap; align-items: center; gap: .5rem; }
code { font: .95rem/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; word-break: break-all; }
a { color: var(--accent); }
button, input[type=submit] { min-height: 2.75rem; padding: .5rem 1rem; border: 0; border-radius: .5rem;
       background: var(--accent); color: #fff; font: inherit; font-weight: 600; cursor: pointer; }
button[type=button] { background: transparent; color: var(--accent); border: 1px solid var(--accent);
       min-height: 2.25rem; padding: .25rem .75rem; }
input:not([type=hidden]) { min-height: 2.75rem; padding: .5rem .75rem; border: 1px solid var(--line);
       border-radius: .5rem; font: inherit; background: var(--card); color: var(--text); max-width: 100%; }
label { display: inline-flex; flex-wrap: wrap; align-items: center; gap: .5rem; margin-right: .5rem; }
form { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem; }
figure { padding: .75rem 1rem; border: 1px solid var(--line); border-radius: .5rem; }
figure svg { display: block; max-width: 12rem; height: auto; }
figcaption { margin-top: .5rem; color: var(--muted); }
#open-chat { font-size: 1.1rem; }
.demo { display: inline-block; padding: .1rem .5rem; border-radius: .25rem; background: #f59e0b; color: #111827;
        font-size: .8rem; font-weight: 700; letter-spacing: .05em; vertical-align: middle; }
@media (max-width: 30rem) { body { padding: .5rem; } h1 { font-size: 1.25rem; } }
"""


class Stylesheet(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802 - Twisted's name
        request.setHeader(b"content-type", b"text/css; charset=utf-8")
        request.setHeader(b"cache-control", b"public, max-age=86400")
        return STYLESHEET


def static_folder() -> resource.Resource:
    """``/static``: the stylesheet."""
    folder = resource.Resource()
    folder.putChild(b"sns-xmpp.css", Stylesheet())
    return folder
