"""The webhook sender: public events POSTed, signed, to HTTP endpoints, at least once.

Pure cores: `signing` (Standard Webhooks and LiveKit signatures), `endpoints` (an endpoint's
configuration and filter), `delivery` (what a POST's answer means: retry when, give up,
disable) and `rooms` (per-room ordered queues). Shells: `sender` (HTTP) and `main` (the
NATS consumer, one durable per endpoint).
"""
