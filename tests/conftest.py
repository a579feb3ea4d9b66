"""Shared fixtures. The real data sets come through the one data setting
($DRIFTLINE_DATA_DIR, default ../shared/data); a test that needs them fails loudly without them."""
from __future__ import annotations

import pytest

from pipelines.config import DataDirMissing, data_dir


@pytest.fixture(scope="session")
def shared_data():
    try:
        return data_dir()
    except DataDirMissing as e:
        pytest.fail(str(e), pytrace=False)
