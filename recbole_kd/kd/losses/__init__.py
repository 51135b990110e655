"""Built-in KD losses, one module each (importing this package registers them), and the lookup by name."""
from recbole_kd.kd.base import KD_LOSSES, KDLoss
from recbole_kd.kd.losses import hard, hint, rd, rrd, soft, soft_full  # noqa: F401  (each registers its loss)


def get_kd_loss(name: str) -> KDLoss:
    """The registered KD loss ``name`` (built-in, or registered by a plugin file with ``register_kd_loss``)."""
    if name not in KD_LOSSES:
        raise KeyError(f"unknown KD loss {name!r}; available: {', '.join(sorted(KD_LOSSES))}")
    return KD_LOSSES[name]
