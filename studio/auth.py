"""Who may open the studio: a password whenever it is reachable from other machines.

Bound to localhost the studio runs open (only this machine can reach it). Bound to any other
address, or shared through a gradio share link, it requires a password: `STUDIO_PASSWORD` from
the environment (at least `MIN_PASSWORD_LENGTH` characters), else a random one generated at
start-up and written to a file only its owner can read. The user name is always `studio`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pipeline.atomic import replacing

USER = "studio"
PASSWORD_ENV = "STUDIO_PASSWORD"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
MIN_PASSWORD_LENGTH = 12
PASSWORD_FILE = "studio-password.txt"


class PasswordError(ValueError):
    """The configured password cannot protect this bind (the message says what to do)."""


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
    public = needs_password(host, share)
    if password:
        if public and len(password) < MIN_PASSWORD_LENGTH:
            where = "through a gradio share link" if share else f"bound to {host}"
            raise PasswordError(
                f"{PASSWORD_ENV} is too short ({len(password)} characters): {where}, the studio is "
                f"reachable from other machines and needs at least {MIN_PASSWORD_LENGTH}. Set a longer "
                f"one, or unset it to have one generated.")
        # An explicitly set password protects even a local bind: the operator asked for it.
        return Credentials(USER, password, generated=False)
    if not public:
        return None
    return Credentials(USER, secrets.token_urlsafe(12), generated=True)


def password_file(workspace: Path) -> Path:
    return Path(workspace) / PASSWORD_FILE


def save_password(password: str, workspace: Path) -> Path:
    """Write a generated password to the workspace, readable by its owner only (mode 0600).

    Launchers often keep stdout in world-readable logs, so the file, not stdout, is where the
    password lives.
    """
    path = password_file(workspace)
    with replacing(path) as partial:
        # created 0600, never readable by others, not even between the write and the rename
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            os.write(fd, (password + "\n").encode())
        finally:
            os.close(fd)
    return path


def forget_password(workspace: Path) -> None:
    """Remove a password file from an earlier start: it no longer opens anything."""
    password_file(workspace).unlink(missing_ok=True)
