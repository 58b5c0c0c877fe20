"""Where the configs are, and the folder outputs and the MLflow store hang off (never a later cwd).

- From a clone (or an editable install of one): `conf/` at the clone's top, and `outputs/` next to it,
  whatever folder the command starts in.
- Installed from the wheel (`pip install nf-trainer`, the `nf-train` command): `conf/` ships inside the
  package (pyproject.toml maps it to `nf_trainer/conf`), and outputs go to `./outputs` of the folder the
  command starts in, so each experiment repository keeps its own runs. `paths.output_root=` wins in both.
"""
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
CLONE = PACKAGE.parent
SHIPPED_CONF = PACKAGE / "conf"  # only in an installed wheel
IN_CLONE = not SHIPPED_CONF.is_dir() and (CLONE / "conf").is_dir()
CONF_DIR = CLONE / "conf" if IN_CLONE else SHIPPED_CONF


def project_root() -> Path:
    """The clone, or (installed) the folder the command started in: Hydra does not change the cwd (chdir=false)."""
    return CLONE if IN_CLONE else Path.cwd()
