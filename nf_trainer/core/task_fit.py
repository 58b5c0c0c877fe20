"""Does every chosen option serve the chosen task? An option declares the tasks it serves with `_tasks_`
(conf/model/resnet18.yaml: `_tasks_: [classification, multilabel]`); `task=detection model=resnet18` then
fails in one line, before anything is built, naming the options that would fit. An option without
`_tasks_` (a `_target_` of your own) is taken at its word."""
from __future__ import annotations

from omegaconf import DictConfig

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import TASKS_KEY
from nf_trainer.core.paths import CONF_DIR

GROUPS = ("model", "dataset", "transforms", "loss", "metrics")  # the groups whose options depend on the task


def check_task_fit(cfg: DictConfig, choices: dict[str, str] | None = None) -> None:
    """`choices`: Hydra's group -> chosen option (hydra.runtime.choices), for the message."""
    task = cfg.get("task")
    name = task.get("name") if isinstance(task, DictConfig) else None
    if not name:
        return
    for group in GROUPS:
        node = cfg.get(group)
        for path, served in declared(node, group):
            if name not in served:
                raise NfTrainerError(mismatch(name, path, served, choices or {}))


def declared(node, path: str):
    """(key path, the tasks it serves) of `node` and every node inside it that declares `_tasks_`."""
    if not isinstance(node, DictConfig):
        return
    served = node.get(TASKS_KEY)
    if served is not None:
        yield path, [str(t) for t in served]
    for key in node:
        if key != TASKS_KEY:
            yield from declared(node._get_node(key), f"{path}.{key}")  # the raw node: interpolations are not followed


def mismatch(task: str, path: str, served: list[str], choices: dict[str, str]) -> str:
    """'task=detection with model=resnet18: it serves classification, not detection: choose one that does (...)'."""
    group = path.replace(".", "/")  # transforms.augment -> the group transforms/augment
    chosen = choices.get(group)
    what = f"{group}={chosen}" if chosen else path
    fitting = [f"{group}={option}" for option in options_serving(group, task)]
    hint = (f": choose one that does ({', '.join(fitting)})" if fitting
            else f": leave it out (~{group}), since none of its options does" if "/" in group else "")
    return f"task={task} with {what}: it serves {', '.join(served)}, not {task}{hint}"


def options_serving(group: str, task: str) -> list[str]:
    """The options of conf/<group>/ that declare `task`, their own or through their defaults list (read only for
    the error message)."""
    import yaml  # lazy: only on a mismatch

    def serves(path) -> list[str]:
        try:
            node = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return []
        inherited = [t for base in node.get("defaults") or [] if isinstance(base, str) and base != "_self_"
                     for t in serves(path.parent / f"{base}.yaml")]
        return list(node.get(TASKS_KEY) or inherited)

    return [path.stem for path in sorted((CONF_DIR / group).glob("*.yaml")) if task in serves(path)]
