"""Who may open the studio: a password whenever it is reachable from other machines.

Bound to localhost the studio runs open (only this machine can reach it). Bound to any other
address, or shared through a gradio share link, it requires a password: `STUDIO_PASSWORD` from
the environment, else a random one generated at start-up and printed once. The user name is
always `studio`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Mapping

USER = "studio"
PASSWORD_ENV = "STUDIO_PASSWORD"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    generated: bool  # True when made up at start-up (so it must be shown to the operator)

    def as_gradio_auth(self) -> list[tuple[str, str]]:
        return [(self.user, self.password)]


def needs_password(host: str, share: bool = False) -> bool:
    """Anything but a loopback bind (or any share link) is reachable by others."""
    return share or host.strip().lower() not in LOCAL_HOSTS


def resolve_credentials(host: str, share: bool = False,
                        env: Mapping[str, str] | None = None) -> Credentials | None:
    """The credentials to require for this bind, or None when the studio may run open."""
    env = os.environ if env is None else env
    password = (env.get(PASSWORD_ENV) or "").strip()
    if password:
        # An explicitly set password protects even a local bind: the operator asked for it.
        return Credentials(USER, password, generated=False)
    if not needs_password(host, share):
        return None
    return Credentials(USER, secrets.token_urlsafe(12), generated=True)
