"""How every Redis client of Relance connects: user, password and TLS from the settings.

``redis_options(settings)`` is the keyword arguments of ``Redis.from_url`` (sync or
asyncio) beside ``settings.redis_url``; a ``rediss://`` URL turns TLS on, with the
server's certificate and host name always checked.
"""
from __future__ import annotations

import os
from typing import Any

from foundation.settings import SettingError, Settings

__all__ = ["redis_options", "redis_address"]


def redis_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = settings.redis_password
    files = {"redis_ca_file": settings.redis_ca_file, "redis_cert_file": settings.redis_cert_file,
             "redis_key_file": settings.redis_key_file}
    if not settings.redis_url.startswith("rediss://"):
        if any(files.values()):
            raise SettingError("setting redis_url (RELANCE_REDIS_URL): a CA or client certificate is set, "
                               "but the URL is not rediss:// (TLS)")
        return options
    if bool(settings.redis_cert_file) != bool(settings.redis_key_file):
        raise SettingError("settings redis_cert_file and redis_key_file: mutual TLS needs both")
    for name, path in files.items():
        if path and not os.access(path, os.R_OK):
            raise SettingError(f"setting {name} (RELANCE_{name.upper()}): cannot read {path}")
    options.update(ssl_cert_reqs="required", ssl_check_hostname=True, ssl_ca_certs=settings.redis_ca_file,
                   ssl_certfile=settings.redis_cert_file, ssl_keyfile=settings.redis_key_file)
    return options


def redis_address(url: str) -> str:
    """The URL without any password it may carry, for messages and logs."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"
