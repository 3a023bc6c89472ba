from twisted.application.service import ServiceMaker

snsXmpp = ServiceMaker("sns-xmpp", "sns_xmpp.service", "XMPP server with social-site login", "sns-xmpp")
