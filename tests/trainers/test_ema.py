import pytest
import torch

from studio.trainers.ema import EMA


def test_ema_is_the_warmed_up_moving_average_and_follows_its_model_to_another_device():
    model = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=5)  # d = min(0.9, 6 / 15) = 0.4
    expected = 0.4 * start["weight"] + 0.6 * model.weight.detach()
    torch.testing.assert_close(ema.shadow["weight"], expected)

    model.to(torch.float64)  # a move after the EMA was made (on an accelerator: .to("cuda")) is followed
    ema.update(model, step=100)
    assert ema.shadow["weight"].dtype == torch.float32  # the average stays in float32
    model.to("meta")
    ema.update(model, step=100)
    assert ema.shadow["weight"].device.type == "meta"


def test_ema_refuses_a_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(torch.nn.Linear(2, 2), decay=1.0)
