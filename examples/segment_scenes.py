"""Segment the built-in test scenes with an exported segmentation model in ONNX Runtime and draw the masks.

    python examples/segment_scenes.py runs/lraspp/lraspp_mobilenet_v3_large_adder.onnx --images 8

The model (any form: custom op, fused, INT8, portable) runs through adderconvert.deploy.runtime (make_session,
run_dense) on the first test scenes at its input size (adderconvert.data_scenes.load_scenes); the script prints the
mIoU and pixel accuracy on them and writes one PNG per scene to --output: the scene, the predicted classes as
colours over it, and the true ones.
"""

import sys
from pathlib import Path

import torch
from PIL import Image
from scene_example import colour, fail, open_model, parser, picture, scenes

from adderconvert.deploy.runtime import run_dense
from adderconvert.metrics import confusion_matrix, segmentation_scores

ALPHA = 0.6  # how much of a class's colour covers the scene where it is predicted


def overlay(scene: Image.Image, mask: torch.Tensor, count: int) -> Image.Image:
    """``scene`` with each pixel of a class other than the background tinted with the class's colour."""
    palette = torch.tensor([colour(c, count) for c in range(count)], dtype=torch.uint8)
    valid = mask.clamp(0, count - 1)
    tint = Image.fromarray(palette[valid].numpy()).resize(scene.size, Image.NEAREST)
    painted = Image.fromarray(((mask > 0) & (mask < count)).byte().numpy() * int(255 * ALPHA))
    return Image.composite(tint, scene, painted.resize(scene.size, Image.NEAREST))


def main() -> int:
    args = parser(__doc__.splitlines()[0], "segmented_scenes").parse_args()
    opened = open_model(args, "segmentation")
    if isinstance(opened, str):
        return fail(opened)
    session, metadata, size = opened
    data, images, masks = scenes("segmentation", args.images, size, int(metadata.get("seed", 0)))
    logits = run_dense(session, images)
    count = logits.shape[1]
    if count != data.num_classes:
        return fail(f"the model has {count} classes, the scenes {data.num_classes} ({', '.join(data.classes)})")
    predicted, truth = logits.argmax(1), torch.stack(masks)
    scores = segmentation_scores(confusion_matrix(predicted, truth, count))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for index, (image, prediction, mask) in enumerate(zip(images, predicted, truth)):
        scene = picture(image, data, args.scale)
        panels = [scene, overlay(scene, prediction, count), overlay(scene, mask, count)]
        sheet = Image.new("RGB", (scene.width * 3 + 8, scene.height), (255, 255, 255))
        for number, panel in enumerate(panels):
            sheet.paste(panel, (number * (scene.width + 4), 0))
        sheet.save(output / f"scene_{index:04d}.png")
    print(f"{args.model}: {metadata.get('adder_form', '?')} form, {size} px, classes {', '.join(data.classes)}")
    miou, accuracy = 100 * scores["miou"], 100 * scores["pixel_accuracy"]
    print(f"mIoU {miou:.2f}%, pixel accuracy {accuracy:.2f}% on {args.images} scenes")
    print(f"wrote {args.images} PNGs (scene | predicted | true) to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
