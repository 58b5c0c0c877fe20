"""Commands beside `main.py`: the runs table, rerun, the MLflow UI, data preparation."""
