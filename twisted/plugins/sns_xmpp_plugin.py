from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

snsXmpp = ServiceMaker("sns-xmpp", "sns_xmpp.service", "XMPP server with social-site login", "sns-xmpp")

# twistd --reactor=sns-epoll: Twisted's epoll reactor without its per-event log context
# (sns_xmpp/xmpp/reactor.py); scripts/run and the benchmark use it.
snsEpoll = Reactor("sns-epoll", "sns_xmpp.xmpp.reactor", "epoll reactor without the per-event log context (Linux)")
