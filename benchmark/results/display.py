"""How a method is shown in tables and figures: its name for people, its colour, its order.

Fixed, not derived from which methods a table happens to hold, so that a method keeps one
colour in every panel of every report and a figure of three methods matches a figure of
fourteen. The colours come from the Okabe-Ito palette (distinct under the common forms of
colour blindness) and, past its eight, from Paul Tol's colour-blind-safe "muted" scheme;
fourteen colours cannot all stay apart for every reader, so lines also get a marker of
their own. A method not listed here (a plugin's) gets a colour from a stable hash of its
name: the same in every run and process. Torch-free: `invbench collect` imports it.
"""

from __future__ import annotations

import zlib

# The papers' names for the registered methods.
DISPLAY_NAMES = {
    "erm": "ERM", "irm": "IRMv1", "vrex": "V-REx", "mmrex": "MM-REx", "groupdro": "Group DRO",
    "andmask": "AND-mask", "iga": "IGA", "fishr": "Fishr", "ibirm": "IB-IRM", "iberm": "IB-ERM",
    "coral": "CORAL", "mmd": "MMD", "sd": "SD", "oracle": "Oracle",
}

# Rows and legend entries in this order: the baseline first, the oracle (an upper bound
# trained on data without the spurious signal, not a competitor) last.
METHOD_ORDER = ("erm", "irm", "vrex", "mmrex", "groupdro", "andmask", "iga", "fishr", "ibirm", "iberm",
                "coral", "mmd", "sd", "oracle")

# Methods that are references rather than competitors: never marked best in a table.
REFERENCE_METHODS = frozenset({"oracle"})

METHOD_COLOURS = {
    "erm": "#000000",       # Okabe-Ito black
    "irm": "#0072B2",       # Okabe-Ito blue
    "vrex": "#D55E00",      # Okabe-Ito vermillion
    "mmrex": "#E69F00",     # Okabe-Ito orange
    "groupdro": "#009E73",  # Okabe-Ito bluish green
    "andmask": "#CC79A7",   # Okabe-Ito reddish purple
    "iga": "#56B4E9",       # Okabe-Ito sky blue
    "fishr": "#882255",     # Tol muted wine
    "ibirm": "#332288",     # Tol muted indigo
    "iberm": "#999933",     # Tol muted olive
    "coral": "#44AA99",     # Tol muted teal
    "mmd": "#CC6677",       # Tol muted rose
    "sd": "#DDCC77",        # Tol muted sand
    "oracle": "#888888",    # grey: a reference, not a competitor
}

# For methods not listed above (Tol's "light" scheme: none of them is taken above).
FALLBACK_COLOURS = ("#77AADD", "#EE8866", "#EEDD88", "#FFAABB", "#99DDFF", "#44BB99", "#BBCC33", "#AAAA00")

MARKERS = {m: marker for m, marker in zip(METHOD_ORDER, "osD^vP*XpdH<>h")}
FALLBACK_MARKERS = ("o", "s", "D", "^", "v", "P", "X")


def display_name(method: str) -> str:
    """The paper's name of ``method``; an unknown method keeps its own name."""
    return DISPLAY_NAMES.get(method, method)


def _stable_index(method: str, n: int) -> int:
    return zlib.crc32(method.encode()) % n  # not hash(): that changes between processes


def method_colour(method: str) -> str:
    """The method's colour as "#RRGGBB", the same in every figure whatever else is plotted."""
    known = METHOD_COLOURS.get(method)
    return known if known is not None else FALLBACK_COLOURS[_stable_index(method, len(FALLBACK_COLOURS))]


def method_marker(method: str) -> str:
    known = MARKERS.get(method)
    return known if known is not None else FALLBACK_MARKERS[_stable_index(method, len(FALLBACK_MARKERS))]


def ordered(methods) -> list[str]:
    """``methods`` in METHOD_ORDER, then the unknown ones by name."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(set(methods), key=lambda m: (rank.get(m, len(rank)), m))
