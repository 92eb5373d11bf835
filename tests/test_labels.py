"""Taxonomies from class names alone: flip pairs, Helen groups, colours, name remaps."""
import numpy as np
import pytest

from faceseg.labels import (CELEBAMASK_NAMES, HELEN, HELEN_NAMES, LAPA_NAMES, Taxonomy, TaxonomyMismatch,
                            build_remap)

FASSEG = Taxonomy(("background", "skin", "hair", "eyes", "nose", "mouth"))


def pairs(taxonomy: Taxonomy) -> set[tuple[str, str]]:
    return {(taxonomy.names[a], taxonomy.names[b]) for a, b in taxonomy.flip_pairs}


def test_helen_order_and_flip_pairs():
    assert HELEN.names == ("bg", "face", "lb", "rb", "le", "re", "nose", "ulip", "imouth", "llip", "hair")
    assert pairs(HELEN) == {("lb", "rb"), ("le", "re")}
    lut = HELEN.flip_lut
    assert lut[HELEN_NAMES.index("lb")] == HELEN_NAMES.index("rb") and lut[HELEN_NAMES.index("re")] == HELEN_NAMES.index("le")
    assert (lut[lut] == np.arange(11)).all() and lut[HELEN_NAMES.index("nose")] == HELEN_NAMES.index("nose")


def test_celebamask_flip_pairs_leave_earrings_and_necklaces_alone():
    celeba = Taxonomy(CELEBAMASK_NAMES)
    assert pairs(celeba) == {("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")}
    assert celeba.flip_lut[CELEBAMASK_NAMES.index("ear_r")] == CELEBAMASK_NAMES.index("ear_r")
    assert celeba.flip_lut[CELEBAMASK_NAMES.index("neck_l")] == CELEBAMASK_NAMES.index("neck_l")
    assert "l_ear<->r_ear" in celeba.describe_flip()


def test_fasseg_has_no_pairs_and_lapa_spelling_is_helen():
    assert FASSEG.flip_pairs == () and (FASSEG.flip_lut == np.arange(6)).all()
    assert "nothing swapped" in FASSEG.describe_flip()
    lapa = Taxonomy(LAPA_NAMES)
    assert lapa.is_helen and pairs(lapa) == {("left_eyebrow", "right_eyebrow"), ("left_eye", "right_eye")}
    assert not FASSEG.is_helen and FASSEG.default_metric == "val_f1_mean"
    assert HELEN.default_metric == "val_f1_overall" and "val_f1_eyes" in HELEN.metric_names()
    assert Taxonomy(("Left Eye", "right eye", "x")).flip_pairs == ((0, 1),)


def test_any_n_from_2_to_255_gets_distinct_colours():
    for n in (2, 19, 40, 255):
        taxonomy = Taxonomy(tuple(f"class {i}" for i in range(n)))
        assert taxonomy.palette.shape == (n, 3)
    assert len({tuple(c) for c in Taxonomy(CELEBAMASK_NAMES).palette}) == 19
    with pytest.raises(ValueError, match="2 to 255"):
        Taxonomy(("only",))
    with pytest.raises(ValueError, match="must differ"):
        Taxonomy(("a", "b", "A"))


def test_celebamask_remap_into_helen_by_name():
    remap = build_remap(Taxonomy(CELEBAMASK_NAMES), HELEN, allow_unmapped=True)
    names = {src: HELEN_NAMES[remap.lut[i]] for i, src in enumerate(CELEBAMASK_NAMES)}
    assert names["skin"] == "face" and names["l_brow"] == "lb" and names["u_lip"] == "ulip"
    assert names["mouth"] == "imouth" and names["l_eye"] == "le"
    assert names["neck"] == "bg" and names["cloth"] == "bg"
    assert set(remap.unmapped) == {"eye_g", "l_ear", "r_ear", "hat", "ear_r", "neck_l", "neck", "cloth"}
    assert "no counterpart" in remap.describe()
    assert remap.lut[len(CELEBAMASK_NAMES)] == 255  # an id the list does not name is invalid
    with pytest.raises(TaxonomyMismatch, match="eye_g, l_ear"):
        build_remap(Taxonomy(CELEBAMASK_NAMES), HELEN)
    assert build_remap(Taxonomy(LAPA_NAMES), HELEN).is_identity
