"""EfficientImageProcessor: images <-> input_ids of the image variants (bos first, raster order over sub-pixels),
saving and AutoImageProcessor loading, the errors, and the sample grid helpers on a tiny GPT-2 over image tokens."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING, AutoImageProcessor

from hf_efficient import VARIANTS, EfficientImageProcessor
from hf_efficient.auto import IMAGE_MODEL_TYPES
from hf_efficient.data.image_processing import image_grid, sample_images

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)  # (batch, H, W, C)
GRAY = RNG.integers(0, 256, (2, 4, 5), dtype=np.uint8)


def test_input_ids_are_bos_then_sub_pixels_in_raster_order():
    processor = EfficientImageProcessor(num_levels=256, num_channels=3)
    out = processor(RGB)
    ids = out["input_ids"]
    assert ids.shape == (3, 1 + 4 * 5 * 3) and ids.dtype == torch.long
    assert (ids[:, 0] == 256).all()
    for row, col, channel in [(0, 0, 0), (0, 0, 2), (1, 3, 1), (3, 4, 2)]:
        expected = torch.from_numpy(RGB[:, row, col, channel].astype(np.int64))
        assert (ids[:, 1 + (row * 5 + col) * 3 + channel] == expected).all()
    assert out["pixel_values"].shape == (3, 3, 4, 5)
    torch.testing.assert_close(out["pixel_values"], torch.from_numpy(RGB).permute(0, 3, 1, 2).float() / 255)


@pytest.mark.parametrize("layout", ["batch_hwc", "list_chw", "pil", "torch_chw"])
def test_rgb_round_trip_is_exact_at_256_levels(layout):
    processor = EfficientImageProcessor(num_levels=256, num_channels=3)
    images = {"batch_hwc": RGB, "list_chw": [image.transpose(2, 0, 1) for image in RGB],
              "pil": [Image.fromarray(image) for image in RGB],
              "torch_chw": torch.from_numpy(RGB).permute(0, 3, 1, 2)}[layout]
    ids = processor(images)["input_ids"]
    back = processor.postprocess(ids, image_size=[4, 5])
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" for image in back)
    np.testing.assert_array_equal(np.stack([np.asarray(image) for image in back]), RGB)


@pytest.mark.parametrize("layout", ["hw", "hw1", "pil"])
def test_grayscale_round_trip_is_exact_at_256_levels(layout):
    processor = EfficientImageProcessor(num_levels=256, num_channels=1, image_size=[4, 5])
    images = {"hw": list(GRAY), "hw1": GRAY[..., None], "pil": [Image.fromarray(image) for image in GRAY]}[layout]
    ids = processor(images)["input_ids"]
    assert ids.shape == (2, 1 + 20)
    np.testing.assert_array_equal(processor.postprocess(ids, output_type="np")[..., 0], GRAY)
    assert processor.postprocess(ids)[0].mode == "L"


@pytest.mark.parametrize("num_levels", [2, 17, 200, 256])
def test_every_level_survives_tokens_to_image_to_tokens(num_levels):
    processor = EfficientImageProcessor(num_levels=num_levels, num_channels=1, image_size=[1, num_levels])
    levels = np.arange(num_levels)
    values = processor.dequantize(levels)
    np.testing.assert_array_equal(processor.quantize(values), levels)
    np.testing.assert_array_equal(processor.quantize(np.arange(256)), np.arange(256) * num_levels // 256)
    ids = torch.cat([torch.tensor([num_levels]), torch.from_numpy(levels)])[None]
    image = processor.postprocess(ids)[0]
    torch.testing.assert_close(processor(image)["input_ids"], ids)


def test_resize_to_image_size():
    processor = EfficientImageProcessor(num_levels=256, num_channels=3, image_size=3)
    ids = processor(Image.fromarray(RGB[0]))["input_ids"]
    assert ids.shape == (1, 1 + 3 * 3 * 3)
    expected = np.asarray(Image.fromarray(RGB[0]).resize((3, 3), resample=Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(processor.postprocess(ids, output_type="np")[0], expected)


def test_save_and_load_through_auto_image_processor(tmp_path):
    processor = EfficientImageProcessor(num_levels=17, num_channels=1, image_size=[8, 8])
    processor.save_pretrained(tmp_path / "alone")
    loaded = AutoImageProcessor.from_pretrained(tmp_path / "alone")
    assert type(loaded) is EfficientImageProcessor
    assert (loaded.num_levels, loaded.num_channels, loaded.image_size) == (17, 1, [8, 8])
    # beside a model of any type (a GPT-2 over image tokens here)
    AutoConfig.for_model("gpt2", vocab_size=18, n_positions=65).save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    assert AutoImageProcessor.from_pretrained(tmp_path / "model").to_dict() == processor.to_dict()
    images = RNG.integers(0, 17, (2, 8, 8)) * 15
    torch.testing.assert_close(loaded(list(images))["input_ids"], processor(list(images))["input_ids"])


def test_registered_for_both_image_model_types():
    assert set(IMAGE_MODEL_TYPES) == {"efficient_axial", "efficient_image_transformer"}
    for model_type in IMAGE_MODEL_TYPES:
        key = VARIANTS[model_type].config
        assert IMAGE_PROCESSOR_MAPPING[key] == {"pil": EfficientImageProcessor, "torchvision": EfficientImageProcessor}


@pytest.mark.parametrize("images, options, message", [
    (RGB, {}, "3 channel(s) (shape (4, 5, 3)), but this processor takes num_channels=1"),
    (Image.fromarray(RGB[0]), {}, "mode 'RGB'"),
    (np.zeros((1, 5, 1), dtype=np.uint8), {}, "input_data_format"),
    (list(GRAY.astype(np.int64) + 1), {}, "give intensities in [0, 255]"),
    (list(GRAY / 255.0), {}, "multiply by 255"),
    ([GRAY[0], GRAY[0, :3]], {}, "set image_size"),
    (list(GRAY), {"image_size": 3, "do_resize": False}, "do_resize=False"),
    (list(GRAY), {"size": 3}, "takes no options ['size']"),
    (np.zeros((2, 2, 2, 2, 2)), {}, "give (H, W)"),
])
def test_bad_images_are_refused(images, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EfficientImageProcessor(num_levels=256, num_channels=1)(images, **options)


def test_bad_tokens_and_settings_are_refused():
    processor = EfficientImageProcessor(num_levels=4, num_channels=1, image_size=[2, 2])
    with pytest.raises(ValueError, match="no image_size"):
        EfficientImageProcessor(num_levels=4, num_channels=1).postprocess(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, 4\) tokens"):
        processor.postprocess(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="must start with bos=4"):
        processor.postprocess(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="a bos inside the image"):
        processor.postprocess(torch.tensor([[4, 0, 4, 1, 2]]))
    for options, message in [({"num_levels": 257}, "num_levels=257"), ({"num_channels": 4}, "num_channels=4"),
                             ({"image_size": [2, 0]}, "image_size")]:
        with pytest.raises(ValueError, match=message):
            EfficientImageProcessor(**options)


def tiny_image_gpt2(processor: EfficientImageProcessor):
    height, width = processor.image_size
    config = AutoConfig.for_model("gpt2", vocab_size=processor.vocab_size, n_embd=16, n_layer=2, n_head=2,
                                  n_positions=1 + height * width * processor.num_channels,
                                  bos_token_id=processor.bos_token_id, eos_token_id=None)
    return AutoModelForCausalLM.from_config(config).eval()


def test_sample_images_never_draws_the_bos_and_fills_the_image():
    processor = EfficientImageProcessor(num_levels=5, num_channels=3, image_size=[3, 2])
    model = tiny_image_gpt2(processor)
    with torch.no_grad():  # make the bos the most likely next token everywhere: sampling must still skip it
        model.transformer.wte.weight[processor.bos_token_id] *= 50
    torch.manual_seed(0)
    images = sample_images(model, processor, 4)
    assert len(images) == 4 and all(image.size == (2, 3) and image.mode == "RGB" for image in images)
    grid = image_grid(images, columns=2, scale=3, padding=1)
    assert grid.size == (2 * 6 + 3, 2 * 9 + 3)
    first = np.asarray(images[0].resize((6, 9), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(np.asarray(grid)[1:10, 1:7], first)


def test_sample_images_refuses_a_processor_of_other_levels():
    model = tiny_image_gpt2(EfficientImageProcessor(num_levels=5, num_channels=1, image_size=2))
    with pytest.raises(ValueError, match="num_levels \\+ 1"):
        sample_images(model, EfficientImageProcessor(num_levels=6, num_channels=1, image_size=2), 1)


@pytest.fixture
def image_model_folder(tmp_path):
    """A tiny GPT-2 over 4x3 grayscale images of 5 levels, its processor saved beside it."""
    processor = EfficientImageProcessor(num_levels=5, num_channels=1, image_size=[4, 3])
    tiny_image_gpt2(processor).save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_sample_images_command_writes_a_grid(image_model_folder, tmp_path, capsys):
    from hf_efficient import cli

    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        assert cli.main(["sample-images", str(image_model_folder), "--num-images", "6", "--columns", "3",
                         "--device", "cpu", "--out", str(path)]) == 0
    assert "6 images of 4x3x1" in capsys.readouterr().out
    grid = Image.open(paths[0])
    assert grid.size == (3 * 3 * 16 + 4, 2 * 4 * 16 + 3)  # 3 x 2 images enlarged 16 times (to 64 pixels), gaps
    assert paths[0].read_bytes() == paths[1].read_bytes()  # the seed fixes the samples


@pytest.mark.parametrize("options, message", [
    (["--class-labels", "0"], "unconditional"),
    (["--num-images", "0"], "--num-images must be at least 1"),
])
def test_sample_images_command_refuses_bad_options(image_model_folder, options, message, capsys):
    from hf_efficient import cli

    assert cli.main(["sample-images", str(image_model_folder), "--device", "cpu", *options]) == 2
    assert message in capsys.readouterr().err


def test_sample_images_command_needs_the_processor_and_labels_of_a_conditional_model(image_model_folder, capsys):
    from hf_efficient import cli

    (image_model_folder / "preprocessor_config.json").unlink()
    assert cli.main(["sample-images", str(image_model_folder), "--device", "cpu"]) == 2
    assert "error: no image processor" in capsys.readouterr().err
    EfficientImageProcessor(num_levels=5, num_channels=1, image_size=[4, 3]).save_pretrained(image_model_folder)
    config = AutoConfig.from_pretrained(image_model_folder)
    config.num_classes = 3  # as a class-conditional image model declares it
    config.save_pretrained(image_model_folder)
    assert cli.main(["sample-images", str(image_model_folder), "--device", "cpu"]) == 2
    assert "class-conditional (3 classes): give --class-labels" in capsys.readouterr().err
    assert cli.main(["sample-images", str(image_model_folder), "--device", "cpu", "--class-labels", "3"]) == 2
    assert "classes are 0..2" in capsys.readouterr().err
