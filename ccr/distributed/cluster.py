"""Which Ray ccr talks to: one it starts on this machine (and ends with the command), or a cluster that
RAY_ADDRESS names; and the checks that refuse, before anything waits, what such a Ray can never run."""


from __future__ import annotations

import logging
import os
import sys
from typing import Any

# Where Ray logs its token-auth notice, which speaks to cluster operators: a Ray that ccr starts on
# this machine for itself listens on 127.0.0.1, and only holders of its session's token reach it.
_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def _not_token_notice(record: logging.LogRecord) -> bool:
    return "Token authentication is enabled" not in record.getMessage()


OWN_RAY = {"local": False}  # whether ccr started the Ray it uses on this machine (it ends with the command)


def check_can_ever_run(what: str, key: str, need: dict[str, float]) -> None:
    """On a Ray that ccr started on this machine, which never grows, a request for more CPUs or GPUs than the
    machine has would wait for ever with no message: refuse it, naming the config key. (A cluster that
    RAY_ADDRESS names may add nodes when asked: there the request waits for the autoscaler.)"""
    import ray

    from ccr.errors import ConfigError

    if not OWN_RAY["local"]:
        return
    have = ray.cluster_resources()
    short = [f"{v:g} {k}" for k, v in need.items() if v > have.get(k, 0.0) + 1e-9]
    if short:
        mine = ", ".join(f"{have.get(k, 0.0):g} {k}" for k in need)
        raise ConfigError(f"{what} ({key}) needs {' and '.join(short)}, and the Ray that ccr started on this "
                          f"machine has {mine}; it would wait for ever. Ask for less, or run on a cluster "
                          "(RAY_ADDRESS) that can grow")


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A cluster address (RAY_ADDRESS or `address`) where nothing answers makes ray.init retry for minutes,
    printing only its own warnings: try the address's port once, and name it in one line if it is closed.
    `auto` and `local` are Ray's to resolve, and answer quickly by themselves."""
    import socket

    from ccr.errors import ConfigError

    if address in ("auto", "local", ""):
        return
    where = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} (RAY_ADDRESS) is not host:port, ray://host:port, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"no Ray cluster answers at {address!r} (RAY_ADDRESS): {e.strerror or e}. Start it "
                          "(`ray start --head`, `ray up`), or unset RAY_ADDRESS to let ccr start a Ray of its "
                          "own on this machine") from None


def init_ray(prestart: bool = True, **kwargs: Any) -> None:
    """Start a local Ray, or join the cluster that RAY_ADDRESS (set by `ray job submit`) or `address`
    names, the way every ccr command needs it, quietly.

    Worker output reaching a file or a pipe gets no ANSI colour codes; Ray's own INFO lines (the
    dashboard address) are left out. On a local Ray that ccr starts itself, Ray Train's preemption
    watcher (which polls a cluster's node draining) is off and the token-auth notice is not shown.
    `prestart=False`: that local Ray starts no idle workers for the first job (for callers whose actors
    need workers of their own, as Tune's trials do); a cluster's own setting is left as it is.
    """
    import ray

    if ray.is_initialized():
        return
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if "address" not in kwargs and not os.environ.get("RAY_ADDRESS"):
        # a Ray of our own: never the cluster that `ray start` last recorded on this machine (Ray's
        # default), which may be gone or someone else's; a cluster job names its cluster (RAY_ADDRESS)
        kwargs["address"] = "local"
        OWN_RAY["local"] = True
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # no dashboard for a Ray that lives as long as one command (0.7 s of every start-up on 2 cores, where
        # ray[default] is installed); CCR_RAY_DASHBOARD=1 starts it, to watch a local sweep in a browser
        kwargs.setdefault("include_dashboard", os.environ.get("CCR_RAY_DASHBOARD", "") == "1")
        if not prestart:
            kwargs["_system_config"] = {**kwargs.get("_system_config", {}), "prestart_worker_first_driver": False}
        notice = logging.getLogger(_TOKEN_NOTICE_LOGGER)
        if _not_token_notice not in notice.filters:
            notice.addFilter(_not_token_notice)
    else:
        check_reachable(str(kwargs.get("address") or os.environ["RAY_ADDRESS"]))
    ray.init(logging_level=logging.WARNING, **kwargs)
