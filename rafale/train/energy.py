"""Energy and carbon of a training run (`logging.energy: true`), with codecarbon, offline.

    check_energy(cfg)                       # plan time: codecarbon importable, the country known
    energy = EnergyTracker(country="USA")   # a Composer callback; rank 0 measures, the others do nothing
    energy.summary()                        # {"kwh": ..., "kg_co2eq": ..., "method": "cpu_load"}

codecarbon's OfflineEmissionsTracker runs from fit start to the trainer's close (after the final evaluation,
or an interrupt) in "process" mode: it counts this process's share of the CPU, the RAM it holds and, on
NVIDIA GPUs, their power read by NVML. It writes no file (no emissions.csv) and calls nothing on the
network: the carbon intensity is the country's yearly average from codecarbon's own tables. Each
checkpoint stores the energy so far, so a resumed run adds its segments together.

How the CPU's power is known decides how much to trust the figure: with RAPL counters (Intel and AMD on
Linux, when readable) it is measured; without them codecarbon estimates it from the process's CPU load
and the CPU model's TDP ("cpu_load"), or assumes a constant TDP ("tdp"). `method` says which.
"""

from __future__ import annotations

import logging

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from rafale.config import Config
from rafale.errors import ConfigError

# codecarbon's names for how it reads the CPU's power -> rafale's, and the summary line for each
METHODS = {"intel_rapl": "rapl", "cpu_load": "cpu_load", "constant": "tdp"}
EXPLAINED = {"rapl": "measured by RAPL counters",
             "cpu_load": "estimated from CPU load and the CPU's TDP, no RAPL counters",
             "tdp": "estimated from the CPU's TDP at full load, no RAPL counters"}


def check_energy(cfg: Config) -> None:
    """logging.energy needs codecarbon, and a country its tables know.

    Raises:
        ConfigError: codecarbon cannot be imported, or logging.energy_country is not in its tables.
    """
    if not cfg.logging.energy:
        return
    try:
        from codecarbon.input import DataSource
    except ImportError as e:
        raise ConfigError(f"logging.energy: true needs the codecarbon package, which cannot be imported ({e}); "
                          f"pip install -r cpu-requirements.txt, or set logging.energy: false") from None
    country = cfg.logging.energy_country
    if country not in DataSource().get_global_energy_mix_data():
        raise ConfigError(f"logging.energy_country: {country!r} is not a country codecarbon knows; expected an "
                          f"ISO 3166 alpha-3 code such as USA, FRA, CAN, DEU")


class _Totals:
    """A codecarbon output handler that keeps the latest totals instead of writing them anywhere."""

    def __init__(self):
        self.kwh, self.kg = 0.0, 0.0

    def out(self, total, delta) -> None:
        self.kwh, self.kg = float(total.energy_consumed), float(total.emissions)

    def live_out(self, total, delta) -> None:
        pass

    def task_out(self, data, experiment_name) -> None:
        pass

    def exit(self) -> None:
        pass


class EnergyTracker(Callback):
    """Tracks energy on rank 0 from fit start to the trainer's close; earlier segments of a resumed run come from the
    checkpoint (`state_dict`)."""

    def __init__(self, country: str):
        self.country = country
        self.kwh_before, self.kg_before = 0.0, 0.0  # segments before a resume
        self.method: str | None = None
        self._tracker = None
        self._totals = _Totals()

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0 or self._tracker is not None:
            return
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)  # it logs at INFO before reading log_level
        self._totals = _Totals()
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.country, tracking_mode="process", output_methods=[],
            output_handlers=[self._totals], log_level="error", allow_multiple_runs=True,  # no lock file
            project_name="rafale")
        self._tracker.start()
        self.method = cpu_method(self._tracker)

    def close(self, state: State, logger: Logger) -> None:  # after the final evaluation, or an interrupt
        self.stop()

    def stop(self) -> None:
        if self._tracker is not None:
            self._tracker.stop()  # hands the final totals to _Totals
            self._tracker = None

    def state_dict(self) -> dict:
        if self._tracker is not None:
            self._tracker.flush()  # the totals up to this checkpoint
        kwh, kg = self.totals()
        return {"kwh": kwh, "kg_co2eq": kg}

    def load_state_dict(self, state: dict) -> None:
        self.kwh_before, self.kg_before = float(state.get("kwh", 0.0)), float(state.get("kg_co2eq", 0.0))

    def totals(self) -> tuple[float, float]:
        return self.kwh_before + self._totals.kwh, self.kg_before + self._totals.kg

    def summary(self) -> dict:
        kwh, kg = self.totals()
        return {"kwh": kwh, "kg_co2eq": kg, "method": self.method or "unknown"}


def cpu_method(tracker) -> str:
    """How codecarbon reads the CPU's power ("rapl", "cpu_load", "tdp"), plus "+nvml" when it reads GPUs.
    codecarbon exposes this only on its hardware objects."""
    modes = [getattr(h, "_mode", None) for h in getattr(tracker, "_hardware", []) if type(h).__name__ == "CPU"]
    method = METHODS.get(modes[0], modes[0]) if modes and modes[0] else "unknown"
    if any(type(h).__name__ == "GPU" for h in getattr(tracker, "_hardware", [])):
        method += "+nvml"
    return method


def summary_line(energy: dict) -> str:
    """The summary table's row: '0.0012 kWh, 0.00045 kg CO2-eq (estimated from CPU load ...)'."""
    cpu = energy["method"].split("+")[0]
    how = EXPLAINED.get(cpu, f"codecarbon method {cpu}")
    if energy["method"].endswith("+nvml"):
        how += "; GPUs measured by NVML"
    return f"{energy['kwh']:.3g} kWh, {energy['kg_co2eq']:.3g} kg CO2-eq  ({how})"
