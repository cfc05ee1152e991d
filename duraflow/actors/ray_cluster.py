"""Starting or joining the Ray cluster a deployment runs on, with errors that say what to
fix when its address cannot be reached."""

from __future__ import annotations

import socket

import ray

from duraflow.errors import ConfigurationError

JOIN_PROBE_TIMEOUT_S = 5.0
"""How long joining a cluster waits for its address to accept a TCP connection."""


def start_or_join_ray(address: str | None, namespace: str) -> bool:
    """Join the Ray cluster at ``address`` (or start a local one) unless already connected.

    Returns:
        True if this call started a new local Ray (its owner should shut it down).
    """
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(namespace=namespace, include_dashboard=False, log_to_driver=False)
        return True
    ray.init(address=address, namespace=namespace, log_to_driver=False)
    return False


def join_cluster(address: str, namespace: str) -> None:
    """Join the running Ray cluster at ``address`` as a driver, unless connected already.

    Raises:
        ConfigurationError: it cannot be joined; the message says why (token auth included).
    """
    if ray.is_initialized():
        return
    _probe(address)
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    except Exception as exc:  # reason: ray.init raises ConnectionError, RuntimeError, ...
        raise ConfigurationError(_join_failure(address, exc)) from None


def _probe(address: str) -> None:
    """Fail fast when nothing listens at the cluster's address: ray.init would retry for
    minutes (a typo, a stopped cluster, a stale address file left by a crashed one)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        target = canonicalize_bootstrap_address(address)  # "auto": RAY_ADDRESS or the file
        host, _, port = (target or "").rpartition(":")
        port_number = int(port)
    except Exception:  # reason: private API, ray:// or no address found: ray.init will say
        return
    try:
        socket.create_connection((host.strip("[]"), port_number), JOIN_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigurationError(
            f"no Ray cluster answers at {target} (from address {address!r}): {exc}. Is it "
            "running? 'ray start --head' starts one"
        ) from None


def _join_failure(address: str, exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(cause):
            return (
                f"the Ray cluster at {address} refused the connection (token authentication): "
                "set RAY_AUTH_MODE=token and give this process the cluster's token "
                "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
            )
        cause = cause.__cause__ or cause.__context__
    return (
        f"cannot join the Ray cluster at {address!r}: {first_line(exc)} (is it running? "
        "'ray start --head' starts one; use address 'auto' on one of its nodes, or the head's "
        "host:port)"
    )


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (Ray's errors run to many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
