"""The open-set evaluation's outputs: one JSON-ready summary per size and mode, the DET plot, and
the Markdown tables (rates at the door's default target and at fixed thresholds)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .open_set import Comparison, Outcome, Rates


def _num(value) -> float | None:
    """A JSON-safe float: None for NaN (no trials)."""
    value = float(value)
    return None if math.isnan(value) else value


def _ratio(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"


def rates_at(rates: Rates, i: int) -> dict:
    fpir_low, fpir_high = rates.fpir_ci()
    fnir_low, fnir_high = rates.fnir_ci()
    return {
        "threshold": float(rates.thresholds[i]),
        "fpir": _num(rates.fpir[i]),
        "fpir_ci95": [_num(fpir_low[i]), _num(fpir_high[i])],
        "false_opens": int(rates.false_opens[i]),
        "stranger_probes": rates.strangers,
        "fnir": _num(rates.fnir[i]),
        "fnir_ci95": [_num(fnir_low[i]), _num(fnir_high[i])],
        "misses": int(rates.misses[i]),
        "genuine_probes": rates.genuine,
    }


def _spread(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()), "max": float(values.max())}


def outcome_summary(
    outcome: Outcome,
    point,
    enrollment: str,
    grid: np.ndarray,
    predict: Callable[[float], float],
    comparisons: Sequence[Comparison],
    encrypted: dict | None,
    fixed: Sequence[float],
) -> dict:
    """Everything measured for one size and mode, beside what the door's operating point predicts."""
    at_point = rates_at(outcome.rates([point.threshold]), 0)
    fpir_runs, fnir_runs = outcome.per_repeat(point.threshold)
    at_point.update(
        fpir_per_gallery=_spread(fpir_runs),
        fnir_per_gallery=_spread(fnir_runs),
        distinct_false_open_images=outcome.distinct_false_opens(point.threshold),
    )
    curve = outcome.rates(grid)
    fpir_low, fpir_high = curve.fpir_ci()
    fnir_low, fnir_high = curve.fnir_ci()
    fixed_rates = outcome.rates(fixed)
    return {
        "mode": outcome.mode.value,
        "size": outcome.size,
        "requested_sizes": outcome.requested,
        "templates": outcome.templates,
        "repeats": outcome.repeats,
        "operating_point": {
            "threshold": point.threshold,
            "source": point.source,
            "enrollment": enrollment,
            "enrolled": point.enrolled,
            "expected_false_open": point.expected_false_open,
            "expected_true_open": point.expected_true_open,
            "measured": at_point,
        },
        "at_thresholds": {f"{t:g}": rates_at(fixed_rates, i) for i, t in enumerate(fixed)},
        "curve": {
            "thresholds": [float(t) for t in grid],
            "fpir": [_num(v) for v in curve.fpir],
            "fpir_low": [_num(v) for v in fpir_low],
            "fpir_high": [_num(v) for v in fpir_high],
            "false_opens": curve.false_opens.tolist(),
            "fnir": [_num(v) for v in curve.fnir],
            "fnir_low": [_num(v) for v in fnir_low],
            "fnir_high": [_num(v) for v in fnir_high],
            "misses": curve.misses.tolist(),
            "stranger_probes": curve.strangers,
            "genuine_probes": curve.genuine,
            "predicted_fpir": [predict(float(t)) for t in grid],
        },
        "prediction_check": {
            "compared": len(comparisons),
            "failed": sum(not c.within for c in comparisons),
            # ratio > factor: more false opens predicted than seen (conservative); < 1/factor: fewer (unsafe)
            "over_predicted": sum(c.ratio > 1 and not c.within for c in comparisons),
            "under_predicted": sum(c.ratio < 1 and not c.within for c in comparisons),
            "passed": all(c.within for c in comparisons),
            "comparisons": [{**asdict(c), "ratio": _ratio(c.ratio)} for c in comparisons],
        },
        "encrypted_check": encrypted,
    }


# -- DET plot -------------------------------------------------------------------------------------

_COLOURS = {10: "tab:blue", 100: "tab:orange", 1000: "tab:red"}
_STYLES = {"single": "-", "mean": "--", "separate": ":"}


def plot_det(path: Path, outcomes: Sequence[Outcome], results: Sequence[dict]) -> None:
    """FNIR against FPIR on log axes, one curve per size and mode (on a fine threshold grid, not
    the report's); circles at the door's operating point."""
    from .report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    palette = iter(["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
    colours: dict[int, str] = {}
    fine = np.linspace(0.2, 1.0, 1601)
    lowest = [1e-4, 1e-3]  # axis floors, lowered to the smallest rate drawn
    for outcome, r in zip(outcomes, results):
        colour = colours.setdefault(r["size"], _COLOURS.get(r["size"]) or next(palette, "black"))
        rates = outcome.rates(fine)
        fpir, fnir = rates.fpir, rates.fnir
        shown = (fpir > 0) & (fnir > 0)
        label = f"{r['size']} people, {r['mode']} ({r['templates']} templates)"
        ax.plot(fpir[shown], fnir[shown], color=colour, linestyle=_STYLES.get(r["mode"], "-."), label=label)
        if shown.any():
            lowest = [min(lowest[0], float(fpir[shown].min())), min(lowest[1], float(fnir[shown].min()))]
        m = r["operating_point"]["measured"]
        if m["fpir"] and m["fnir"]:
            ax.plot([m["fpir"]], [m["fnir"]], marker="o", color=colour, fillstyle="none", markersize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Fixed limits: log axes need them when no threshold has both rates above zero (no curve).
    ax.set_xlim(lowest[0] / 1.5, 1.05)
    ax.set_ylim(lowest[1] / 1.5, 1.05)
    ax.set_xlabel("FPIR: share of stranger probes matched to someone")
    ax.set_ylabel("FNIR: share of enrolled people's probes not matched to themselves")
    ax.set_title("Open-set DET (circles: the door's operating point at the default target)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- Markdown -------------------------------------------------------------------------------------


def _pct(value: float | None, ci: Sequence[float | None] | None = None) -> str:
    if value is None:
        return "—"
    text = f"{100 * value:.2f}%" if value >= 0.001 or value == 0 else f"{100 * value:.3f}%"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"
    return text


def _size(r: dict) -> str:
    requested = r["requested_sizes"]
    capped = [s for s in requested if s != r["size"]]
    return f"{r['size']}" + (f" (asked {', '.join(map(str, capped))})" if capped else "")


def render_markdown(s: dict) -> str:
    ds, st = s["dataset"], s["settings"]
    results = s["results"]
    lines = [
        "# blindgate: open-set identification",
        "",
        f"Images: `{ds['images_dir']}` — {ds['images']} images of {ds['people']} people. "
        f"{st['repeats']} random galleries per size and mode (seed {st['seed']}); enrollment k = {st['k']}. "
        f"Genuine probes: {st['genuine_probes']}; stranger probes: {st['stranger_probes']}. "
        "Sizes are capped by the people with enough photos ("
        + ", ".join(f"{m}: {n}" for m, n in ds["eligible_people"].items())
        + ").",
        "",
        f"Confidence intervals: {s['ci_method']}. The same photos recur across galleries, so these "
        "intervals are narrower than fully independent data would give; the per-gallery spread is in the JSON.",
        "",
        f"## At the default target (max_false_open = {st['decision']['max_false_open']:g} per frame)",
        "",
        "| people | mode | templates | threshold | predicted FPIR | measured FPIR [95% CI] | false opens / strangers "
        "| predicted TPIR | measured FNIR [95% CI] |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        op, m = r["operating_point"], r["operating_point"]["measured"]
        lines.append(
            f"| {_size(r)} | {r['mode']} | {r['templates']} | {op['threshold']:.4f} | {_pct(op['expected_false_open'])} "
            f"| {_pct(m['fpir'], m['fpir_ci95'])} | {m['false_opens']} / {m['stranger_probes']} "
            f"| {_pct(op['expected_true_open'])} | {_pct(m['fnir'], m['fnir_ci95'])} |"
        )
    fixed = list(results[0]["at_thresholds"]) if results else []
    lines += [
        "",
        "## At fixed thresholds (FPIR; FNIR)",
        "",
        "| people | mode | " + " | ".join(f"threshold {t}" for t in fixed) + " |",
        "|---:|---|" + "---|" * len(fixed),
    ]
    for r in results:
        cells = [f"{_pct(a['fpir'])}; {_pct(a['fnir'])}" for a in r["at_thresholds"].values()]
        lines.append(f"| {_size(r)} | {r['mode']} | " + " | ".join(cells) + " |")
    ok = lambda flag: "PASS" if flag else "FAIL"  # noqa: E731
    lines += [
        "",
        "## Checks",
        "",
        f"Prediction: {s['prediction_rule']}. Encrypted: the first gallery of each size and mode through the real "
        "engine (`encrypt_block`, `encrypt_probe`, `scan`, `decode_scan`); decisions (match or not, and whom) at "
        "the operating point and the fixed thresholds compared with numpy's.",
        "",
        "| people | mode | predictions compared | outside: over / under-predicted | worst ratio | encrypted probes | "
        "disagreements | max distance error |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        pc, ec = r["prediction_check"], r["encrypted_check"]
        ratios = [c["ratio"] for c in pc["comparisons"]]
        worst = max(ratios, key=lambda v: math.inf if v == "inf" else abs(math.log(v)) if v > 0 else math.inf, default=None)
        worst_text = "—" if worst is None else (worst if isinstance(worst, str) else f"{worst:.2f}")
        lines.append(
            f"| {_size(r)} | {r['mode']} | {pc['compared']} | {pc['over_predicted']} / {pc['under_predicted']} "
            f"| {worst_text} | {ec['probes']} | {ec['disagreements']} | {ec['max_abs_error']:.1e} |"
        )
    checks = s["checks"]
    lines += [
        "",
        f"- encrypted decisions equal plaintext: **{ok(checks['encrypted_decisions_equal_plaintext'])}**",
        "- predicted false-open rate within a factor of 2 of the measured at the operating point: "
        f"**{ok(checks['prediction_at_operating_point'])}**",
        "- the same at every grid threshold with enough expected false opens: "
        f"**{ok(s['prediction_across_grid'])}** (informational: at low thresholds the few false opens come from a "
        "handful of look-alike photos; each comparison in the JSON names how many distinct photos it rests on)",
        "",
        f"Time: embedding {s['timing_s']['embedding']:.1f} s ({s['faces']['cached']} of {ds['images']} from the cache), "
        f"galleries {s['timing_s']['simulation']:.1f} s, encrypted check {s['timing_s']['encrypted']:.1f} s. "
        f"Machine: {s['environment']['machine']}.",
        "",
        f"Command: `{s['command']}`",
        "",
        "![DET](det.png)",
        "",
    ]
    return "\n".join(lines)
