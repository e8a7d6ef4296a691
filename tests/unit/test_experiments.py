"""The ImageNet recipes in conf/experiment/ compose, validate and can be planned, and the
ablation switches of the large-batch study do what they say."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from common.paths import CONF_DIR
from job.config import compose
from launch.plan import main as plan_main
from trainers.models import build_model
from trainers.optim import build_optimizer

RECIPES = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """Parquet shards shaped like a converted ImageNet: enough rows (counted from the
    metadata) for a 64K global batch, the columns the recipes expect."""
    root = tmp_path_factory.mktemp("imagenet_parquet")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    for split, rows in (("train", 70_000), ("val", 1_000)):
        (root / split).mkdir()
        pq.write_table(pa.table({"image": [buffer.getvalue()] * rows,
                                 "label": np.arange(rows) % 1000}),
                       root / split / "part-0.parquet")
    return root


def test_both_recipes_exist():
    assert RECIPES == ["alexnet_bn_imagenet_64k", "resnet50_imagenet_64k"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_validates(recipe, imagenet_like):
    config = compose([f"experiment={recipe}", f"data.path={imagenet_like}"])
    assert config.trainer.global_batch_size == 65536 and config.trainer.num_workers == 1024
    assert (config.optim.name, config.optim.poly_power) == ("lars", 2.0)
    assert config.optim.warmup_epochs > 0 and config.optim.label_smoothing > 0
    assert config.optim.exclude_bn_bias  # weight decay on weights only
    assert config.precision.name == "fp16" and config.data.name == "parquet"
    assert config.model.name == recipe.split("_imagenet")[0]


@pytest.mark.parametrize("recipe", RECIPES)
def test_plan_predicts_the_recipe_on_1024_gpus(recipe, tmp_path, capsys):
    out = tmp_path / "plan.json"
    plan_main(["--experiment", recipe, "--json", str(out), "--profile-image-size", "64"])
    result = json.loads(out.read_text())
    assert result["gpus"] == 1024 and result["model"] == recipe.split("_imagenet")[0]
    assert 0 < result["chosen"]["efficiency"] <= 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)


IMAGENET_TRAIN_IMAGES = 1_281_167
P4D = {"vcpus": 96, "gpus": 8}  # the GPU node of launch/cluster.yaml


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_loss_scale_can_grow_within_the_run(recipe, imagenet_like):
    # ~1,710 optimizer steps on ImageNet: a growth_interval above that (torch's 2000) means
    # the scale can only ever fall. Leave room for several growths.
    config = compose([f"experiment={recipe}", f"data.path={imagenet_like}"])
    steps = config.trainer.epochs * (IMAGENET_TRAIN_IMAGES // config.trainer.global_batch_size)
    assert steps == 1710
    assert config.precision.growth_interval * 5 <= steps


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_leaves_most_of_a_gpu_node_to_the_input_pipeline(recipe, imagenet_like):
    # The loops of a node's 8 GPU workers take at most a quarter of its vCPUs; the rest
    # decode and augment (Ray Data).
    config = compose([f"experiment={recipe}", f"data.path={imagenet_like}"])
    loops = P4D["gpus"] * config.trainer.cpus_per_worker
    assert config.trainer.cpus_per_worker >= 1 and loops <= P4D["vcpus"] / 4
    assert config.data.preprocess_cpus is None  # all the free CPUs


def test_plan_names_a_missing_recipe():
    with pytest.raises(ValueError, match="conf/experiment/nope.yaml"):
        plan_main(["--experiment", "nope"])


def test_fp16_pure_composes_and_builds_fp16_parameters():
    from trainers.precision import Precision

    config = compose(["precision=fp16_pure"])
    model = Precision(config.precision, device_type="cpu").prepare(
        build_model(name="small_resnet", num_classes=10, in_channels=1))
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_exclusion_switch_changes_the_param_groups():
    model = build_model(name="small_resnet", num_classes=10, in_channels=1)
    excluded = build_optimizer(compose([]).optim, model=model)
    ablation = build_optimizer(compose(["optim.exclude_bn_bias=false"]).optim, model=model)
    assert [g["lars_exclude"] for g in excluded.param_groups] == [False, True]
    assert [g["lars_exclude"] for g in ablation.param_groups] == [False]
    assert ablation.param_groups[0]["weight_decay"] > 0
    one_d = {id(p) for p in model.parameters() if p.ndim <= 1}
    assert one_d == {id(p) for p in excluded.param_groups[1]["params"]}
    assert one_d <= {id(p) for p in ablation.param_groups[0]["params"]}
