"""The room log on JetStream, and the one NATS connect function every service uses.

- `log`: `RoomLog`, the streams' configuration and appends;
- `reader`: `LogReader`, the ordered pull-consumer reader (and `LogRecord`);
- `appends`: the ack window pipelined appends go through;
- `fastbatch`: `FastBatcher`, the public events of a flush as one JetStream fast batch;
- `retry`: which append failures are retried across a leader election, for how long, and
  the one-line-per-outage log;
- `buckets`: `ensure_bucket`, KV buckets under the same replica rule as the streams;
- `seam`: `RoomLogPort` and `LogReaderPort`, what the services use of the log, and
  `CoreLink`, what a shell uses of core NATS;
- `memory`: `MemoryRoomLog`, the in-process twin of `RoomLog` for unit tests;
- `jetstream`: every nats-py private name, behind one seam;
- `connect`: `connect`, with the `NatsLink` callbacks of `natslink`.

Imports only `schemas` and nats-py; never a service or the SDK.
"""
