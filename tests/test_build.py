import os

import pytest

from bertfast import _backend


def test_extension_is_built():
    assert _backend.extension() is not None, "bertfast._C did not import: run scripts/setup_env.sh"


@pytest.mark.skipif(os.environ.get("BERTFAST_EXPECT_CUDA_BUILD") != "1",
                    reason="only where scripts/test.sh found nvcc (it sets BERTFAST_EXPECT_CUDA_BUILD=1)")
def test_cuda_sources_compiled_in():
    assert _backend.extension().has_cuda(), "nvcc is on PATH but bertfast._C was built without its CUDA sources"
