"""Built-in KD losses; each module registers one."""
from recbole_kd.kd.losses import hard, hint, rd, rrd, soft, soft_full  # noqa: F401
