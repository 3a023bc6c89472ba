"""The reactor this server runs on, as one type: the Twisted interfaces it uses together.

A reactor provides many interfaces, and a function that uses several of them (listening, timers,
the thread pool) cannot name it by one. `IServerReactor` extends the ones the server uses; every
Twisted reactor provides them all, and `service.makeService` casts the global reactor to it once
(Synapse's ``ISynapseReactor`` does the same). Functions that need less take the one interface
they use (`IReactorTime` for a clock).
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)


class IServerReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorSSL, IReactorFDSet, IReactorThreads,
                     IReactorFromThreads, IReactorPluggableNameResolver):
    """The reactor the server runs on (see the module's doc)."""
