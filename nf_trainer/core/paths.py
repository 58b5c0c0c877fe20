"""Where the project lives. Outputs and the MLflow store hang off it, never off the cwd."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
