import numpy as np
import pytest

from faceseg.config import Config
from faceseg.labels import CELEBAMASK_NAMES, CLASS_ID, FLIP_LUT, LABEL_NAMES, build_remap


def test_taxonomy_order():
    assert LABEL_NAMES == ("bg", "face", "lb", "rb", "le", "re", "nose", "ulip", "imouth", "llip", "hair")


def test_flip_lut_swaps_left_and_right_only():
    assert FLIP_LUT[CLASS_ID["lb"]] == CLASS_ID["rb"] and FLIP_LUT[CLASS_ID["re"]] == CLASS_ID["le"]
    assert (FLIP_LUT[FLIP_LUT] == np.arange(11)).all()
    assert FLIP_LUT[CLASS_ID["nose"]] == CLASS_ID["nose"]


def test_celebamask_remap_by_name():
    remap = build_remap(CELEBAMASK_NAMES)
    names = {src: LABEL_NAMES[remap.lut[i]] for i, src in enumerate(CELEBAMASK_NAMES)}
    assert names["skin"] == "face" and names["l_brow"] == "lb" and names["u_lip"] == "ulip"
    assert names["mouth"] == "imouth" and names["l_eye"] == "le"
    assert names["neck"] == "bg" and names["cloth"] == "bg"
    assert set(remap.to_bg) == {"eye_g", "l_ear", "r_ear", "hat", "ear_r", "neck_l", "neck", "cloth"}
    assert "no counterpart" in remap.describe()
    assert remap.lut[len(CELEBAMASK_NAMES)] == 255  # an id the list does not name is invalid


def test_config_yaml_round_trip_and_unknown_keys(tmp_path):
    config = Config().with_overrides({"train.learning_rate": 0.01, "model.depth": 3, "train.epochs": None})
    config.to_yaml(tmp_path / "c.yaml")
    again = Config.from_yaml(tmp_path / "c.yaml")
    assert again == config and again.train.epochs == Config().train.epochs
    (tmp_path / "bad.yaml").write_text("train:\n  learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        Config.from_yaml(tmp_path / "bad.yaml")
