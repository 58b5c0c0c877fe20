"""Jobs: what `mode=train|eval|predict|export` runs, each a short recipe of named steps (`jobs/dispatch.py`)."""
