"""`broker status --ip / --endpoints / --endpoint PORT` (skybroker/endpoints.py decides, this renders)."""
from __future__ import annotations

from .. import render


def address(api, clusters, refresh, as_json, ip, endpoints, endpoint) -> None:
    """`status --ip` / `--endpoints` / `--endpoint PORT`: one cluster's address, for scripts."""
    from .. import endpoints as E
    from ..errors import UsageError

    given = [f for f, on in (("--ip", ip), ("--endpoints", endpoints), ("--endpoint", endpoint is not None)) if on]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} exclude each other", "give one of them")
    names = list(clusters) or [r.name for r in api.status()]
    if len(names) != 1:
        raise UsageError(f"{given[0]} shows one cluster's address, {'none' if not names else len(names)} "
                         f"{'is' if len(names) == 1 else 'are'} {'given' if clusters else 'known'}",
                         f"name one: `broker status {given[0]}{' PORT' if endpoint is not None else ''} CLUSTER`")
    (rec,) = api.status(refresh=refresh, names=names)
    if getattr(rec, "refresh_error", None):  # a script asked for the cloud's truth: not a stale address
        from ..errors import BrokerError

        e = rec.refresh_error
        raise BrokerError(e.get("message") or "could not refresh", e.get("hint"), e.get("exit_code") or 1)
    if ip:
        addr = E.head_ip(rec)
        return render.print_json({"cluster": rec.name, "ip": addr}) if as_json else render.raw(addr)
    eps = E.endpoints(rec, endpoint)
    if as_json:
        return render.print_json({"cluster": rec.name, "endpoints": {str(p): e for p, e in eps.items()}})
    if endpoint is not None:
        return render.raw(eps[endpoint])
    for p, e in eps.items():
        render.raw(f"{p}: {e}")
