"""A dataset builder for tests: the digits set with class names that are not their indices ('zero', ...),
so a mix-up of index and name shows in reports and predictions. Selected with
`dataset._target_=tests.named_digits.named_digits` (main.py runs from the project root)."""
from nf_trainer.dataset.digits import digits

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def named_digits(**kwargs):
    data = digits(**kwargs)
    data.classes = list(NAMES)
    return data
