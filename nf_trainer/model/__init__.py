"""Model architectures and factories, each selected by a `conf/model/*.yaml` node."""
