"""``make demo``: the main job end to end on the embedded default backend (ONNX Runtime, CPU).

Builds an engine set (real checkpoints when you pass ``--weights-dir``/``--models-dir``,
otherwise a small, clearly labelled, RANDOMLY initialised one so it finishes in a few minutes on
a 2-core machine), writes photographs that ship inside installed packages plus degraded copies,
and runs ``dfd-export detect`` on them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dfd.calibration.degrade import fixed_degradation
from dfd.calibration.degrade_files import write_png
from dfd.calibration.sources import builtin_photographs

from .cli import main as cli
from .cli_errors import colour
from .cli_types import GivenPath

# A small DINOv2/CLIP pair (ViT-Ti-like) so the random demo set builds in well under a minute.
DEMO_DINOV2 = {"model_type": "dinov2", "hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 3,
               "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "use_swiglu_ffn": True, "layer_norm_eps": 1e-6}
DEMO_CLIP = {"model_type": "clip", "vision_config": {"hidden_size": 192, "intermediate_size": 768,
             "num_hidden_layers": 6, "num_attention_heads": 3, "patch_size": 14, "image_size": 224,
             "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}}
DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "grace_hopper")


def _write_demo_models(root: Path) -> Path:
    for folder, config in (("dinov2-giant", DEMO_DINOV2), ("clip-vit-large-patch14", DEMO_CLIP)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "config.json").write_text(json.dumps(config, indent=2))
    return root


def _write_photos(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    jpeg10 = fixed_degradation("jpeg10")
    for source, rgb in builtin_photographs():
        name = Path(source.split(":", 1)[-1]).stem  # "skimage:astronaut.png" -> "astronaut"
        if name not in DEMO_PHOTOS:
            continue
        write_png(folder / f"{name}.png", rgb)  # raises on a full disk (cv2.imwrite returned False)
        write_png(folder / f"{name}_jpeg10.png", jpeg10(rgb))


@click.command()
@click.option("--out", type=GivenPath(), default=Path("demo-out"), show_default=True)
@click.option("--weights-dir", type=GivenPath(file_okay=False, exists=True), default=None,
              help="Real reference checkpoints (then --models-dir too).")
@click.option("--models-dir", type=GivenPath(file_okay=False, exists=True), default=None)
def demo(out: Path, weights_dir: Path | None, models_dir: Path | None) -> None:
    """Build an engine set and score packaged photographs (and JPEG-q10 copies) with it."""
    if weights_dir is not None and models_dir is None:
        raise click.UsageError("--weights-dir needs --models-dir (the backbone config.json files)")
    out.mkdir(parents=True, exist_ok=True)
    if models_dir is None:
        models_dir = _write_demo_models(out / "models")
        click.secho("demo: building a SMALL RANDOMLY INITIALISED engine set (scores are meaningless; "
                    "pass --weights-dir/--models-dir for the real detector)", fg="yellow", err=True, color=colour())
    engines = out / "engines"
    build_args = ["build", "--out", str(engines), "--models-dir", str(models_dir), "--force"]
    if weights_dir is not None:
        build_args += ["--weights-dir", str(weights_dir)]
    cli.main(build_args, prog_name="dfd-export", standalone_mode=False)
    _write_photos(out / "images")
    click.echo(f"\ndemo: dfd-export detect {engines} {out / 'images'}\n", err=True)
    try:
        cli.main(["detect", str(engines), str(out / "images")], prog_name="dfd-export")
    except SystemExit as exit_:
        sys.exit(exit_.code)


if __name__ == "__main__":
    demo()
