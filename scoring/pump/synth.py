"""Synthetic dynamometer cards with known failure modes, downhole and surface.

Each card is built in physical units and then handed over in random instrument units:

1. **Downhole card.** The plunger follows the crank's (slightly asymmetric) harmonic motion; the
   pump load ``F`` is a function of plunger position and stroke direction that encodes the
   failure mode (shapes and parameter ranges from ``shared/domain/pump.md``), in units of the
   fluid load ``Fo``.
2. **Surface card** (polished rod): buoyant rod weight ``W_r`` is added, the position is sheared
   by rod stretch (``x_s = x_p + F / k``, the stiffness ``k`` such that the stretch under
   ``Fo`` is 3–30 % of the stroke), rod inertia and Coulomb friction
   are added, and the rod string rings at its quarter-wave frequency ``a / 4L`` after every
   change of pump load: ``dF/dt`` convolved (circularly, the card is periodic) with a damped
   sine, damping ``c`` 0.05–0.5 s⁻¹ as in Gibbs' damped wave equation.
3. Noise 1–3 % of the load range, optional quantisation, a random starting phase, 60–1,400
   points, position in m/mm/cm/in/ft and load in kN/N/lbf/kgf/klbf with arbitrary offsets.

Nothing that is cheap to read off (point count, units, absolute load, noise level) depends on
the class: every physical and instrument parameter is drawn from the same ranges for every mode.
The one exception is physics, not instrument: a stuck plunger's loads are the rod stretch over
the whole polished-rod stroke, ``k (S - x_p)``, several times the fluid load (see
:func:`_downhole`); a unit-free image does not see the scale.

Modes left out of :data:`MODES` by default: ``tubing_leak`` and ``flowing_through_pump`` differ
from a full pump only in absolute load, and ``unanchored_tubing`` only in extra slant, which on a
surface card is the same thing as a softer rod string: a unit-free image of one card cannot tell
them apart. They are generated on request (``modes=ALL_MODES``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from scoring.pump.cards import Card

MODES = (
    "full_pump",
    "fluid_pound",
    "gas_interference",
    "gas_lock",
    "worn_pump",
    "standing_valve_leak",
    "rod_part",
    "pump_hitting_down",
    "pump_hitting_up",
    "stuck_plunger",
    "high_viscosity",
)
EXTRA_MODES = ("unanchored_tubing", "tubing_leak", "flowing_through_pump")
ALL_MODES = MODES + EXTRA_MODES

REALISTIC_WEIGHTS = {
    # from the 524-card field test set of the domain note; modes it lacks get 5
    "gas_interference": 202,
    "flowing_through_pump": 177,
    "pump_hitting_down": 64,
    "worn_pump": 37,  # pump wear 22 + travelling-valve leak 15
    "fluid_pound": 14,
    "high_viscosity": 10,
    "full_pump": 8,
    "stuck_plunger": 7,
    "pump_hitting_up": 5,
    "gas_lock": 5,
    "standing_valve_leak": 5,
    "rod_part": 5,
    "unanchored_tubing": 5,
    "tubing_leak": 5,
}

MIXED_SURFACE = 0.75
"""Share of surface cards in a ``mixed`` set: field data are surface cards."""

POSITION_UNITS = {"m": 1.0, "mm": 1000.0, "cm": 100.0, "in": 39.3701, "ft": 3.28084}
LOAD_UNITS = {"kN": 1.0, "N": 1000.0, "lbf": 224.809, "kgf": 101.972, "klbf": 0.224809}
WAVE_SPEED = 5170.0  # m/s in steel rods
G = 9.81


@dataclass(frozen=True)
class Stroke:
    """Time grid of one pump cycle: plunger position shape in [0, 1] and direction."""

    t: np.ndarray
    x: np.ndarray
    up: np.ndarray
    phase: np.ndarray


def _stroke(rng: np.random.Generator, n: int) -> Stroke:
    t = np.arange(n) / n
    asym = rng.uniform(-0.12, 0.12)  # crank geometry: up- and downstroke of unequal speed
    phase = t + asym * np.sin(2 * np.pi * t) / (2 * np.pi)
    x = (1 - np.cos(2 * np.pi * phase)) / 2
    return Stroke(t, x, np.sin(2 * np.pi * phase) > 0, phase)


def _smooth(z: np.ndarray) -> np.ndarray:
    z = np.clip(z, 0.0, 1.0)
    return z * z * (3 - 2 * z)


def _pickup(x: np.ndarray, w: float) -> np.ndarray:
    return _smooth(x / w)


def _release(x: np.ndarray, at: float, w: float) -> np.ndarray:
    """Downstroke load: 1 above ``at``, falling to 0 over ``w`` below it."""
    return 1 - _smooth((at - x) / w)


def _full(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    w = rng.uniform(0.01, 0.05)
    return np.where(s.up, _pickup(s.x, w), _release(s.x, 1.0, w))


def _fluid_pound(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    f = rng.uniform(0.35, 0.9)
    w = rng.uniform(0.01, 0.05)
    return np.where(s.up, _pickup(s.x, w), _release(s.x, f, rng.uniform(0.02, 0.06)))


def _gas_interference(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    f = rng.uniform(0.4, 0.9)
    n = rng.uniform(1.0, 1.3)  # polytropic exponent shapes the curvature
    q = rng.uniform(1.6, 2.8) * n
    down = 1 - np.clip((1 - s.x) / (1 - f + 0.1), 0, 1) ** q
    w_up = rng.uniform(0.08, 0.25)
    up = 1 - (1 - np.clip(s.x / w_up, 0, 1)) ** 2
    return np.where(s.up, up, down)


def _gas_lock(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    base, h = rng.uniform(0.05, 0.3), rng.uniform(0.25, 0.6)
    a = rng.uniform(0.6, 1.2)
    b = a * rng.uniform(1.2, 1.6)
    return base + h * np.where(s.up, s.x**a, s.x**b)


def _worn_pump(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    slip = rng.uniform(0.1, 0.5)
    up = _pickup(s.x, rng.uniform(0.05, 0.1) + 0.6 * slip)
    up = up * (1 - slip * rng.uniform(0.2, 0.5) * np.sin(np.pi * s.x))
    e = rng.uniform(0.15, 0.35)
    up = up * (1 - slip * rng.uniform(0.4, 0.9) * _smooth((s.x - 1 + e) / e))
    down = up.max() * _release(s.x, 1.0, rng.uniform(0.01, 0.05))
    return np.where(s.up, up, down)


def _standing_valve_leak(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    slip = rng.uniform(0.1, 0.5)
    up = _pickup(s.x, rng.uniform(0.01, 0.05))
    down = _release(s.x, 1 - 0.3 * slip, rng.uniform(0.1, 0.2) + 0.4 * slip)
    e = rng.uniform(0.2, 0.4)
    down = down + slip * rng.uniform(0.4, 0.8) * _smooth((e - s.x) / e)
    return np.where(s.up, up, down)


def _rod_part(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    k = rng.integers(2, 6)
    return rng.uniform(0.05, 0.25) * np.sin(2 * np.pi * k * s.t + rng.uniform(0, 2 * np.pi))


def _spike(rng: np.random.Generator, s: Stroke, centre: float) -> np.ndarray:
    width = rng.uniform(0.006, 0.015)
    d = (s.phase - centre + 0.5) % 1.0 - 0.5
    return rng.uniform(0.3, 1.5) * np.exp(-0.5 * (d / width) ** 2)


def _hitting_down(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    return _full(rng, s) - _spike(rng, s, 1 - rng.uniform(0.01, 0.035))


def _hitting_up(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    return _full(rng, s) + _spike(rng, s, 0.5 - rng.uniform(0.01, 0.035))


def _stuck(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    # plunger held: the whole stroke stretches the rods, load follows position (scaled by the
    # rod stiffness in _downhole)
    return s.x


def _viscous(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    w = rng.uniform(0.05, 0.15)
    drag = rng.uniform(0.06, 0.3) * np.abs(np.sin(2 * np.pi * s.phase)) ** rng.uniform(0.5, 1.0)
    base = np.where(s.up, _pickup(s.x, w), _release(s.x, 1.0, w))
    return base + np.where(s.up, drag, -drag)


def _unanchored(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    u = rng.uniform(0.05, 0.2)
    lin = np.where(s.up, np.clip(s.x / u, 0, 1), np.clip((s.x - 1 + u) / u, 0, 1))
    return lin


def _tubing_leak(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    return rng.uniform(0.3, 0.8) * _full(rng, s)


def _flowing(rng: np.random.Generator, s: Stroke) -> np.ndarray:
    return rng.uniform(0.1, 0.3) * _full(rng, s)


SHAPES: dict[str, Callable[[np.random.Generator, Stroke], np.ndarray]] = {
    "full_pump": _full,
    "fluid_pound": _fluid_pound,
    "gas_interference": _gas_interference,
    "gas_lock": _gas_lock,
    "worn_pump": _worn_pump,
    "standing_valve_leak": _standing_valve_leak,
    "rod_part": _rod_part,
    "pump_hitting_down": _hitting_down,
    "pump_hitting_up": _hitting_up,
    "stuck_plunger": _stuck,
    "high_viscosity": _viscous,
    "unanchored_tubing": _unanchored,
    "tubing_leak": _tubing_leak,
    "flowing_through_pump": _flowing,
}


@dataclass(frozen=True)
class Well:
    """Physical parameters of one simulated well (SI units, loads in kN)."""

    stroke_m: float
    spm: float
    rod_length_m: float
    fluid_load_kn: float
    rod_weight_kn: float
    stiffness_kn_per_m: float
    damping_per_s: float

    @property
    def period_s(self) -> float:
        return 60.0 / self.spm

    @property
    def ring_hz(self) -> float:
        return WAVE_SPEED / (4 * self.rod_length_m)


def _well(rng: np.random.Generator) -> Well:
    length = rng.uniform(500, 3000)
    plunger_area = rng.uniform(7.9e-4, 3.8e-3)
    fluid = G * length * rng.uniform(0.5, 1.0) * plunger_area  # kN: ρ g h A with ρ = 1000
    stroke = rng.uniform(1.5, 6.0)
    # rod stretch under the fluid load, as a fraction of the stroke: designed rod strings
    # (tapered, sized to the plunger) keep it between a few and ~30 %
    stretch = rng.uniform(0.03, 0.3)
    return Well(
        stroke_m=stroke,
        spm=rng.uniform(4, 12),
        rod_length_m=length,
        fluid_load_kn=fluid,
        rod_weight_kn=rng.uniform(16, 40) * length / 1000,
        stiffness_kn_per_m=fluid / (stretch * stroke),
        damping_per_s=rng.uniform(0.05, 0.5),
    )


def _ring(dload: np.ndarray, well: Well, gain: float) -> np.ndarray:
    """The rod string's damped ringing after each load change (periodic convolution)."""
    n = dload.size
    tau = np.arange(n) / n * well.period_s
    omega = 2 * np.pi * well.ring_hz
    zeta = _modal_damping(well)
    kernel = np.exp(-(well.damping_per_s + zeta * omega) * tau) * np.sin(omega * tau)
    return gain * np.real(np.fft.ifft(np.fft.fft(dload) * np.fft.fft(kernel)))


def _modal_damping(well: Well) -> float:
    """Extra modal damping so ringing fades within a stroke or two, as on field cards."""
    return 0.02 + 0.08 * (well.rod_length_m - 500) / 2500


def _downhole(
    rng: np.random.Generator, mode: str, s: Stroke, well: Well
) -> tuple[np.ndarray, np.ndarray]:
    """Plunger position (m) and pump load (kN)."""
    shape = SHAPES[mode](rng, s)
    load = well.fluid_load_kn * shape
    plunger_stroke = max(
        well.stroke_m - well.fluid_load_kn / well.stiffness_kn_per_m, 0.3 * well.stroke_m
    )
    if mode == "stuck_plunger":
        plunger_stroke = well.stroke_m * rng.uniform(0.0, 0.08)
        # The pumping unit's linkage still drives the polished rod through its whole stroke, so
        # the part the plunger does not follow stretches the rods: x_s = x_p + F/k spans the
        # stroke, F = k (S - x_p). Capping F at the usual loads instead would shrink the
        # polished-rod stroke, which a beam unit cannot do.
        load = well.stiffness_kn_per_m * (well.stroke_m - plunger_stroke) * shape
    position = plunger_stroke * s.x
    return position, load


def _surface(
    rng: np.random.Generator, s: Stroke, well: Well, position: np.ndarray, load: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Polished-rod position (m) and load (kN) over the same cycle."""
    omega = 2 * np.pi * well.spm / 60
    mass_t = well.rod_weight_kn / G  # tonnes, so mass × m/s² is kN
    peak = rng.uniform(0.3, 1.0) * mass_t * omega**2 * well.stroke_m / 2
    inertia = peak * np.cos(2 * np.pi * s.phase)
    friction = (
        rng.uniform(0.0, 0.03) * well.fluid_load_kn * np.tanh(np.sin(2 * np.pi * s.phase) / 0.1)
    )
    ringing = _ring(np.diff(load, append=load[0]), well, rng.uniform(0.1, 0.35))
    polished = well.rod_weight_kn + load + inertia + friction + ringing
    rod = position + (load - load.min()) / well.stiffness_kn_per_m
    return rod, polished


def _instrument(
    rng: np.random.Generator, position: np.ndarray, load: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Noise, quantisation, units and offsets of the measuring instrument."""
    span_x, span_y = np.ptp(position), np.ptp(load)
    position = position + rng.normal(0, rng.uniform(0.001, 0.005) * span_x, position.size)
    load = load + _noise(rng, load.size, rng.uniform(0.01, 0.03) * span_y)
    x_unit = POSITION_UNITS[str(rng.choice(list(POSITION_UNITS)))]
    y_unit = LOAD_UNITS[str(rng.choice(list(LOAD_UNITS)))]
    position = (position - position.min()) * x_unit + rng.choice([0.0, 1.0]) * rng.uniform(
        0, 0.2
    ) * span_x * x_unit
    load = load * y_unit
    if rng.random() < 0.5:  # many instruments report a few hundred steps per axis
        position = _quantise(position, np.ptp(position) / rng.uniform(150, 1000))
        load = _quantise(load, np.ptp(load) / rng.uniform(150, 1000))
    return position, load


def _noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Noise of standard deviation ``sigma``: partly white, partly smooth wiggles (load cells
    and their filters pass vibration of a few per cent of the cycle)."""
    white = rng.uniform(0.15, 0.6)
    width = rng.uniform(0.004, 0.02) * n
    freq = np.fft.fftfreq(n)
    smooth = np.real(
        np.fft.ifft(
            np.fft.fft(rng.normal(0, 1, n)) * np.exp(-0.5 * (2 * np.pi * freq * width) ** 2)
        )
    )
    smooth = smooth / max(float(smooth.std()), 1e-12)
    return sigma * (np.sqrt(white) * rng.normal(0, 1, n) + np.sqrt(1 - white) * smooth)


def _quantise(values: np.ndarray, step: float) -> np.ndarray:
    step = float(10 ** np.floor(np.log10(step)))
    return np.round(values / step) * step


def synth_card(
    rng: np.random.Generator,
    mode: str,
    *,
    kind: str = "surface",
    card_id: str = "synthetic",
    n_points: tuple[int, int] = (60, 1400),
) -> Card:
    """One labelled card of ``mode``."""
    n = int(rng.integers(n_points[0], n_points[1] + 1))
    s = _stroke(rng, n)
    well = _well(rng)
    position, load = _downhole(rng, mode, s, well)
    if kind == "surface":
        position, load = _surface(rng, s, well, position, load)
    else:
        # a downhole card computed from a surface card keeps some residual ringing
        load = load + _ring(np.diff(load, append=load[0]), well, rng.uniform(0.0, 0.1))
        # computed downhole cards carry the offset of an assumed buoyancy and rod weight
        load = load + rng.uniform(-0.1, 0.3) * well.fluid_load_kn
        position = position + 0.02 * well.stroke_m * s.x  # never a zero range
    position, load = _instrument(rng, position, load)
    start = int(rng.integers(0, n))
    return Card(
        card_id,
        np.roll(position, -start),
        np.roll(load, -start),
        kind=kind,
        label=mode,
    )


def class_counts(n: int, modes: Sequence[str] = MODES, imbalance: bool = False) -> dict[str, int]:
    """How many cards of each mode: balanced, or in the field's realistic proportions."""
    weights = np.array([REALISTIC_WEIGHTS[m] if imbalance else 1.0 for m in modes], dtype=float)
    raw = weights / weights.sum() * n
    counts = np.maximum(np.floor(raw).astype(int), 1)
    for i in np.argsort(-(raw - np.floor(raw)))[: max(n - counts.sum(), 0)]:
        counts[i] += 1
    return dict(zip(modes, counts.tolist(), strict=True))


def synth_set(
    n: int,
    *,
    seed: int = 0,
    kind: str = "surface",
    modes: Sequence[str] = MODES,
    imbalance: bool = False,
    n_points: tuple[int, int] = (60, 1400),
) -> list[Card]:
    """``n`` labelled cards; ``kind`` is surface, downhole or mixed (3/4 surface)."""
    rng = np.random.default_rng(seed)
    cards = []
    for mode, count in class_counts(n, modes, imbalance).items():
        for i in range(count):
            k = (
                kind
                if kind != "mixed"
                else ("surface" if rng.random() < MIXED_SURFACE else "downhole")
            )
            cards.append(synth_card(rng, mode, kind=k, card_id=f"{mode}-{i}", n_points=n_points))
    order = rng.permutation(len(cards))
    return [cards[i] for i in order]
