import numpy as np
import pytest
import tensorflow as tf

from faceseg.data.augment import Augmentation, augment_batch, flip_batch
from faceseg.data.synth import render_face, write_synthetic_dataset
from faceseg.labels import HELEN, HELEN_NAMES as LABEL_NAMES, Taxonomy, read_label_names


CLASS_ID = {name: i for i, name in enumerate(LABEL_NAMES)}
FLIP_LUT = HELEN.flip_lut


def test_synth_is_deterministic_and_seed_dependent(tmp_path):
    a, la = render_face(np.random.default_rng([1, 0, 5]), 128)
    b, lb = render_face(np.random.default_rng([1, 0, 5]), 128)
    c, _ = render_face(np.random.default_rng([2, 0, 5]), 128)
    assert (a == b).all() and (la == lb).all() and not (a == c).all()


def test_synth_layout_and_class_frequencies(tmp_path):
    info = write_synthetic_dataset(tmp_path, train=40, test=4, size=128, seed=0)
    assert len(list((tmp_path / "train").glob("*_image.jpg"))) == 40
    assert len(list((tmp_path / "test").glob("*_label.png"))) == 4
    assert read_label_names(tmp_path / "label_names.txt").names == LABEL_NAMES
    assert (info["train"], info["test"], info["size"]) == (40, 4, 128)
    assert info["images_per_second"] == pytest.approx(44 / info["seconds"])
    labels = np.stack([render_face(np.random.default_rng(i), 128)[1] for i in range(30)])
    freq = np.bincount(labels.ravel(), minlength=11) / labels.size
    assert (freq > 0).all()                                   # every class appears
    assert freq[CLASS_ID["le"]] < 0.01 and freq[CLASS_ID["lb"]] < 0.01   # eyes and brows are small
    assert freq[CLASS_ID["bg"]] > 0.3


def test_left_eye_is_on_the_image_left_when_upright():
    for seed in range(20):
        _, label = render_face(np.random.default_rng(seed), 128)
        le_x = np.argwhere(label == CLASS_ID["le"])[:, 1].mean()
        re_x = np.argwhere(label == CLASS_ID["re"])[:, 1].mean()
        assert le_x < re_x   # in-plane rotation is at most 25 degrees


def _batch(n=4, size=64):
    pairs = [render_face(np.random.default_rng(i), size) for i in range(n)]
    return tf.constant(np.stack([p[0] for p in pairs])), tf.constant(np.stack([p[1] for p in pairs]))


def test_flip_twice_is_identity_and_swaps_left_right():
    images, masks = _batch()
    gen = tf.random.Generator.from_seed(0)
    # Always flip: compare with a manual mirror of the whole batch.
    flipped_once = (tf.reverse(images, [2]), tf.gather(FLIP_LUT, tf.cast(tf.reverse(masks, [2]), tf.int32)))
    mirror = flipped_once[1].numpy()
    le_before = (masks.numpy() == CLASS_ID["le"]).sum()
    assert (mirror == CLASS_ID["re"]).sum() == le_before          # left became right
    twice = FLIP_LUT[mirror[:, :, ::-1]]
    assert (twice == masks.numpy()).all()
    # The random flip: each image either unchanged or exactly mirrored with swapped classes.
    out_images, out_masks = augment_batch(images, masks, Augmentation("flip", FLIP_LUT), gen)
    for i in range(images.shape[0]):
        same = (out_masks[i].numpy() == masks[i].numpy()).all()
        mirrored = (out_masks[i].numpy() == mirror[i]).all()
        assert same or mirrored


def test_cpu_flip_mirrors_about_half_and_swaps_left_right_like_the_tensorflow_one():
    images, masks = (t.numpy() for t in _batch(n=32))
    mirror_images = images[:, :, ::-1]
    mirror_masks = FLIP_LUT[masks[:, :, ::-1]]
    out_images, out_masks = flip_batch(images.copy(), masks.copy(), FLIP_LUT, np.random.default_rng(0))
    mirrored = [(out_images[i] == mirror_images[i]).all() and (out_masks[i] == mirror_masks[i]).all()
                for i in range(32)]
    same = [(out_images[i] == images[i]).all() and (out_masks[i] == masks[i]).all() for i in range(32)]
    assert all(m or s for m, s in zip(mirrored, same)) and 8 <= sum(mirrored) <= 24
    fasseg_lut = np.arange(6, dtype=np.uint8)                     # no pairs: mirrored, nothing swapped
    out_images, out_masks = flip_batch(images.copy(), np.minimum(masks, 5), fasseg_lut, np.random.default_rng(1))
    flipped = [i for i in range(32) if not (out_images[i] == images[i]).all()]
    assert flipped and all((out_masks[i] == np.minimum(masks, 5)[i][:, ::-1]).all() for i in flipped)


def test_geometric_and_full_keep_valid_ids_without_interpolation():
    images, masks = _batch()
    gen = tf.random.Generator.from_seed(1)
    for level in ("geometric", "full"):
        out_images, out_masks = augment_batch(images, masks, Augmentation(level, FLIP_LUT), gen)
        assert out_images.dtype == tf.uint8 and out_images.shape == images.shape
        values = set(np.unique(out_masks.numpy()).tolist())
        assert values <= set(range(11))
        # nearest neighbour: every id present after warping was present before (no blends like 5.5 -> 5)
        assert values <= set(np.unique(masks.numpy()).tolist()) | {0}
        assert not (out_masks.numpy() == masks.numpy()).all()


def test_augment_is_reproducible_for_a_seed():
    images, masks = _batch()
    a = augment_batch(images, masks, Augmentation("full", FLIP_LUT), tf.random.Generator.from_seed(7))
    b = augment_batch(images, masks, Augmentation("full", FLIP_LUT), tf.random.Generator.from_seed(7))
    assert (a[0].numpy() == b[0].numpy()).all() and (a[1].numpy() == b[1].numpy()).all()


def test_geometric_scale_range_is_train_augment_scale():
    """A centred 24-px square's area after the warp is scale^2 times its own: within 1 +- 0.2 by default,
    and reaching past it with train.augment_scale 0.4."""
    masks = np.zeros((256, 64, 64), np.uint8)
    masks[:, 20:44, 20:44] = 1
    images = tf.constant(np.repeat(masks[..., None], 3, axis=3) * 200)

    def area_ratios(scale_range):
        gen = tf.random.Generator.from_seed(3)
        kwargs = {} if scale_range is None else {"scale_range": scale_range}
        augmentation = Augmentation("geometric", FLIP_LUT, **kwargs)
        warped = augment_batch(images, tf.constant(masks), augmentation, gen)[1].numpy()
        return (warped == 1).sum(axis=(1, 2)) / (24 * 24)

    default, wide = area_ratios(None), area_ratios(0.4)
    assert 0.8**2 - 0.05 < default.min() and default.max() < 1.2**2 + 0.05
    assert 0.6**2 - 0.05 < wide.min() < 0.8**2 - 0.05 and 1.2**2 + 0.05 < wide.max() < 1.4**2 + 0.05


def test_full_augment_gives_a_share_of_photos_a_new_background():
    """train.augment_background: background pixels of about that share of the photos become a random wall, dark
    or bright, while the label maps (and the warps that made them) stay exactly those of the same seed without it."""
    masks = np.zeros((200, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 1
    images = tf.constant(np.where(masks[..., None] == 1, 200, 100).astype(np.uint8).repeat(3, axis=3))

    def run(share):
        gen = tf.random.Generator.from_seed(5)
        augmentation = Augmentation("full", FLIP_LUT, wall_share=share)
        out_images, out_masks = augment_batch(images, tf.constant(masks), augmentation, gen)
        out_images, out_masks = out_images.numpy().astype(float), out_masks.numpy()
        wall = np.array([x[m == 0].mean() for x, m in zip(out_images, out_masks)])
        face = np.array([x[m == 1].mean() for x, m in zip(out_images, out_masks)])
        return out_masks, wall, face

    masks_off, wall_off, face_off = run(0.0)
    assert (wall_off < face_off).all()                 # the photo's own darker background, whatever the colours did
    for share in (1.0, 0.3):
        masks_on, wall_on, face_on = run(share)
        assert (masks_on == masks_off).all()
        brighter = (wall_on > face_on).mean()          # a wall brighter than the face: only a new background
        assert 0.1 * share < brighter < 0.6 * share
    assert wall_on.min() < 40 and wall_on.max() > 215      # dark and bright walls both


@pytest.mark.parametrize("names", [("background", "face"), ("face", "hair", "background")])
def test_warps_and_walls_use_the_taxonomy_s_background_whatever_its_id(names):
    """A label_names.txt may list background anywhere: what a zoom out uncovers is labelled that class, and
    new walls go where the label map says that class, never over the face (red here, on a blue wall)."""
    taxonomy = Taxonomy(names)
    background, face = taxonomy.background, names.index("face")
    masks = np.full((64, 32, 32), background, np.uint8)
    masks[:, 8:24, 8:24] = face
    images = tf.constant(np.where(masks[..., None] == face, (255, 0, 0), (0, 0, 255)).astype(np.uint8))

    zoomed_out = Augmentation("geometric", taxonomy.flip_lut, taxonomy.background, scale_range=0.5)
    out_images, out_masks = (t.numpy() for t in augment_batch(images, tf.constant(masks), zoomed_out,
                                                               tf.random.Generator.from_seed(2)))
    uncovered = out_images.max(axis=3) == 0
    assert uncovered.sum() > 1000 and (out_masks[uncovered] == background).all()

    def redness(share):                     # per photo: red minus blue over the face, and over the background
        walls = Augmentation("full", taxonomy.flip_lut, taxonomy.background, wall_share=share)
        out_images, out_masks = augment_batch(images, tf.constant(masks), walls, tf.random.Generator.from_seed(5))
        out_images, out_masks = out_images.numpy().astype(float), out_masks.numpy()
        red = out_images[..., 0] - out_images[..., 2]
        return (np.array([r[m == face].mean() for r, m in zip(red, out_masks)]),
                np.array([r[m == background].mean() for r, m in zip(red, out_masks)]))

    face_red, wall_red = redness(0.0)
    assert (face_red > 60).all() and (wall_red < -60).all()        # colour jitter keeps red red and blue blue
    face_red, wall_red = redness(1.0)
    assert (face_red > 60).all()                                   # the face is never painted over
    assert (wall_red < -60).mean() < 0.3                           # the blue wall is gone from most photos
