"""memplan.devices: device names and what is not available here."""

import pytest
import torch

from memplan.devices import parse_device
from memplan.errors import DeviceError


@pytest.mark.parametrize("text, message", [("tpu", "unknown device"), ("cuda:x", "unknown device"),
                                           ("cpu:0", "unknown device")])
def test_unknown_devices_are_refused(text, message):
    with pytest.raises(DeviceError, match=message):
        parse_device(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        parse_device("cuda:0")
