"""capsim: capacity planning for computer-vision inference services.

Calibrate a model's batch service times, simulate arrivals, queues and dynamic batching with
SimPy, and answer "can this hardware serve this traffic within this SLO?".
"""

from capsim.config import Scenario, iter_fields, load_scenario, parse_scenario
from capsim.errors import CapsimError, ScenarioError
from capsim.metrics import SimulationResult
from capsim.simulate import simulate

__version__ = "0.1.0"

__all__ = [
    "CapsimError",
    "Scenario",
    "ScenarioError",
    "SimulationResult",
    "__version__",
    "iter_fields",
    "load_scenario",
    "parse_scenario",
    "simulate",
]
