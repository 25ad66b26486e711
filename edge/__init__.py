"""The edge: WebSocket signaling, the HTTP server API, health and metrics.

`edge.config.EdgeConfig` says how to run one; `edge.app.create_app(config)` is the ASGI
app; `edge.main.running_edge(config)` runs it in-process and `edge.main.serve(config)` as a
process. Submodules are imported on demand, so importing `edge` costs nothing.
"""
