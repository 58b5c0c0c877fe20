"""create_instance: Hydra targets, short names, the original design's {module, args} form, kwargs, clear errors."""
import pytest
import torch
from omegaconf import OmegaConf

from nf_trainer import NfTrainerError, create_instance


def params():
    return torch.nn.Linear(2, 2).parameters()


def test_dotted_target_as_in_hydra():
    opt = create_instance(OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1}), params=params())
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.1


def test_short_target_looked_up_in_module():
    opt = create_instance({"_target_": "Adam", "lr": 0.01}, torch.optim, params=params())
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 0.01


def test_module_args_form():
    opt = create_instance({"module": "SGD", "args": {"lr": 0.01, "momentum": 0.5}}, torch.optim, params=params())
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["lr"] == 0.01 and opt.defaults["momentum"] == 0.5


def test_kwargs_override_config_values():
    opt = create_instance({"_target_": "torch.optim.SGD", "lr": 0.1}, params=params(), lr=0.5)
    assert opt.defaults["lr"] == 0.5


def test_unknown_short_name_suggests_close_names():
    cfg = OmegaConf.create({"optimizer": {"_target_": "Adamm", "lr": 0.1}})
    with pytest.raises(NfTrainerError) as err:
        create_instance(cfg.optimizer, torch.optim, params=params())
    message = str(err.value)
    assert message.startswith("unknown optimizer 'Adamm' in torch.optim; did you mean")
    assert "'Adam'" in message and "'AdamW'" in message and "\n" not in message


def test_unknown_dotted_name_suggests_close_names():
    with pytest.raises(NfTrainerError, match=r"unknown object 'SGDD' in torch.optim; did you mean 'SGD'"):
        create_instance({"_target_": "torch.optim.SGDD"}, params=params())


def test_bad_argument_is_one_line():
    with pytest.raises(NfTrainerError) as err:
        create_instance(OmegaConf.create({"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1, "momentun": 0.9}}).optimizer,
                        params=params())
    assert "momentun" in str(err.value) and "\n" not in str(err.value)
