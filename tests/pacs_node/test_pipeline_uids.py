"""A re-run at another strength is another series: the worker's code path gives it new UIDs."""

from __future__ import annotations

from pathlib import Path

from pacs_node.enhancers import EnhancerCache
from pacs_node.pipeline import enhance_series
from pacs_node.settings import Settings
from tests.helpers.synthetic import make_ct_series


def _uids(settings: Settings, paths: list[Path], strength: str) -> list[str]:
    enhancer = EnhancerCache(settings).get("ct-denoise-fast", strength)
    result = enhance_series(paths, "ct-denoise-fast", enhancer, settings.derived, set())
    return [str(result.series_instance_uid)] + [str(ds.SOPInstanceUID) for ds in result.datasets]


def test_strength_is_part_of_the_derived_uids_and_a_same_rerun_reuses_them(
    tmp_path: Path,
) -> None:
    make_ct_series(tmp_path / "in", n_slices=3, rows=48, cols=48)
    paths = sorted((tmp_path / "in").iterdir())
    settings = Settings(data_dir=tmp_path / "var")
    high = _uids(settings, paths, "high")
    assert _uids(settings, paths, "high") == high
    low = _uids(settings, paths, "low")
    assert len(set(low)) == 4 and not set(low) & set(high)
    enhancer = EnhancerCache(settings).get("ct-denoise-fast", "low")
    assert enhancer.info.strength == 0.5
