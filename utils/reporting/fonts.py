"""Fonts that draw Chinese label names in matplotlib: installed CJK fonts first, then a bundled one.

matplotlib's default DejaVu Sans has no CJK glyphs, so on a machine without a CJK font (CI,
containers) Chinese label names came out as boxes. The requirement `pylopdf-fonts-zh-cn` ships
Noto Sans SC (SIL OFL 1.1: the Simplified Chinese subset of Noto Sans CJK, GB 18030 Hanzi plus
Latin and kana); it is registered with matplotlib's font manager on first use, so every machine
has at least that. Installed system fonts still come first: they may cover more (e.g. Hangul).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, List, Optional, Tuple

# Installed fonts with CJK glyphs, best first (looked up by family name in matplotlib's font list).
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "Arial Unicode MS")


@functools.lru_cache(maxsize=None)
def bundled_cjk_font() -> Optional[Tuple[str, str]]:
    """`(family, path)` of the bundled Noto Sans SC, registered with matplotlib; None when not installed."""
    try:
        import pylopdf_fonts_zh_cn
    except ImportError:
        return None
    from matplotlib import font_manager

    path = str(pylopdf_fonts_zh_cn.sans_path())
    font_manager.fontManager.addfont(path)
    return font_manager.get_font(path).family_name, path


def cjk_font_families() -> List[str]:
    """CJK font families in the order text should try them: installed ones from CJK_FONTS, then the bundled one."""
    from matplotlib import font_manager

    bundled = bundled_cjk_font()
    installed = {font.name for font in font_manager.fontManager.ttflist if not bundled or font.fname != bundled[1]}
    families = [name for name in CJK_FONTS if name in installed]
    if bundled and bundled[0] not in families:
        families.append(bundled[0])
    return families


@contextlib.contextmanager
def cjk_font_context() -> Iterator[List[str]]:
    """matplotlib settings under which new text uses the first CJK family and falls back, glyph by
    glyph, to the next ones, then to the configured fonts; yields the CJK families (empty: none)."""
    import matplotlib

    families = cjk_font_families()
    with matplotlib.rc_context({"font.family": families + list(matplotlib.rcParams["font.family"])}):
        yield families
