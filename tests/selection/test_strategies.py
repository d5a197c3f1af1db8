"""The strategy registry: the CLI's list and the registry agree, a new strategy is one registration."""
import pytest

from utils.choices import Strategy
from utils.errors import UserError
from utils.selection import strategies
from utils.selection.run import SelectOptions, Selector
from utils.task.decoding import MULTI_CLASS, Decoder

DECODER = Decoder(MULTI_CLASS, ["a", "b", "c"])


def test_every_cli_strategy_is_registered_and_nothing_else():
    assert sorted(strategies.STRATEGIES) == sorted(s.value for s in Strategy)


def test_an_unknown_strategy_is_a_user_error():
    with pytest.raises(UserError, match="unknown strategy"):
        Selector(SelectOptions(k=2, strategy="nope"), DECODER)


def test_a_new_strategy_is_one_registration(monkeypatch):
    monkeypatch.setattr(strategies, "STRATEGIES", dict(strategies.STRATEGIES))

    @strategies.register
    class Last(strategies.SelectionStrategy):
        """Ranked like entropy, but shows its picks in reverse."""

        name = "entropy"  # reuses entropy's scorer

        def picks(self, pools):
            return list(reversed(super().picks(pools)))

    assert strategies.STRATEGIES["entropy"] is Last
    assert isinstance(Selector(SelectOptions(k=2, strategy="entropy"), DECODER).strategy, Last)
