"""cluster.yaml is a valid Ray cluster-launcher config and holds no credentials."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_validates_against_rays_own_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = _config()
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]


def test_head_takes_no_work_and_gpu_workers_scale_from_zero():
    config = _config()
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert workers and all(n.get("min_workers", 0) == 0 for n in workers)
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])


def test_image_matches_pinned_ray_and_python():
    import ray

    image = _config()["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-py311"), image
    assert "ray-ml" not in image


def test_no_credentials():
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"(?i)(secret|password|token|aws_access_key_id|AKIA[0-9A-Z]{12})\s*[:=]", text)
