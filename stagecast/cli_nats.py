"""The NATS options every service command shares: the URL (list), the credential and TLS
files, the streams' replicas and the append retry, each also read from its environment
variable (docs/configuration.md)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roomlog.connect import NatsAuth


def nats_url(args: argparse.Namespace) -> str:
    url: str | None = args.nats_url or os.environ.get("STAGECAST_NATS_URL")
    if not url:
        raise SystemExit("--nats-url (or STAGECAST_NATS_URL) is required")
    return url


def nats_auth(args: argparse.Namespace) -> NatsAuth:
    """The NATS credential and TLS files of `--nats-creds`/`--nats-tls-*` or the environment."""
    from roomlog.connect import NatsAuth

    return NatsAuth.from_env(
        creds=args.nats_creds,
        tls_ca=args.nats_tls_ca,
        tls_cert=args.nats_tls_cert,
        tls_key=args.nats_tls_key,
    )


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    """`--nats-url` and the NATS credential flags (each also read from its env var)."""
    parser.add_argument(
        "--nats-url", default=None, help="nats://[user:password@]host:port[,...] or tls://..."
    )
    parser.add_argument(
        "--nats-creds", default=None, help="NKey seed or .creds file (STAGECAST_NATS_CREDS)"
    )
    parser.add_argument(
        "--nats-tls-ca", default=None, help="CA of the server's certificate (STAGECAST_NATS_TLS_CA)"
    )
    parser.add_argument(
        "--nats-tls-cert", default=None, help="client certificate (STAGECAST_NATS_TLS_CERT)"
    )
    parser.add_argument("--nats-tls-key", default=None, help="its key (STAGECAST_NATS_TLS_KEY)")


def replicas_option(args: argparse.Namespace) -> int:
    """`--replicas` (or STAGECAST_REPLICAS, default 1): the streams' least replicas."""
    value = args.replicas if args.replicas is not None else os.environ.get("STAGECAST_REPLICAS")
    if value is None or value == "":
        return 1
    try:
        replicas = int(value)
    except ValueError:
        replicas = 0
    if not 1 <= replicas <= 5:
        raise SystemExit(f"--replicas (or STAGECAST_REPLICAS) must be 1 to 5, not {value!r}")
    return replicas


def append_retry_option(args: argparse.Namespace) -> float:
    """`--append-retry` (or STAGECAST_APPEND_RETRY): seconds an append is retried."""
    from roomlog.retry import RETRY_DEADLINE

    value = args.append_retry
    if value is None:
        value = os.environ.get("STAGECAST_APPEND_RETRY") or RETRY_DEADLINE
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 120:
        raise SystemExit(
            f"--append-retry (or STAGECAST_APPEND_RETRY) must be 0 to under 120 s, not {value!r}"
        )
    return seconds


__all__ = ["add_nats_options", "append_retry_option", "nats_auth", "nats_url", "replicas_option"]
