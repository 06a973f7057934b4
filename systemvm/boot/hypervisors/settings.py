"""Hypervisor connection settings: a config file and environment variables, never code.

File: ``$SYSTEMVM_CONFIG`` or ``~/.config/systemvm/hypervisors.ini``, one section per hypervisor::

    [xenserver]
    url = https://xen1.example.org
    user = root
    password = ...
    sr = Local storage
    network = Pool-wide network associated with eth0
    verify_tls = true

Environment variables override the file: ``SYSTEMVM_<HYPERVISOR>_<KEY>`` (e.g. ``SYSTEMVM_VMWARE_URL``,
``SYSTEMVM_VMWARE_DATASTORE``). TLS verification is on unless ``verify_tls = false`` is given explicitly;
``ca_file`` names a CA bundle to trust. ``api_only = true`` marks an endpoint that boots no guest (the XAPI
stand-in, vcsim): the matrix then runs the driver's API flow there instead of the appliance suite.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from systemvm.errors import UserError, ini_problem


def config_path() -> Path:
    explicit = os.environ.get("SYSTEMVM_CONFIG")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "systemvm" / "hypervisors.ini"


def load_settings(hypervisor: str) -> dict[str, str]:
    """Settings for one hypervisor (lower-case keys); empty when nothing is configured."""
    settings: dict[str, str] = {}
    path = config_path()
    if path.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise UserError(f"{path}: {ini_problem(exc)}: fix that line") from None
        if parser.has_section(hypervisor):
            settings.update({k.lower(): v for k, v in parser.items(hypervisor)})
    prefix = f"SYSTEMVM_{hypervisor.upper()}_"
    for key, value in os.environ.items():
        if key.startswith(prefix):
            settings[key[len(prefix) :].lower()] = value
    return settings


def is_configured(hypervisor: str) -> bool:
    return bool(load_settings(hypervisor).get("url"))


def require(settings: dict[str, str], hypervisor: str, *keys: str) -> None:
    for key in keys:
        if not settings.get(key):
            raise UserError(
                f"{hypervisor}: setting '{key}' is missing: set SYSTEMVM_{hypervisor.upper()}_{key.upper()} "
                f"or add '{key} =' to [{hypervisor}] in {config_path()}"
            )


def verify_tls(settings: dict[str, str]) -> bool:
    return settings.get("verify_tls", "true").strip().lower() not in ("false", "0", "no", "off")
