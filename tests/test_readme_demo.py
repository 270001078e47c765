"""
The README's pre-annotation command, run as written (in a subprocess, with this venv's
opencv-python-headless and no display): it must write one LabelMe file per image and open no window.
"""

import json
import os
import shlex
import subprocess
import sys

import cv2
import numpy as np

from detectron2.checkpoint import DetectionCheckpointer

from multimask.data import load_multimask_labelme_json

from .common import REPO_ROOT, get_tiny_config, get_tiny_model
from .test_readme_head import readme_blocks

HEADING = "### Annotate your own data"


def readme_command(flag: str) -> list:
    """The `python demo/demo.py ...` command of the section's bash block that uses `flag`."""
    for lang, code in readme_blocks(HEADING):
        joined = code.replace("\\\n", " ")
        for line in joined.splitlines():
            if lang == "bash" and line.startswith("python demo/demo.py") and flag in line:
                return shlex.split(line.split("#")[0])
    raise AssertionError(f"no `python demo/demo.py ... {flag}` command under {HEADING!r}")


def test_the_readme_pre_annotation_command_writes_labelme_files_without_a_display(tmp_path):
    command = readme_command("--labelme-output")
    cfg = get_tiny_config(("amodal", "visible"))
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.5
    DetectionCheckpointer(get_tiny_model(cfg), save_dir=str(tmp_path)).save("model_final")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    (tmp_path / "new").mkdir()
    rng = np.random.RandomState(0)
    for i in range(3):  # the crash came after the first image
        image = rng.randint(0, 256, (64, 64, 3), np.uint8)
        cv2.imwrite(str(tmp_path / "new" / f"im{i}.jpg"), image)
    # the README's placeholders: a config file and a run's weights
    names = {"python": sys.executable, "demo/demo.py": os.path.join(REPO_ROOT, "demo", "demo.py")}
    names.update({"<yaml>": str(tmp_path / "tiny.yaml")})
    args = [names.get(a, a) for a in command]
    weights = [i for i, a in enumerate(args) if a.endswith("model_final.pth")]
    assert len(weights) == 1, command
    args[weights[0]] = str(tmp_path / "model_final.pth")
    assert "--output" not in args and "new/" in args  # the command as the README gives it
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "new").glob("*.json"))
    assert written == ["im0.json", "im1.json", "im2.json"]
    for name in written:
        content = json.loads((tmp_path / "new" / name).read_text(encoding="utf-8"))
        assert content["imagePath"] == name[:-5] + ".jpg"  # next to its image, as LabelMe looks
    dicts = load_multimask_labelme_json(str(tmp_path / "new"), mask_names=("amodal", "visible"))
    assert len(dicts) == 3 and sum(len(d["annotations"]) for d in dicts) > 0
