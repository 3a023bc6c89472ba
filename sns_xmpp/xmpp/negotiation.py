"""Stream negotiation for client streams: header checks, STARTTLS, SASL, binding.

Neither Twisted nor wokkel has the receiving side of these for clients, so it
lives here, on Twisted's ``ListenAuthenticator``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ITLSTransport
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish

from sns_xmpp.auth.checker import AuthenticationFailed, ILoginChecker, LoginResult
from sns_xmpp.auth.fast import MECHANISMS as FAST_MECHANISMS
from sns_xmpp.auth.fast import FastTokens, IssuedToken
from sns_xmpp.auth.throttle import AuthThrottle, Verdict
from sns_xmpp.jid import InvalidFormat, parse_jid
from sns_xmpp.observe.log_gate import GatedLogger
from sns_xmpp.observe.metrics import Metrics
from sns_xmpp.store.interface import StoreUnavailableError
from sns_xmpp.xmpp.c2s import ClientStream
from sns_xmpp.xmpp.hooks import SASL2Answer, SASL2Inline
from sns_xmpp.xmpp.sasl import (
    NS_SASL,
    Attempt,
    Challenge,
    HTAttempt,
    Success,
    decode_payload,
    encode_payload,
    start_attempt,
)
from sns_xmpp.xmpp.sasl2 import (
    NS_BIND2,
    NS_SASL2,
    Authenticate,
    authentication_feature,
    challenge_xml,
    channel_binding,
    channel_binding_data,
    channel_binding_feature,
    channel_binding_types,
    channel_bindings,
    failure_element,
    parse_authenticate,
    resource_for,
    success_element,
    success_xml,
    tls_connection,
    with_plus,
)
from sns_xmpp.xmpp.serialization import escape_text
from sns_xmpp.xmpp.sessions import SessionManager
from sns_xmpp.xmpp.stanzas import NS_CLIENT, add_element, append_child, error_reply, iq_result_text

log = GatedLogger()

NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
# Mechanisms that send the secret itself: never offered on an unencrypted stream by default.
CLEARTEXT_MECHANISMS = ("PLAIN", "OAUTHBEARER")


@dataclass
class C2SSettings:
    """What every client stream of one listener shares."""

    domains: Sequence[str]
    checker: ILoginChecker
    sessions: SessionManager
    tls_context: IOpenSSLServerConnectionCreator | None
    require_tls: bool = True
    allow_plain_without_tls: bool = False
    max_auth_failures: int = 3
    metrics: Metrics = field(default_factory=Metrics)
    throttle: AuthThrottle | None = None
    sasl2: bool = False  # offer SASL2 and Bind2 (XEP-0388, XEP-0386) after TLS
    fast: FastTokens | None = None  # FAST tokens (XEP-0484), with SASL2
    # Serialised <stream:features/>, by what they depend on: every stream asks, most alike.
    features_cache: dict[tuple[object, ...], str] = field(default_factory=dict, repr=False, compare=False)


class ClientNegotiator(xmlstream.ListenAuthenticator):
    """Drives one client stream from its first header to a bound resource."""

    xmlstream: ClientStream

    def __init__(self, settings: C2SSettings) -> None:
        self.settings = settings
        self.domain: str | None = None
        self.claimed: str | None = None  # the stream header's 'from': who the client says it is
        self.login: LoginResult | None = None
        self.attempt: Attempt | None = None
        self.version2 = False  # the exchange under way is SASL2's (its elements, no restart)
        self.request: Authenticate | None = None  # what the SASL2 <authenticate/> asked for
        self.failures = 0
        self.auth_started = 0.0
        self.answering = False  # a slowed failure answer is pending
        self.binding = False
        self._tls_for: object = None  # the transport _tls_connection was found on
        self._tls_connection: SSL.Connection | None = None

    def connectionMade(self) -> None:
        self.xmlstream.element_handler = self.element_received

    # -- stream header -------------------------------------------------

    def streamStarted(self, rootElement: domish.Element) -> None:
        stream = self.xmlstream
        stream.sid = secrets.token_hex(8)
        if rootElement.uri != xmlstream.NS_STREAMS or rootElement.name != "stream":
            stream.fail(StreamError("invalid-namespace"))
            return
        if rootElement.defaultUri != NS_CLIENT:
            stream.fail(StreamError("invalid-namespace"))
            return
        stream.prefixes = {xmlstream.NS_STREAMS: "stream"}
        to = rootElement.getAttribute("to")
        host = self._hosted(to) if to else self.settings.domains[0]
        if host is None or (self.domain is not None and host != self.domain):
            stream.fail(StreamError("host-unknown"))
            return
        self.domain = host
        self.claimed = rootElement.getAttribute("from")
        stream.thisEntity = parse_jid(host)
        if not _version_at_least_1(rootElement.getAttribute("version")):
            stream.fail(StreamError("unsupported-version"))
            return
        stream.version = (1, 0)
        stream.sendHeader()
        stream.send(self._features_xml())

    def _hosted(self, to: str) -> str | None:
        try:
            parsed = parse_jid(to)
        except InvalidFormat:
            return None
        if parsed.user is None and parsed.resource is None and parsed.host in self.settings.domains:
            return parsed.host
        return None

    def _features_xml(self) -> str:
        stream = self.xmlstream
        assert self.domain is not None
        hooks = self.settings.sessions.hooks
        if self.login is not None:
            extras = tuple(make(self.domain) for make in hooks.features_after_auth)
            key: tuple[object, ...] = ("bound", extras)
        else:
            extras = tuple(make(self.domain) for make in hooks.features_before_auth)
            key = (self.domain, stream.secure, tuple(self._mechanisms()), self._cb_types(), self._fast_mechanisms(),
                   extras)
        cache = self.settings.features_cache
        xml = cache.get(key)
        if xml is None:
            if len(cache) > 256:  # only reloads of the sites make new keys
                cache.clear()
            xml = cache[key] = stream.serialize(self._features())
        return xml

    def _features(self) -> domish.Element:
        features = domish.Element((xmlstream.NS_STREAMS, "features"))
        stream = self.xmlstream
        hooks = self.settings.sessions.hooks
        assert self.domain is not None
        if self.login is not None:
            add_element(features, (NS_BIND, "bind"))
            _add_features(features, hooks.features_after_auth, self.domain)
            return features
        if not stream.secure and self.settings.tls_context is not None:
            starttls = add_element(features, (NS_TLS, "starttls"))
            if self.settings.require_tls:
                add_element(starttls, "required")
        mechanisms = self._mechanisms()
        if mechanisms:
            element = add_element(features, (NS_SASL, "mechanisms"))
            for name in mechanisms:
                add_element(element, "mechanism", content=name)
            if self._sasl2_offered():  # XEP-0388: the same mechanisms, after TLS only
                offers = [inline.offer for inline in hooks.sasl2_inline.values()]
                append_child(features, authentication_feature(mechanisms, self._fast_mechanisms(), list(hooks.inline),
                                                              offers))
            cb_types = self._cb_types()
            if cb_types:
                append_child(features, channel_binding_feature(cb_types))
        _add_features(features, hooks.features_before_auth, self.domain)
        return features

    def _mechanisms(self) -> list[str]:
        secure = self.xmlstream.secure
        if not secure and self.settings.require_tls:
            return []
        assert self.domain is not None
        mechanisms = [
            name for name in self.settings.checker.mechanisms_for(self.claimed, self.domain)
            if name not in CLEARTEXT_MECHANISMS or secure or self.settings.allow_plain_without_tls
        ]
        return with_plus(mechanisms, self._cb_types()) if secure else mechanisms

    def _cb_types(self) -> tuple[str, ...]:
        """The channel binding types of this stream's TLS (XEP-0440), for SCRAM's -PLUS."""
        return channel_binding_types(self._tls()) if self.xmlstream.secure else ()

    def _scram_attempt(self, mechanism: str) -> Attempt:
        """The attempt for *mechanism*; a SCRAM one knows the stream's channel binding."""
        if not mechanism.startswith("SCRAM-"):
            return start_attempt(mechanism, self.settings.checker, self.domain or "")
        connection = self._tls()
        return start_attempt(mechanism, self.settings.checker, self.domain or "",
                             lambda cb_type: channel_binding_data(connection, cb_type),
                             plus_offered=any(name.endswith("-PLUS") for name in self._mechanisms()))

    def _fast_mechanisms(self) -> tuple[str, ...]:
        """FAST's HT mechanisms on this stream: the channel-bound ones where its TLS allows."""
        if self.settings.fast is None or not self._sasl2_offered():
            return ()
        return channel_bindings(self._tls())

    # -- elements before the session -----------------------------------

    def element_received(self, element: domish.Element) -> None:
        if element.uri == NS_TLS and element.name == "starttls":
            self._starttls()
        elif element.uri == NS_SASL and self.login is None:
            self.version2 = False
            self._sasl(element)
        elif element.uri == NS_SASL2 and self.login is None and self.settings.sasl2:
            self.version2 = True
            self._sasl2(element)
        elif element.name == "iq" and element.uri == NS_CLIENT and self.login is not None:
            self._iq_before_session(element)
        elif self.login is not None and not self.binding and (
                before_bind := self.settings.sessions.hooks.before_bind.get((element.uri or "", element.name))):
            before_bind(self.xmlstream, self.login, element)  # XEP-0198's <resume/>
        else:
            self.xmlstream.fail(StreamError("not-authorized"))

    def _starttls(self) -> None:
        stream = self.xmlstream
        if stream.secure or self.login is not None or self.settings.tls_context is None:
            stream.send(domish.Element((NS_TLS, "failure")))
            stream.close()
            return
        stream.send(domish.Element((NS_TLS, "proceed")))
        ITLSTransport(stream.transport).startTLS(self.settings.tls_context)
        stream.secure = True
        stream.restart()

    def _sasl(self, element: domish.Element) -> None:
        self._sasl_element(element, "auth", self._auth, "SASL")

    def _sasl2(self, element: domish.Element) -> None:
        self._sasl_element(element, "authenticate", self._authenticate, "SASL2")

    def _sasl_element(self, element: domish.Element, opening: str, start: Callable[[domish.Element], None],
                      what: str) -> None:
        """SASL1's and SASL2's elements alike: the opening one, a response, an abort."""
        if element.name == opening:
            start(element)
        elif element.name == "response" and self.attempt is not None:
            self._step(self.attempt.respond, _response(element))
        elif element.name == "abort":
            self.attempt = None
            self._failure("aborted", None)
        else:
            self.attempt = None
            self._failure("malformed-request", f"unexpected {what} element")

    def _tls(self) -> SSL.Connection | None:
        """The stream's TLS connection, looked up once the stream is secure (after STARTTLS, or
        from the start with direct TLS)."""
        if not self.xmlstream.secure:
            return None
        transport = self.xmlstream.transport
        if self._tls_for is not transport:
            self._tls_for, self._tls_connection = transport, tls_connection(transport)
        return self._tls_connection

    def _sasl2_offered(self) -> bool:
        """SASL2 after TLS; without it only where PLAIN is allowed without TLS too (tests, the
        bench): a token then travels as openly as a password would."""
        return self.settings.sasl2 and (self.xmlstream.secure or self.settings.allow_plain_without_tls)

    def _authenticate(self, element: domish.Element) -> None:
        """XEP-0388's <authenticate/>: the same mechanisms and checks as SASL1's <auth/>, and FAST's."""
        if not self._sasl2_offered():
            self._failure("encryption-required", "STARTTLS first")
            return
        try:
            request = parse_authenticate(element)
        except AuthenticationFailed as refusal:
            self._failure(refusal.condition, refusal.text)
            return
        assert self.domain is not None
        fast = self.settings.fast
        attempt: Attempt
        cb_data = None
        if request.mechanism in FAST_MECHANISMS and fast is not None:
            cb_data = channel_binding(self._tls(), request.mechanism)
        if fast is not None and cb_data is not None:
            if not request.fast:  # XEP-0484 3.3: a token's login carries <fast/> (its count optional)
                self._failure("malformed-request", "a FAST login carries <fast xmlns='urn:xmpp:fast:0'/>")
                return
            attempt = HTAttempt(request.mechanism, fast, self.settings.checker, self.domain, request.agent,
                                request.count, request.invalidate, cb_data)
        elif request.mechanism in self._mechanisms():
            attempt = self._scram_attempt(request.mechanism)
        else:
            self._failure("invalid-mechanism", None)
            return
        if self.answering:
            return  # as for <auth/>: no faster answer for a client that does not wait
        self.auth_started = self.xmlstream.clock.seconds()
        self.request = request
        self.attempt = attempt
        self._step(attempt.start, lambda: request.initial)

    def _auth(self, element: domish.Element) -> None:
        if not self.xmlstream.secure and self.settings.require_tls:
            self._failure("encryption-required", "STARTTLS first")
            return
        mechanism = element.getAttribute("mechanism")
        if mechanism not in self._mechanisms():
            self._failure("invalid-mechanism", None)
            return
        assert self.domain is not None
        if self.answering:
            return  # a client that does not wait for the (slowed) answer gets no faster one
        self.auth_started = self.xmlstream.clock.seconds()
        # No address is refused as a whole (carrier-grade NAT): the throttle answers per
        # (address, account) once the attempt names its account (auth/throttle.py).
        attempt = self.attempt = self._scram_attempt(mechanism)
        self._step(attempt.start, _payload(element))

    def _step(self, method: Callable[[bytes], Deferred[Any]] | Callable[[bytes | None], Deferred[Any]],
              payload: Callable[[], bytes | None]) -> None:
        attempt = self.attempt
        try:
            d = method(payload())  # type: ignore[arg-type]
        except AuthenticationFailed as failure:
            self.attempt = None
            self._refuse(attempt, failure)
            return

        def answered(step: Challenge | Success) -> None:
            if self.attempt is not attempt or self.xmlstream.closed:
                return
            if isinstance(step, Challenge):
                if self.version2:
                    self.xmlstream.send(challenge_xml(step.data))
                    return
                challenge = domish.Element((NS_SASL, "challenge"))
                challenge.addContent(encode_payload(step.data))
                self.xmlstream.send(challenge)
                return
            self.attempt = None
            throttle = self.settings.throttle
            # From an address with no failed pair there is nothing to block or clear, and the
            # account's key (a site's parse of a social name) need not be worked out.
            address = self._address() if throttle is not None else ""
            account = _account_key(attempt) if throttle is not None and throttle.has_pairs(address) else None
            if throttle is not None and account is not None:
                admitted = throttle.admit(address, account)
                if isinstance(admitted, Deferred):  # a cluster's shared records are read
                    self.answering = True  # no second attempt meanwhile, as while a failure waits
                    admitted.addCallback(self._admitted, step).addErrback(
                        lambda reason: log.failure("sasl.admit_failed", reason))
                    return
                self._admitted(admitted, step)
                return
            self._succeeded(step)

        def refused(reason: Failure) -> None:
            if self.attempt is not attempt or self.xmlstream.closed:
                return
            self.attempt = None
            if isinstance(reason.value, AuthenticationFailed):
                self._count(reason.value.site, reason.value.reason)
                self._refuse(attempt, reason.value)
            else:
                if reason.check(StoreUnavailableError):
                    log.warn("sasl.store_unavailable reason={reason}", reason=str(reason.value))
                else:
                    log.failure("sasl.checker_failed", reason)
                self._count(None, "temporary-auth-failure")
                self._failure("temporary-auth-failure", "try again later")

        d.addCallbacks(answered, refused)

    def _admitted(self, admitted: bool, step: Success) -> None:
        self.answering = False
        if self.xmlstream.closed:
            return
        if not admitted:
            # Right or wrong, a blocked pair gets the same answer (see _refuse).
            self._count(step.result.site, "throttled")
            self._failure(*THROTTLED)
            return
        self._succeeded(step)

    def _succeeded(self, step: Success) -> None:
        if self.version2:
            self._succeeded2(step)
            return
        stream = self.xmlstream
        self.login = step.result
        self._count(step.result.site, "ok")
        log.info("c2s.authenticated jid={jid} method={method} site={site} peer={peer}",
                 jid=step.result.jid, method=step.result.method, site=step.result.site, peer=stream.peer)
        if step.additional_data is None:
            stream.send(_SUCCESS)
        else:
            success = domish.Element((NS_SASL, "success"))
            success.addContent(encode_payload(step.additional_data))
            stream.send(success)
        stream.otherEntity = parse_jid(step.result.jid)
        stream.restart()

    def _succeeded2(self, step: Success) -> None:
        """SASL2's success: a FAST token if asked for (or rotated), Bind2 if asked for, then one
        <success/> with both; no stream restart (XEP-0388). Without Bind2 the features after
        authentication follow, for RFC 6120 binding."""
        stream, request, result = self.xmlstream, self.request, step.result
        assert request is not None
        self.login = result
        self._count(result.site, "ok")
        log.info("c2s.authenticated jid={jid} method={method} site={site} peer={peer} sasl=2",
                 jid=result.jid, method=result.method, site=result.site, peer=stream.peer)
        stream.otherEntity = parse_jid(result.jid)
        fast = self.settings.fast
        # The token to hand out: the rotated one (step.token), or a new one when asked for, once
        # the store has it. Without a store write the rest runs at once, without a Deferred.
        token: Deferred[IssuedToken | None] | None = None
        if (step.token is None and fast is not None and request.agent and not request.fast
                and request.request_token in FAST_MECHANISMS):
            token = fast.issue(result.jid, request.agent, request.request_token, result.confirmed_until)

            def no_token(reason: Failure) -> None:
                log.failure("fast.issue_failed", reason)  # the login stands; the client asks again next time
                return None

            token.addErrback(no_token)
        if request.extensions and self._inline_sasl2(step, token):
            return
        if request.bind is None:
            if token is None:
                self._send_success(result.jid, step.additional_data, None, step.token)
            else:
                token.addCallback(lambda issued: self._send_success(result.jid, step.additional_data, None, issued))
            return
        self.binding = True
        if token is None:
            self._bind2(step, step.token)
        else:
            token.addCallback(lambda issued: self._bind2(step, issued))

    def _bind2(self, step: Success, issued: IssuedToken | None,
               answers: Sequence[domish.Element] = ()) -> Deferred[None]:
        """Bind2 (XEP-0386) as the request asks, then one <success/> with <bound/>, the token
        and the SASL2 inline features' *answers*."""
        request, result = self.request, step.result
        assert request is not None and request.bind is not None
        bind = request.bind
        d = self.settings.sessions.bind(self.xmlstream, result, resource_for(bind, result.jid, request.agent))
        return d.addCallbacks(lambda full: self._send_success(full, step.additional_data, self._inline(full, bind),
                                                              issued, answers),
                              self._bind2_refused)

    def _inline_sasl2(self, step: Success, token: Deferred[IssuedToken | None] | None) -> bool:
        """SASL2's inline features (XEP-0388), XEP-0198's <resume/> first among them as it asks:
        each answers, at once or later (a cluster asks the node holding the session), and only
        then is <success/> written, with the answers in it. A resumed session is the stream's
        now and Bind2's request is ignored; otherwise Bind2 (or RFC 6120 binding) goes on as
        without them. False when no child of the <authenticate/> is a registered feature's."""
        request, stream = self.request, self.xmlstream
        assert request is not None
        table = self.settings.sessions.hooks.sasl2_inline
        asked = [(inline, child) for child in request.extensions
                 if (inline := table.get((child.uri or "", child.name))) is not None]
        if not asked:
            return False
        self.binding = True  # nothing binds, and no <resume/> runs, before the answer
        answers: list[SASL2Answer] = []

        def answer(_: object, inline: SASL2Inline, child: domish.Element) -> Deferred[None] | None:
            if stream.closed or any(given.resumed for given in answers):
                return None  # one session per stream: the first resumption holds
            try:
                outcome = inline.handle(stream, step.result, child)
            except Exception:
                log.failure("c2s.sasl2_inline_failed feature={feature}", feature=inline.feature)
                return None
            if isinstance(outcome, Deferred):
                return outcome.addCallback(answers.append)
            answers.append(outcome)
            return None

        # The token first: a resumption attaches its session to the stream, and from then on
        # nothing may wait before <success/> is written, or a stanza for the session would
        # reach the client ahead of it.
        issued: list[IssuedToken | None] = [step.token]

        def token_issued(given: IssuedToken | None) -> None:
            issued[0] = given

        done: Deferred[None] = token.addCallback(token_issued) if token is not None else succeed(None)
        for inline, child in asked:
            done.addCallback(answer, inline, child)
        done.addCallback(lambda _: self._answer_inline(step, answers, issued[0]))
        done.addErrback(lambda reason: log.failure("c2s.sasl2_inline_failed", reason))
        return True

    def _answer_inline(self, step: Success, answers: list[SASL2Answer], issued: IssuedToken | None) -> None:
        request, stream, result = self.request, self.xmlstream, step.result
        assert request is not None
        elements = [given.element for given in answers]
        resumed = next((given for given in answers if given.resumed), None)
        if stream.closed:
            return  # (a resumption answered for a stream gone meanwhile left its session detached)
        if resumed is not None:
            assert resumed.resumed is not None
            stream.send(success_element(resumed.resumed, step.additional_data, None, issued, elements))
            if resumed.then is not None:
                resumed.then()
            return
        if request.bind is None:
            self.binding = False  # the client binds as RFC 6120 has it
            self._send_success(result.jid, step.additional_data, None, issued, elements)
            return
        self._bind2(step, issued, elements)

    def _inline(self, full_jid: str, bind: domish.Element) -> list[domish.Element]:
        """Bind2's inline features (XEP-0386): each child of <bind/> in a namespace a feature
        registered goes to its action; the answers go into <bound/>."""
        sessions = self.settings.sessions
        session = sessions.session(parse_jid(full_jid))
        answers: list[domish.Element] = []
        if session is None:
            return answers
        for child in bind.elements():
            action = sessions.hooks.inline.get(child.uri or "") if child.uri != NS_BIND2 else None
            if action is None:
                continue
            try:
                answer = action.act(session, child)
            except Exception:
                log.failure("c2s.inline_failed feature={feature}", feature=action.feature)
                continue
            if answer is not None:
                answers.append(answer)
        return answers

    def _send_success(self, identifier: str, additional_data: bytes | None, bound: list[domish.Element] | None,
                      token: IssuedToken | None, answers: Sequence[domish.Element] = ()) -> None:
        stream = self.xmlstream
        if stream.closed:
            return
        text = success_xml(identifier, additional_data, bound, token) if not answers else None
        stream.send(text if text is not None else success_element(identifier, additional_data, bound, token, answers))
        if bound is None:
            stream.send(self._features_xml())  # the features after authentication, for RFC 6120 bind

    def _bind2_refused(self, reason: Failure) -> None:
        self.binding = False
        self.login = None  # no session: the client may authenticate again
        condition = getattr(reason.value, "condition", None)
        if condition is None:
            log.failure("c2s.bind_failed", reason)
            condition = "internal-server-error"
        if not self.xmlstream.closed:
            self._failure("temporary-auth-failure", f"binding failed: {condition}")

    def _count(self, site: str | None, result: str) -> None:
        self.settings.metrics.login(site, result, self.xmlstream.clock.seconds() - self.auth_started)

    def _address(self) -> str:
        peer = self.xmlstream.transport.getPeer() if self.xmlstream.transport else None
        return "address:" + str(getattr(peer, "host", "?"))

    def _refuse(self, attempt: Attempt | None, refusal: AuthenticationFailed) -> None:
        """A failed attempt: counted against its (address, account) pair, answered after the
        throttle's delay; on a blocked pair with the same answer as the right password gets.
        A refusal that is no guess (expired credentials, ...) is answered at once, uncounted."""
        condition, text = refusal.condition, refusal.text
        throttle = self.settings.throttle
        if throttle is None or not refusal.counts_toward_blocking:
            self._failure(condition, text)
            return
        verdict = throttle.refused(self._address(), _account_key(attempt))
        if isinstance(verdict, Deferred):  # a cluster's shared records count it
            self.answering = True
            verdict.addCallback(self._answer_refusal, condition, text).addErrback(
                lambda reason: log.failure("sasl.refusal_failed", reason))
            return
        self._answer_refusal(verdict, condition, text)

    def _answer_refusal(self, verdict: Verdict, condition: str, text: str | None) -> None:
        if verdict.blocked:
            condition, text = THROTTLED
        if verdict.delay <= 0:
            self.answering = False
            if not self.xmlstream.closed:
                self._failure(condition, text)
            return
        self.answering = True

        def answer() -> None:
            self.answering = False
            if not self.xmlstream.closed:
                self._failure(condition, text)

        self.xmlstream.clock.callLater(verdict.delay, answer)

    def _failure(self, condition: str, text: str | None) -> None:
        stream = self.xmlstream
        self.failures += 1
        log.info("c2s.auth_failed condition={condition} reason={reason} peer={peer}",
                 condition=condition, reason=text, peer=stream.peer)
        if self.version2:
            stream.send(failure_element(condition, text))
        else:
            failure = domish.Element((NS_SASL, "failure"))
            add_element(failure, condition)
            if text:
                add_element(failure, "text", content=text)
            stream.send(failure)
        if self.failures >= self.settings.max_auth_failures:
            stream.close()

    # -- resource binding -----------------------------------------------

    def _iq_before_session(self, iq: domish.Element) -> None:
        stream = self.xmlstream
        bind = next(iq.elements(NS_BIND, "bind"), None)
        if iq.getAttribute("type") != "set" or bind is None or self.binding:
            stream.send(_reply_from_server(iq, "not-authorized"))
            return
        requested = str(next(bind.elements(NS_BIND, "resource"), "") or "").strip()
        self.binding = True
        assert self.login is not None
        d = self.settings.sessions.bind(stream, self.login, requested)

        def bound(full_jid: str) -> None:
            stream.send(bind_result_text(iq.getAttribute("id"), full_jid))

        def refused(reason: Failure) -> None:
            self.binding = False
            condition = getattr(reason.value, "condition", None)
            if condition is None:
                log.failure("c2s.bind_failed", reason)
                condition = "internal-server-error"
            stream.send(_reply_from_server(iq, condition))

        d.addCallbacks(bound, refused)


def _add_features(features: domish.Element, makers: Sequence[Callable[[str], domish.Element | None]],
                  domain: str) -> None:
    """The feature modules' children of <stream:features/> (xmpp/hooks.py)."""
    for make in makers:
        extra = make(domain)
        if extra is not None:
            append_child(features, extra)


def bind_result_text(identifier: str | None, full_jid: str) -> str:
    """The result of a resource binding IQ (RFC 6120 7.6.1) as the stream writes it, written
    directly: every login gets one."""
    jid = f"<jid>{escape_text(full_jid)}</jid>" if full_jid else "<jid/>"
    return iq_result_text(identifier, f"<bind xmlns='{NS_BIND}'>{jid}</bind>")


THROTTLED = ("temporary-auth-failure", "too many failed attempts; try again later")
# What every PLAIN login answers, serialised once.
_SUCCESS = f"<success xmlns='{NS_SASL}'/>"


def _account_key(attempt: Attempt | None) -> str | None:
    return attempt.account_key if attempt is not None else None


def _payload(element: domish.Element) -> Callable[[], bytes | None]:
    """The SASL data of an <auth/>: None when there is no initial response."""
    return lambda: decode_payload(str(element) if element.children else None)


def _response(element: domish.Element) -> Callable[[], bytes]:
    """The SASL data of a <response/>: an empty element is empty data (RFC 6120 6.4.2 asks for '=',
    but a <response/> always carries a response, so there is nothing else it can mean)."""
    payload = _payload(element)
    return lambda: payload() or b""


def _reply_from_server(iq: domish.Element, condition: str) -> domish.Element:
    reply = error_reply(iq, condition)
    reply.attributes.pop("to", None)
    reply.attributes.pop("from", None)
    return reply


def _version_at_least_1(version: str | None) -> bool:
    try:
        major = int((version or "0.0").split(".")[0])
    except ValueError:
        return False
    return major >= 1
