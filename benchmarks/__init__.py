"""The sns-xmpp benchmark: ``scripts/bench`` runs `benchmarks.run`, which drives `benchmarks.loadgen`."""
