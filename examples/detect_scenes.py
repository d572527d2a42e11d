"""Detect the items of the built-in test scenes with an exported detection model in ONNX Runtime and draw the boxes.

    python examples/detect_scenes.py runs/ssdlite/ssdlite320_mobilenet_v3_large_adder.onnx --images 8

The model's one graph goes from image to boxes, scores and labels (post-processing included); it runs through
adderconvert.deploy.runtime (make_session, run_dense) on the first test scenes at its input size
(adderconvert.data_scenes.load_scenes). The script prints COCO's mAP on them (pycocotools) and writes one PNG per
scene to --output: the detections scoring at least --min-score as coloured boxes with their class and score, the
true boxes in gray.
"""

import argparse
import sys
from pathlib import Path

from PIL import ImageDraw
from scene_example import colour, fail, open_model, parser, picture, scenes

from adderconvert.deploy.runtime import run_dense
from adderconvert.metrics import coco_map

TRUTH = (128, 128, 128)


def score(text: str) -> float:
    """An argparse type: a score in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return value


def main() -> int:
    arguments = parser(__doc__.splitlines()[0], "detected_scenes")
    arguments.add_argument("--min-score", type=score, default=0.3, help="the lowest score drawn (default 0.3)")
    args = arguments.parse_args()
    opened = open_model(args, "detection")
    if isinstance(opened, str):
        return fail(opened)
    session, metadata, size = opened
    data, images, targets = scenes("detection", args.images, size, int(metadata.get("seed", 0)))
    classes = metadata.get("classes") or data.classes
    detections = run_dense(session, images)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    drawn = 0
    for index, (image, found, target) in enumerate(zip(images, detections, targets)):
        scene = picture(image, data, args.scale)
        draw = ImageDraw.Draw(scene)
        for box in target["boxes"].tolist():
            draw.rectangle([v * args.scale for v in box], outline=TRUTH)
        for box, value, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist()):
            if value < args.min_score:
                continue
            corners = [v * args.scale for v in box]
            name = classes[label] if label < len(classes) else str(label)
            draw.rectangle(corners, outline=colour(label, len(classes)), width=2)
            draw.text((corners[0] + 2, corners[1] + 1), f"{name} {value:.2f}", fill=colour(label, len(classes)))
            drawn += 1
        scene.save(output / f"scene_{index:04d}.png")
    scores = coco_map(detections, targets)
    form, settings = metadata.get("adder_form", "?"), metadata.get("postprocess")
    print(f"{args.model}: {form} form, {size} px, post-processing {settings}")
    print(f"mAP {100 * scores['map']:.2f}, mAP@.5 {100 * scores['map_50']:.2f} on {args.images} scenes")
    print(f"wrote {args.images} PNGs to {output}: {drawn} detections scoring {args.min_score} or more, truths in gray")
    return 0


if __name__ == "__main__":
    sys.exit(main())
