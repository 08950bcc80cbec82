"""``report.html`` after ``test``: every section present, every inlined image decodes and loads in a browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import lightning.pytorch as pl
import pytest
from PIL import Image

from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.models.feature_distance import FeatureDistance
from anomaly_zoo.viz.report import REPORT_SECTIONS

CATEGORIES = ["stripes", "pill"]
WORST = 3  # ReportCollector's default: 3 worst false positives + 3 worst false negatives per category


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    directory = tmp_path_factory.mktemp("report")
    data = SyntheticDataModule(root=str(directory / "data"), category=CATEGORIES, generated_size=48, num_train=6,
                               num_val=8, num_test=8, image_size=48, batch_size=8, num_workers=0)
    model = FeatureDistance(backbone="resnet18", layers=(1,), pretrained=False, results_dir=str(directory / "run"))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=str(directory))
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data)
    path = directory / "run" / "report.html"
    assert path.is_file() and (directory / "run" / "test_results.md").is_file()  # side by side
    return path


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.polylines = 0
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "polyline" and attrs.get("points", "").count(",") >= 2:
            self.polylines += 1
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])


def _expected_ids() -> set[str]:
    per_category = {f"{kind}-{i}" for i in range(len(CATEGORIES)) for kind in ("roc", "pro", "hist", "worst")}
    return set(REPORT_SECTIONS) | per_category


def test_every_section_is_there_and_every_inlined_image_decodes(report):
    text = report.read_text()
    parser = _Collect()
    parser.feed(text)
    assert _expected_ids() <= parser.ids
    assert not parser.external  # self-contained: nothing to fetch
    # 2 categories × (image ROC + pixel ROC + PRO) curves, each with points.
    assert parser.polylines == 3 * len(CATEGORIES)
    assert len(parser.images) == 2 * WORST * len(CATEGORIES)
    for src in parser.images:
        header, payload = src.split(",", 1)
        assert header == "data:image/png;base64"
        picture = Image.open(io.BytesIO(base64.b64decode(payload)))
        picture.load()
        assert picture.size[0] > 0 and picture.mode == "RGB"
    assert text.count('class="threshold"') == len(CATEGORIES)  # the threshold on every histogram
    for category in CATEGORIES:
        assert f"<h3>{category}</h3>" in text
    assert "I-Precision" in text and "Thresholds from the validation split" in text


_CHECK = """<script>window.addEventListener('load', () => {
  const images = [...document.images].map(i => i.complete && i.naturalWidth > 0);
  const sections = [...document.querySelectorAll('section, figure, svg')].map(e => e.getBoundingClientRect().height > 0);
  const out = document.createElement('pre'); out.id = 'render-check';
  out.textContent = JSON.stringify({images: images, sections: sections, width: document.body.scrollWidth});
  document.body.appendChild(out);
});</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium); "
                    "the HTML/PIL test above still checks every image")
def test_the_report_renders_in_headless_chromium_without_broken_images(report, tmp_path):
    page = tmp_path / "page.html"
    page.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))  # a copy: the report stays as written
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    match = re.search(r'<pre id="render-check">(.*?)</pre>', result.stdout, re.S)
    assert match, result.stderr[-2000:]
    check = json.loads(match.group(1).replace("&quot;", '"'))
    assert len(check["images"]) == 2 * WORST * len(CATEGORIES) and all(check["images"])
    assert check["sections"] and all(check["sections"])  # every section, figure and chart has a height
