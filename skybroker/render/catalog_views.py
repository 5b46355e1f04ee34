"""What `broker catalog info|refresh` show, and the price-age line of every plan header."""
from __future__ import annotations

from .console import _m, _say
from .table import Col, _table


def _age(days: float) -> str:
    if days < 1 / 24:
        return f"{max(int(days * 1440), 0)}m old"
    if days < 2:
        return f"{days * 24:.0f}h old"
    return f"{days:.0f} days old"


def price_header(prices) -> None:
    """`Prices: aws refreshed … from the aws APIs (2h old) · gcp bundled snapshot of … (196 days old)`, and a
    warning per cloud whose prices are older than BROKER_CATALOG_MAX_AGE_DAYS."""
    if not prices:
        return
    _say("Prices: " + " · ".join(f"{p['cloud']} {p['source']} ({_age(p['age_days'])})" for p in prices))
    stale = [p for p in prices if p.get("stale")]
    if stale:
        names = ", ".join(p["cloud"] for p in stale)
        oldest = max(p["age_days"] for p in stale)
        cmd = "broker catalog refresh" + (f" --cloud {stale[0]['cloud']}" if len(stale) == 1 else "")
        _say(f"{_m('yellow', 'Warning:')} {names} prices are older than BROKER_CATALOG_MAX_AGE_DAYS="
             f"{stale[0]['max_age_days']:g} days (up to {_age(oldest)}); `{cmd}` fetches current ones with your "
             "credentials.")


def catalog_summary(meta: dict) -> None:
    rows = []
    for cloud, m in meta.get("clouds", {}).items():
        c = m.get("counts", {})
        age = m.get("price_age") or {}
        src = m.get("repo") and f"{m.get('repo', '')} {m.get('path', '')}".strip() or ", ".join(m.get("apis", ()))
        rows.append([cloud, age.get("origin", "-"), age.get("as_of", "-"),
                     _age(age["age_days"]) if "age_days" in age else "-", str(c.get("specs", "-")),
                     str(c.get("offers", "-")), str(c.get("suspicious_offers", "-")), m.get("dir", "-"), src])
    _say(f"Catalogs (format {meta.get('format_version', '?')}); bundled build {_m('bold', str(meta.get('build_date', '?')))}")
    _table(None, [Col("CLOUD"), Col("ORIGIN"), Col("PRICES AS OF"), Col("AGE", "right"), Col("SPECS", "right"),
                  Col("OFFERS", "right"), Col("SUSPICIOUS", "right"), Col("DIR", soft=20, min=10),
                  Col("SOURCE", soft=20, min=10)], rows, drop=("SOURCE", "DIR", "SUSPICIOUS"))


def refresh_summary(results: list[dict]) -> None:
    rows = [[r["cloud"], str(len(r["regions"])), str(r["rows"]), str(r["carried_offers"]), str(r["specs"]),
             str(r["offers"]), str(r["api_calls"]), str(r["throttled"]), f"{r['cpu_seconds']:.1f}", r["dir"]]
            for r in results]
    _table("Refreshed catalogs", [Col("CLOUD"), Col("REGIONS", "right"), Col("ROWS", "right"), Col("CARRIED", "right"),
                                  Col("SPECS", "right"), Col("OFFERS", "right"), Col("API CALLS", "right"),
                                  Col("THROTTLED", "right"), Col("CPU s", "right"), Col("DIR", soft=20, min=10)],
           rows, drop=("DIR", "THROTTLED", "CARRIED", "CPU s"))
    for r in results:
        _say(f"{r['cloud']}: prices refreshed {r['refreshed_at']} from the {r['cloud']} APIs; plans use them from now on "
             f"(`broker catalog info`).")
