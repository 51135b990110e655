"""recbole-kd: knowledge distillation and transfer for recommender systems, on RecBole."""
from recbole_kd import compat

compat.apply()

__version__ = "0.1.0"

from recbole_kd.registry import get_model, get_trainer, register_model  # noqa: E402

__all__ = ["get_model", "get_trainer", "register_model", "__version__"]
