"""Process helpers every part shares: the private nats-server, GC tuning, child processes.

Imports only the standard library and nats-py; never a service or the SDK.
"""
