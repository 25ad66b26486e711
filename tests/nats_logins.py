"""Role logins for tests that run the services against a nats-server requiring credentials.

`Logins.fresh()` makes a random password per role; `config()` is the server's
authorization block from `roomlog.roles` (what `stagecast up` and the docs use), `url(server,
role)` the role's ``nats://role:password@host:port``.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from processes.natsserver import NatsServer
from roomlog.roles import Role, RoleUser, authorization_config


@dataclasses.dataclass(frozen=True)
class Logins:
    passwords: dict[Role, str]

    @classmethod
    def fresh(cls) -> Logins:
        return cls({role: secrets.token_urlsafe(18) for role in Role})

    def config(self) -> str:
        """The nats-server ``authorization`` block for every role."""
        return authorization_config(
            RoleUser(role, user=role.value, password=password)
            for role, password in self.passwords.items()
        )

    def probe_options(self) -> dict[str, Any]:
        """`NatsServer`'s readiness probe logs in as admin."""
        return {"user": Role.ADMIN.value, "password": self.passwords[Role.ADMIN]}

    def url(self, server: NatsServer, role: Role, password: str | None = None) -> str:
        """`server`'s URL with `role`'s user and password (or `password` instead)."""
        secret = self.passwords[role] if password is None else password
        return server.url.replace("nats://", f"nats://{role.value}:{secret}@", 1)

    def server(self, store_dir: Any) -> NatsServer:
        """A (not yet started) nats-server in `store_dir` requiring these logins."""
        return NatsServer(store_dir, config=self.config(), probe_options=self.probe_options())


__all__ = ["Logins"]
