"""JetStream KV buckets with the room log's replica rule: created with `replicas`, never lowered.

A bucket is a stream (``KV_<bucket>``). `ensure_bucket` creates it from a `KeyValueConfig`,
or, when it exists, raises its replicas to the config's (a stream update, logged; the
keys are copied to the new peers) and leaves everything else as it is: an existing bucket's
history, TTL and limits are the operator's. A bucket with more replicas keeps them.
"""

from __future__ import annotations

import dataclasses
import logging

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from roomlog.errors import StreamNotEnsured

log = logging.getLogger("stagecast.roomlog")

_STREAM_EXISTS = 10058  # "stream name already in use with a different configuration"


def bucket_stream(bucket: str) -> str:
    """The stream holding a KV bucket."""
    return f"KV_{bucket}"


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The bucket `config.bucket`, created or raised to `config.replicas` replicas.

    Raises `StreamNotEnsured` when JetStream refuses (more replicas than it has servers).
    """
    stream = bucket_stream(config.bucket)
    wanted = config.replicas
    try:
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            try:
                bucket = await js.create_key_value(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_EXISTS:  # else another process just made it
                    raise
            else:
                log.info("created bucket %s with %d replica(s)", config.bucket, wanted)
                return bucket
            info = await js.stream_info(stream)
        current = info.config.num_replicas or 1
        name = config.bucket
        if current < wanted:
            log.warning("bucket %s: raising replicas from %d to %d", name, current, wanted)
            await js.update_stream(dataclasses.replace(info.config, num_replicas=wanted))
        elif current > wanted:
            log.info("bucket %s keeps its %d replicas (asked for %d)", name, current, wanted)
    except nats.js.errors.APIError as exc:
        raise StreamNotEnsured(stream, wanted, str(exc)) from exc
    return await js.key_value(config.bucket)


__all__ = ["bucket_stream", "ensure_bucket"]
