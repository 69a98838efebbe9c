"""The wake router: try a host's wake paths in the configured order; the first that confirms wins.

A host plugin offers its paths (:class:`swarmbus.api.WakePath`: a readiness probe and a wake)
through ``swarmbus_wake_paths`` and calls :func:`wake_by_paths` from its ``swarmbus_wake``. Each
path gets ``timeout`` seconds for its probe and again for its wake. A path that is not ready,
fails, times out or raises is noted and the next one is tried (with ``fall_back=False``, a path
that was ready and then failed ends the attempt). The path that fired is recorded on
the delivery ladder as ``surfaced`` (``<path>: <detail>``) when the host confirmed it showed the
messages to the model, and the outcome's detail names it, so ``swarmbus inbox`` and ``swarmbus
trace`` say which path delivered each wake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from swarmbus.api import HandlerContext, StoredMessage, WakeOutcome, WakePath

log = logging.getLogger("swarmbus.wake")

DEFAULT_TIMEOUT = 10.0
"""Seconds per probe and per wake attempt when the caller gives none."""


async def probe_paths(paths: Sequence[WakePath], context: HandlerContext,
                      timeout: float = DEFAULT_TIMEOUT) -> list[tuple[str, str | None]]:
    """``[(name, None if ready else why not)]`` for each path, in order; never raises."""
    out: list[tuple[str, str | None]] = []
    for path in paths:
        out.append((path.name, await _probe(path, context, timeout)))
    return out


async def _probe(path: WakePath, context: HandlerContext, timeout: float) -> str | None:
    try:
        async with asyncio.timeout(timeout):
            return await path.probe(context)
    except TimeoutError:
        return f"its readiness probe took more than {timeout:g}s"
    except Exception as exc:  # a plugin's bug must not stop the other paths
        return f"its readiness probe failed ({type(exc).__name__}: {exc})"


async def wake_by_paths(messages: list[StoredMessage], paths: Sequence[WakePath], context: HandlerContext, *,
                        timeout: float = DEFAULT_TIMEOUT, surfaced: Sequence[str] = (),
                        fall_back: bool = True) -> WakeOutcome:
    """Wake the host for ``messages`` by the first of ``paths`` (in order) that is ready and
    confirms. ``surfaced`` names the paths whose confirmation means the model was shown the
    messages (a session's inbox, a gateway's accepted run); their success records ``surfaced``.

    ``fall_back=False`` stops at the first path that was ready but did not confirm (it failed,
    raised or timed out) instead of trying the next: for a user who would rather see a failed
    wake (the daemon keeps the messages and retries them with the next wake) than have, say, a
    headless run start beside a live session that may still show them. Paths that were not
    ready are always skipped.

    Returns the winning path's :class:`WakeOutcome` with its detail prefixed by the path's name,
    or, when none worked, ``ok=False`` listing why each did not.
    """
    tried: list[str] = []
    exit_code: int | None = None  # of the last path that ran and failed
    for path in paths:
        why = await _probe(path, context, timeout)
        if why is not None:
            tried.append(f"{path.name}: {why}")
            continue
        limit = path.timeout or timeout
        try:
            async with asyncio.timeout(limit):
                outcome = await path.wake(messages, context)
        except TimeoutError:
            tried.append(f"{path.name}: no confirmation within {limit:g}s")
            if not fall_back:
                break
            continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("wake path %s failed for %s: %s", path.name, messages[0].id, exc)
            tried.append(f"{path.name}: failed ({type(exc).__name__}: {exc})")
            if not fall_back:
                break
            continue
        if outcome.ok:
            detail = f"{path.name}: {outcome.detail}" if outcome.detail else path.name
            if tried:
                detail += f" (after {'; '.join(tried)})"
            if path.name in surfaced and context.mark_step is not None:
                context.mark_step([m.id for m in messages], "surfaced", detail)
            return WakeOutcome(True, detail, outcome.exit_code)
        tried.append(f"{path.name}: {outcome.detail or 'not confirmed'}")
        exit_code = outcome.exit_code
        if not fall_back:
            break
    else:
        return WakeOutcome(False, "no wake path worked: " + "; ".join(tried) if tried else "no wake paths configured",
                           exit_code)
    return WakeOutcome(False, "no wake path worked (fall_back is off, so no later path was tried): "
                       + "; ".join(tried), exit_code)
