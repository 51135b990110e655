"""Plugin models: importing this package registers them."""
from recbole_kd.models import sasrec  # noqa: F401
