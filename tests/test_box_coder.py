"""Box coder: encode by hand, decode(encode(b)) == b, batched shapes."""
import math

import torch

from ssdlab.model.box_coder import decode, encode


def test_encode_by_hand():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    box = torch.tensor([[0.32, 0.43, 0.72, 0.53]])  # cx 0.52, cy 0.48, w 0.4, h 0.1
    # t_x = (0.52-0.5)/0.2/0.1 = 1, t_y = -1, t_w = log(2)/0.2, t_h = log(0.5)/0.2
    expected = torch.tensor([[1.0, -1.0, math.log(2) / 0.2, math.log(0.5) / 0.2]])
    torch.testing.assert_close(encode(box, prior), expected)
    torch.testing.assert_close(decode(expected, prior), box)


def test_variances_scale_offsets():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    box = torch.tensor([[0.32, 0.43, 0.72, 0.53]])
    torch.testing.assert_close(encode(box, prior, 0.2, 0.4), encode(box, prior) / 2)


def random_boxes(*shape):
    """Valid xyxy boxes with positive width and height."""
    xy = torch.rand(*shape, 2) * 0.7
    wh = torch.rand(*shape, 2) * 0.3 + 0.01
    return torch.cat([xy, xy + wh], dim=-1)


def test_round_trip_single_and_batched():
    torch.manual_seed(0)
    priors = torch.cat([torch.rand(50, 2), torch.rand(50, 2) * 0.5 + 0.05], dim=1)
    boxes = random_boxes(50)
    torch.testing.assert_close(decode(encode(boxes, priors, 0.1, 0.2), priors, 0.1, 0.2), boxes)
    batch = random_boxes(3, 50)
    loc = encode(batch, priors)
    assert loc.shape == (3, 50, 4)
    torch.testing.assert_close(loc[1], encode(batch[1], priors))
    torch.testing.assert_close(decode(loc, priors), batch)


def test_zero_offsets_decode_to_the_prior():
    priors = torch.tensor([[0.3, 0.6, 0.2, 0.4]])
    torch.testing.assert_close(decode(torch.zeros(1, 4), priors), torch.tensor([[0.2, 0.4, 0.4, 0.8]]))
