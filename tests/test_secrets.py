"""Config values under secret-looking keys never reach MLflow in clear: params, tags, run names, artifacts."""
import pytest
import yaml

from nf_trainer.tracking.secrets import MASK, is_secret_key, redact, scrub
from tests.conftest import client, composed, rerun_argv, run_here, runs

SECRETS = {"db.password": "hunter2-db-pass", "hf.token": "envtok-98765", "mlflow.tags.api_key": "tagkey-55555"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A one-job sweep (so a parent run too) given a password, an env-var token and a secret tag."""
    out = tmp_path_factory.mktemp("secrets") / "outputs"
    out.mkdir()
    run_here("-m", "debug=fast", f"+db.password={SECRETS['db.password']}", "+hf.token=${oc.env:NF_TEST_TOKEN}",
             f"+mlflow.tags.api_key={SECRETS['mlflow.tags.api_key']}", out=out, env={"NF_TEST_TOKEN": SECRETS["hf.token"]})
    return out, runs(out)


def leaks(data: bytes) -> list[str]:
    return [secret for secret in SECRETS.values() if secret.encode() in data]


def test_params_tags_and_names_are_masked(sweep):
    out, found = sweep
    assert len(found) == 2  # the sweep's parent and its job
    for run in found:
        texts = [run.info.run_name, *run.data.params.values(), *run.data.tags.values()]
        assert not leaks("\n".join(texts).encode()), run.info.run_name
    (job,) = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert {key: job.data.params[key] for key in SECRETS} == {key: MASK for key in SECRETS}
    assert job.data.tags["api_key"] == MASK
    assert f"+db.password={MASK} " in job.data.tags["overrides"]
    assert job.data.params["trainer.max_epochs"] == "1"  # the rest is logged as usual


def test_artifacts_and_the_store_hold_no_secret(sweep, tmp_path):
    out, found = sweep
    (job,) = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    local = client(out).download_artifacts(job.info.run_id, "", str(tmp_path))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.relative_to(local).as_posix() for p in files}
    assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/hydra.yaml", "hydra/config_resolved.yaml",
            "checkpoints/best-loss.pt", "main.log"} <= names
    for path in files:  # text and checkpoints (the config stored in them) alike
        assert not leaks(path.read_bytes()), path
    logged = yaml.safe_load((tmp_path / "hydra/config_resolved.yaml").read_text())  # still valid YAML
    assert logged["db"]["password"] == logged["hf"]["token"] == MASK and logged["optimizer"]["lr"] == 0.003
    # everything MLflow holds: the database itself and every artifact file
    for path in [out / "mlflow.db", *(out / "mlartifacts").rglob("*")]:
        if path.is_file():
            assert not leaks(path.read_bytes()), path


def test_rerun_asks_for_the_secrets_again(sweep, capsys, monkeypatch):
    out, found = sweep
    (job,) = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    monkeypatch.setenv("NF_TEST_TOKEN", SECRETS["hf.token"])
    cfg = composed(rerun_argv(f"rerun={job.info.run_id}", out=out))
    assert "pass them again if the run needs them: db.password, mlflow.tags.api_key" in capsys.readouterr().err
    assert MASK not in yaml.safe_dump(cfg)  # a mask is never put back as a value
    assert cfg["hf"]["token"] == "envtok-98765"  # an ${oc.env:...} reference is not a secret: it is kept


@pytest.mark.parametrize("key,secret", [("db.password", True), ("hf_token", True), ("mlflow.tags.api_key", True),
                                        ("aws.secret_access_key", True), ("max_tokens", False), ("tokenizer", False),
                                        ("optimizer.lr", False)])
def test_secret_looking_keys(key, secret):
    assert is_secret_key(key) is secret


def test_redact_and_scrub_mask_values_not_references():
    tree = {"db": {"password": "x1", "host": "h"}, "list": [{"token": "t2"}], "none": {"api_key": None}}
    assert redact(tree) == {"db": {"password": MASK, "host": "h"}, "list": [{"token": MASK}], "none": {"api_key": None}}
    text = "db.password=hunter2 api_key: 'abc' token=${oc.env:T} seen hunter3 max_tokens=5"
    assert scrub(text, {"hunter3"}) == f"db.password={MASK} api_key: '{MASK}' token=${{oc.env:T}} seen {MASK} max_tokens=5"
