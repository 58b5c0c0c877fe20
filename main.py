"""nf_trainer entry point: Hydra composes conf/ from the command line, then the job runs.

Only the job imports torch and mlflow, so `--help` and `--cfg job` stay fast.
"""
import hydra
from omegaconf import DictConfig

from nf_trainer.config import register_configs
from nf_trainer.errors import one_line_errors

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from nf_trainer.run import run

    return run(cfg)


if __name__ == "__main__":
    with one_line_errors():
        main()
