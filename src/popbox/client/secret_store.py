"""Where `popbox fetch` keeps secrets: the system keyring, else a private file.

Passwords (`password_keyring = true`, set by `popbox fetch password set ACCOUNT`) and
OAuth2 grants (`popbox fetch oauth login ACCOUNT`) are stored under the service name
"popbox" with the user names `password:ACCOUNT` and `oauth:ACCOUNT`, through the `keyring`
library: the Secret Service (GNOME Keyring, KWallet), the macOS Keychain, the Windows
Credential Locker, or whatever `PYTHON_KEYRING_BACKEND` names. Where no keyring exists (a
server with no desktop session: keyring's `fail` backend), the secrets go to
`secrets.json` in popbox's state folder, created 0600 in a 0700 folder and replaced
atomically; one readable by others is refused.

`keyring` blocks (D-Bus, a file), so the async helpers run it in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from pathlib import Path

import keyring
import keyring.backend
import keyring.errors
from keyring.backends import chainer, fail

from popbox.fsutil import write_atomic

SERVICE = "popbox"


class SecretStoreError(Exception):
    """The keyring or the secrets file failed (the message never holds a secret)."""


def state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "popbox"


def _usable(backend: keyring.backend.KeyringBackend) -> bool:
    if isinstance(backend, fail.Keyring):
        return False
    return not (isinstance(backend, chainer.ChainerBackend) and not backend.backends)


class SecretStore:
    """`get`, `set`, `delete` of one secret by name (e.g. `password:work`)."""

    def __init__(self, folder: Path | None = None,
                 backend: keyring.backend.KeyringBackend | None = None) -> None:
        self.file = (folder or state_home()) / "secrets.json"
        found = backend or keyring.get_keyring()
        self.backend: keyring.backend.KeyringBackend | None = found if _usable(found) else None

    def __repr__(self) -> str:
        where = type(self.backend).__name__ if self.backend else str(self.file)
        return f"SecretStore({where})"

    @property
    def where(self) -> str:
        """For messages: which keyring, or which file."""
        if self.backend is not None:
            return f"the keyring ({type(self.backend).__module__}.{type(self.backend).__name__})"
        return str(self.file)

    def get(self, name: str) -> str | None:
        if self.backend is not None:
            try:
                return self.backend.get_password(SERVICE, name)
            except keyring.errors.KeyringError as exc:
                raise SecretStoreError(f"the keyring failed: {type(exc).__name__}") from None
        return self._read().get(name)

    def set(self, name: str, secret: str) -> None:
        if self.backend is not None:
            try:
                self.backend.set_password(SERVICE, name, secret)
            except keyring.errors.KeyringError as exc:
                raise SecretStoreError(f"the keyring failed: {type(exc).__name__}") from None
            return
        data = self._read()
        data[name] = secret
        self._write(data)

    def delete(self, name: str) -> None:
        if self.backend is not None:
            with contextlib.suppress(keyring.errors.PasswordDeleteError):
                self.backend.delete_password(SERVICE, name)
            return
        data = self._read()
        if data.pop(name, None) is not None:
            self._write(data)

    async def aget(self, name: str) -> str | None:
        return await asyncio.to_thread(self.get, name)

    async def aset(self, name: str, secret: str) -> None:
        await asyncio.to_thread(self.set, name, secret)

    def _read(self) -> dict[str, str]:
        try:
            fd = os.open(self.file, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SecretStoreError(f"cannot read {self.file}: {exc.strerror}") from None
        with os.fdopen(fd, encoding="utf-8") as f:
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
                raise SecretStoreError(f"{self.file} may be read by others: chmod 600 it")
            try:
                data = json.load(f)
            except ValueError:
                raise SecretStoreError(f"{self.file} is not a JSON object") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise SecretStoreError(f"{self.file} is not a JSON object of strings")
        return data

    def _write(self, data: dict[str, str]) -> None:
        folder = self.file.parent
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.file, json.dumps(data).encode("utf-8"), mode=0o600)
        except OSError as exc:
            raise SecretStoreError(f"cannot write {self.file}: {exc.strerror}") from None


def password_name(account: str) -> str:
    return f"password:{account}"


def oauth_name(account: str) -> str:
    return f"oauth:{account}"


async def keyring_password(account: str, store: SecretStore | None = None) -> str:
    """The password `popbox fetch password set ACCOUNT` stored."""
    store = store or SecretStore()
    found = await store.aget(password_name(account))
    if not found:
        raise SecretStoreError(f"no password for {account} in {store.where}: run "
                               f"popbox fetch password set {account}")
    return found
