"""Task streams: the vectorised generators against scikit-learn's, determinism, chunking, splits.

The scikit-learn families draw their tasks from NumPy re-implementations of the ``make_*``
generators, vectorised over tasks. Each is compared here with scikit-learn itself on many draws:
shapes, label balance, and two-sample Kolmogorov-Smirnov tests on statistics that see the
cluster positions, the within-class spread, the distance between classes and which points go
to the support set. Seeds are fixed, so each test is deterministic; a wrong scale, offset,
class layout or ordering moves these statistics far beyond the thresholds
(``test_the_checks_catch_a_wrong_generator`` shows that they do).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from helpers import family_params
from scipy import stats
from sklearn import datasets

from gabench.tasks import FAMILIES, Digits, TaskStream, make_family, task_rng
from gabench.tasks._base import SEED_BLOCK, SPLIT_INDEX, SPLITS, split_seed
from gabench.tasks._digits import _images, sample_without_replacement
from gabench.tasks._sklearn import (
    Blobs,
    Circles,
    Classification,
    Moons,
    Regression,
    _ClassificationFamily,
    hypercube_vertices,
    random_rotations,
)

N_TASKS = 1500
P_MIN = 1e-3


def _grouped(x: np.ndarray, y: np.ndarray, ways: int) -> np.ndarray:
    """One scikit-learn draw grouped by class: array of shape (ways, n, dim), order kept."""
    return np.stack([x[y == c] for c in range(ways)])


def _statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of tasks of shape (tasks, ways, n, dim) whose distributions must agree."""
    first = x[:, :, 0, :]
    out = {
        "first point": first[..., 0].ravel(),  # where a class's first (support) point lies
        "first point, last feature": first[..., -1].ravel(),
        "within class": (x[:, :, 0, 0] - x[:, :, 1, 0]).ravel(),
        "class spread": x[..., 0].std(axis=2).ravel(),
        "task spread": x[..., 0].reshape(len(x), -1).std(axis=1),
    }
    if x.shape[1] > 1:
        out["between classes"] = x[:, 0, 0, 0] - x[:, 1, 0, 0]
        out["class means apart"] = np.abs(x[:, 0].mean(1) - x[:, 1].mean(1)).sum(-1)
    return out


def _shuffle_classes(x: np.ndarray, seed: int) -> np.ndarray:
    """The classes of each task in random order.

    The families give the generator's classes random labels, so the order of the classes in a
    draw is not part of a task's distribution; scikit-learn's order is not always random (with
    ``ways == 2**dim``, ``make_classification`` puts class c on vertex c), so it is made random
    on both sides before comparing.
    """
    order = np.argsort(np.random.default_rng(seed).random(x.shape[:2]), axis=1)
    return np.take_along_axis(x, order[:, :, None, None], axis=1)


def _assert_same_distribution(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    a, b = _statistics(_shuffle_classes(ours, 0)), _statistics(_shuffle_classes(theirs, 1))
    for key in a:
        p = stats.ks_2samp(a[key], b[key]).pvalue
        assert p > P_MIN, f"{key}: KS p={p:.2g}, means {a[key].mean():.4g} vs {b[key].mean():.4g}"
        scale = max(b[key].std(), 1e-12)
        assert abs(a[key].mean() - b[key].mean()) < 5 * scale / np.sqrt(len(b[key])), key


def _ours(fam, n: int, seed: int = 1) -> np.ndarray:
    return fam._draw(N_TASKS, n, np.random.default_rng(seed))


CLASSIFICATION_CASES = [
    (Moons(noise=0.1), 20, lambda n, rs: datasets.make_moons((n, n), noise=0.1, random_state=rs)),
    (Moons(noise=0.0), 7, lambda n, rs: datasets.make_moons((n, n), noise=0.0, random_state=rs)),
    (Circles(noise=0.05, factor=0.5), 20,
     lambda n, rs: datasets.make_circles((n, n), noise=0.05, factor=0.5, random_state=rs)),
    (Circles(noise=0.2, factor=0.3), 6,
     lambda n, rs: datasets.make_circles((n, n), noise=0.2, factor=0.3, random_state=rs)),
    (Blobs(ways=5, dim=2, cluster_std=1.5), 20, lambda n, rs: _blobs(n, 5, 2, 1.5, rs)),
    (Blobs(ways=3, dim=4, cluster_std=0.5), 8, lambda n, rs: _blobs(n, 3, 4, 0.5, rs)),
    (Classification(ways=5, dim=5, class_sep=1.5), 20,
     lambda n, rs: _classification(n, 5, 5, 1.5, rs)),
    (Classification(ways=4, dim=2, class_sep=1.0), 6,
     lambda n, rs: _classification(n, 4, 2, 1.0, rs)),
    (Classification(ways=3, dim=3, class_sep=2.0, noise=0.3), 10,
     lambda n, rs: _classification(n, 3, 3, 2.0, rs, noise=0.3)),
]


def _blobs(n, ways, dim, std, rs):
    x, y = datasets.make_blobs([n] * ways, n_features=dim, cluster_std=std, center_box=(-5.0, 5.0),
                               random_state=rs)
    return x / 5.0, y


def _classification(n, ways, dim, sep, rs, noise=0.0):
    """scikit-learn's draw as the family made it before the generators were vectorised."""
    x, y = datasets.make_classification(
        n_samples=ways * n, n_features=dim, n_informative=dim, n_redundant=0, n_repeated=0,
        n_classes=ways, n_clusters_per_class=1, flip_y=0.0, class_sep=sep, random_state=rs)
    if noise:
        x = x + noise * np.random.default_rng(rs).standard_normal(x.shape)
    return x, y


@pytest.mark.parametrize("fam,n,make", CLASSIFICATION_CASES,
                         ids=[f"{c[0]!r}-{c[1]}" for c in CLASSIFICATION_CASES])
def test_classification_generators_match_scikit_learn(fam, n, make):
    theirs = np.stack([_grouped(*make(n, rs), fam.ways) for rs in range(N_TASKS)])
    _assert_same_distribution(_ours(fam, n), theirs)


@pytest.mark.parametrize("dim,noise", [(5, 0.5), (7, 0.0)])
def test_friedman1_matches_scikit_learn(dim, noise):
    fam, n = Regression(dim=dim, noise=noise), 20
    ours = _ours(fam, n)
    theirs = []
    for rs in range(N_TASKS):
        x, y = datasets.make_friedman1(n, dim, noise=noise, random_state=rs)
        theirs.append(np.concatenate([x, ((y - 14.4) / 5.0)[:, None]], axis=1))
    theirs = np.stack(theirs)
    assert ours.shape == theirs.shape == (N_TASKS, n, dim + 1)
    for j in [0, dim - 1, dim]:  # an input, the last (unused) input, the target
        p = stats.ks_2samp(ours[..., j].ravel(), theirs[..., j].ravel()).pvalue
        assert p > P_MIN, (j, p)
    for stat in (lambda a: a[..., -1].std(1), lambda a: np.corrcoef(a[:, :, 3].ravel(),
                                                                     a[:, :, -1].ravel())[0, 1]):
        s1, s2 = np.atleast_1d(stat(ours)), np.atleast_1d(stat(theirs))
        if len(s1) > 1:
            assert stats.ks_2samp(s1, s2).pvalue > P_MIN
        else:
            assert abs(s1[0] - s2[0]) < 0.03


def test_the_checks_catch_a_wrong_generator():
    """The statistics above do notice small mistakes (here: no shuffle, a 10% scale error)."""
    fam, n, make = CLASSIFICATION_CASES[0]
    theirs = np.stack([_grouped(*make(n, rs), 2) for rs in range(N_TASKS)])
    unshuffled = np.sort(_ours(fam, n), axis=2)  # sorted rows: the support is not random
    scaled = 1.1 * _ours(fam, n)
    for wrong in (unshuffled, scaled):
        with pytest.raises(AssertionError):
            _assert_same_distribution(wrong, theirs)


def test_hypercube_vertices_are_distinct_and_uniform():
    rng = np.random.default_rng(0)
    for dim, ways in [(2, 4), (5, 5), (13, 8), (33, 6)]:
        v = hypercube_vertices(3000, ways, dim, rng)
        assert v.shape == (3000, ways, dim) and set(np.unique(v)) <= {0.0, 1.0}
        tail = v[..., -min(dim, 30):]
        codes = tail @ (2.0 ** np.arange(tail.shape[-1]))
        assert all(len(set(row)) == ways for row in codes)
        # every coordinate is a fair bit, and the first vertex of a task is uniform
        assert np.abs(v.mean((0, 1)) - 0.5).max() < 0.03
        if dim <= 5:
            counts = np.bincount(codes[:, 0].astype(int), minlength=2**dim)
            assert stats.chisquare(counts).pvalue > P_MIN


def test_random_rotations_are_haar_orthogonal():
    q = random_rotations(4000, 3, np.random.default_rng(0))
    assert np.allclose(q @ q.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    det = np.linalg.det(q)
    assert abs((det > 0).mean() - 0.5) < 0.03  # rotations and reflections alike
    # Haar: each column is uniform on the sphere, so an entry's square is Beta(1/2, 1)
    assert stats.kstest(q[:, 0, 1] ** 2, stats.beta(0.5, 1.0).cdf).pvalue > P_MIN


def test_sample_without_replacement_matches_choice():
    rng = np.random.default_rng(0)
    n_items = np.array([10] * 20000 + [4] * 20000)
    picks = sample_without_replacement(n_items, 3, rng)
    for rows, m in [(picks[:20000], 10), (picks[20000:], 4)]:
        assert all(len(set(r)) == 3 for r in rows[:2000]) and rows.max() < m
        pairs = np.bincount(rows[:, 0] * m + rows[:, 1], minlength=m * m)
        allowed = pairs[np.arange(m * m) // m != np.arange(m * m) % m]  # ordered pairs, a != b
        assert stats.chisquare(allowed).pvalue > P_MIN
        assert stats.chisquare(np.bincount(rows[:, 2], minlength=m)).pvalue > P_MIN
    full = sample_without_replacement(np.array([6] * 5000), 6, rng)
    assert (np.sort(full, axis=1) == np.arange(6)).all()  # n = population: a permutation
    assert stats.chisquare(np.bincount(full[:, 0], minlength=6)).pvalue > P_MIN


def test_digits_tasks_are_images_of_their_classes():
    fam = Digits(ways=5, shots=2, query_shots=3)
    images, labels = _images()
    batch = fam.sample(40, "train", task_rng(0, "digits", "train"))
    x = torch.cat([batch.support_x.reshape(40, 5, 2, 64), batch.query_x.reshape(40, 5, 3, 64)], 2)
    for t in range(40):
        assert len(set(batch.classes[t].tolist())) == 5
        for c, cls in enumerate(batch.classes[t].tolist()):
            digit, rot = divmod(cls, 4)
            bank = np.rot90(images[labels == digit], k=rot, axes=(1, 2)).reshape(-1, 64)
            rows = x[t, c].numpy()
            hits = [np.flatnonzero((bank == r).all(1)) for r in rows]
            assert all(len(h) for h in hits)
            assert len({int(h[0]) for h in hits}) == 5  # distinct images (no image twice)
    assert (batch.support_y == torch.arange(5).repeat_interleave(2)).all()


@pytest.mark.parametrize("name", family_params(FAMILIES))
class TestStreams:
    def test_chunked_stream_is_the_stream_consumed_batch_by_batch(self, name):
        fam = make_family(name)
        if fam.chunk_tasks is None:  # not chunked: each request is one draw from the stream
            seq = task_rng(3, name, "train").bit_generator.seed_seq
            a = fam.sample(40, "train", task_rng(3, name, "train"))
            b = fam.sample(40, "train", np.random.Generator(np.random.PCG64(seq)))
            assert torch.equal(a.query_x, b.query_x) and torch.equal(a.support_y, b.support_y)
            return
        n = fam.chunk_tasks + 37  # crosses a chunk boundary
        whole = fam.sample(n, "train", task_rng(3, name, "train"))
        rng = task_rng(3, name, "train")
        sizes = [25] * (n // 25) + [n % 25]
        parts = [fam.sample(k, "train", rng) for k in sizes]
        for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
            a = getattr(whole, field)
            if a is None:
                continue
            assert torch.equal(a, torch.cat([getattr(p, field) for p in parts])), field
        # the first chunk is one vectorised draw, what a plain generator gives for that size
        seq = task_rng(3, name, "train").bit_generator.seed_seq
        plain = fam.sample(fam.chunk_tasks, "train", np.random.Generator(np.random.PCG64(seq)))
        assert torch.equal(plain.query_x, whole.query_x[: fam.chunk_tasks])

    def test_deterministic_and_seed_dependent(self, name):
        fam = make_family(name)
        a = [fam.sample(25, "val", task_rng(4, name, "val")) for _ in range(2)]
        b = make_family(name).sample(25, "val", task_rng(4, name, "val"))
        c = fam.sample(25, "val", task_rng(5, name, "val"))
        assert torch.equal(a[0].query_x, a[1].query_x) and torch.equal(a[0].query_x, b.query_x)
        assert torch.equal(a[0].support_y, b.support_y)
        assert not torch.equal(a[0].query_x, c.query_x)

    def test_streams_of_splits_are_disjoint(self, name):
        fam = make_family(name)
        batches = {s: fam.sample(600, s, task_rng(0, name, s)) for s in SPLITS}
        if batches["train"].classes is not None:
            seen = {s: set(b.classes.unique().tolist()) for s, b in batches.items()}
            assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"]
            assert not seen["val"] & seen["test"]
        else:
            tasks = {s: {x.numpy().tobytes() for x in b.query_x} for s, b in batches.items()}
            assert all(len(t) == 600 for t in tasks.values())  # no task twice in a split either
            assert not tasks["train"] & tasks["val"] and not tasks["train"] & tasks["test"]
            assert not tasks["val"] & tasks["test"]

    def test_label_balance_and_shapes(self, name):
        fam = make_family(name)
        b = fam.sample(60, "train", task_rng(0, name, "train"))
        assert b.support_x.dtype == torch.float32 and b.corrupted.shape == (60,)
        assert not b.corrupted.any()
        if isinstance(fam, (_ClassificationFamily, Digits)):  # classes of equal size by design
            for y, k in ((b.support_y, fam.shots), (b.query_y, fam.query_shots)):
                assert y.shape == (60, fam.ways * k)
                assert (torch.stack([(y == c).sum(1) for c in range(fam.ways)]) == k).all()


def test_split_seeds_lie_in_their_block():
    rng = np.random.default_rng(0)
    for split in SPLITS:
        seeds = [split_seed(rng, split) for _ in range(200)]
        assert all(s // SEED_BLOCK == SPLIT_INDEX[split] for s in seeds)


def test_task_stream_is_a_generator_and_keeps_its_draws():
    rng = task_rng(0, "sine", "train")
    assert isinstance(rng, TaskStream) and isinstance(rng, np.random.Generator)
    same = np.random.default_rng([0, zlib.crc32(b"sine"), 0])  # the definition before chunking
    assert rng.random() == same.random()
    assert isinstance(rng.spawn(1)[0], np.random.Generator)


def test_labels_are_assigned_at_random():
    """Which generator class gets label 0 is uniform (scikit-learn families)."""
    for fam in (Blobs(ways=4), Classification(ways=4)):
        b = fam.sample(2000, "train", task_rng(0, fam.name, "train"))
        first = b.support_y[:, 0].numpy()  # label of generator class 0
        assert stats.chisquare(np.bincount(first, minlength=4)).pvalue > P_MIN


@pytest.mark.parametrize("fam", [Classification(), Classification(ways=3, dim=3, noise=0.3),
                                 Blobs(), Blobs(ways=3, dim=4, rotate=False), Moons()],
                         ids=repr)
def test_folded_transform_is_the_draw_then_the_transform(fam):
    """Families that fold the per-task map into the generator give the same numbers."""
    m, b = fam._affine(50, np.random.default_rng(0))
    folded = fam._draw_affine(50, 9, m, b, np.random.default_rng(1))
    plain = fam._draw(50, 9, np.random.default_rng(1)) @ m[:, None] + b[:, None]
    tol = 1e-9 if folded.dtype == np.float64 else 1e-5  # float32 from the float32 normals on
    np.testing.assert_allclose(folded, plain, rtol=tol, atol=tol * np.abs(plain).max())


def test_affine_map_is_rotation_scale_shift():
    fam = Moons(scale_spread=2.0, shift_std=0.5)
    m, b = fam._affine(4000, np.random.default_rng(0))
    scale = np.sqrt((m[:, 0] ** 2).sum(-1))  # rows of a scaled orthogonal matrix
    np.testing.assert_allclose(m @ m.transpose(0, 2, 1), scale[:, None, None] ** 2 * np.eye(2),
                               atol=1e-12)
    assert stats.kstest(np.log(scale), stats.uniform(-np.log(2), 2 * np.log(2)).cdf).pvalue > P_MIN
    assert stats.kstest(b.ravel() / 0.5, stats.norm.cdf).pvalue > P_MIN
    unrotated = Moons(rotate=False)._affine(10, np.random.default_rng(0))[0]
    assert (unrotated[:, 0, 1] == 0).all() and (unrotated[:, 0, 0] == unrotated[:, 1, 1]).all()


def test_linear_binary_inputs_and_label_noise():
    from gabench.tasks import LinearBinary

    fam = LinearBinary(task_spread=0.0, label_noise=0.1)  # every task is the shared hyperplane
    b = fam.sample(400, "train", task_rng(0, "linear-binary", "train"))
    x = b.support_x.numpy().reshape(-1, fam.dim)
    assert x.min() >= -1 and x.max() < 1
    assert stats.kstest(x[:, 0], stats.uniform(-1, 2).cdf).pvalue > P_MIN
    clean = (x @ fam._w > 0).astype(np.int64)
    flipped = (clean != b.support_y.numpy().reshape(-1)).mean()
    assert abs(flipped - 0.1) < 3 * np.sqrt(0.1 * 0.9 / clean.size)


def test_a_pickled_stream_goes_on_with_the_same_tasks():
    import copy
    import pickle

    fam, rng = make_family("moons"), task_rng(0, "moons", "train")
    fam.sample(30, "train", rng)  # part of a chunk is pending
    fam2, rng2 = pickle.loads(pickle.dumps((fam, rng)))
    fam3, rng3 = copy.deepcopy((fam, rng))
    assert isinstance(rng2, TaskStream)
    want = fam.sample(600, "train", rng).query_x
    assert torch.equal(fam2.sample(600, "train", rng2).query_x, want)
    assert torch.equal(fam3.sample(600, "train", rng3).query_x, want)
    assert rng2.spawn(1)[0].random() == task_rng(0, "moons", "train").spawn(1)[0].random()


@pytest.mark.parametrize("dim", [1, 2, 5, 9])
def test_random_rotations_are_the_sign_fixed_qr_factor(dim):
    """Gram-Schmidt on the same Gaussian matrices gives numpy's QR factor with diag(R) > 0."""
    q = random_rotations(300, dim, np.random.default_rng(7))
    a = np.random.default_rng(7).standard_normal((dim, 300, dim)).transpose(1, 2, 0)
    ref, r = np.linalg.qr(a)
    ref = ref * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    np.testing.assert_allclose(q, ref, atol=1e-10)


@pytest.mark.parametrize("low,width_log2", [(0.0, 0), (-1.0, 1), (-3.0, 3)])
def test_uniform_float32_is_uniform_on_its_interval(low, width_log2):
    from gabench.tasks._base import uniform_float32

    high = low + 2.0**width_log2
    x = uniform_float32(np.random.Generator(np.random.SFC64(3)), (400, 250), low, width_log2)
    assert x.dtype == np.float32 and x.shape == (400, 250)
    assert x.min() >= low and x.max() < high
    flat = x.ravel().astype(np.float64)
    assert stats.kstest(flat, stats.uniform(low, high - low).cdf).pvalue > P_MIN
    # on the grid of spacing 2**(e - 23): every value is low + k * spacing
    k = (flat - low) / 2.0 ** (width_log2 - 23)
    assert np.array_equal(k, np.round(k))
    # the two numbers of each 64-bit word are independent: counts of (first, second) in a
    # 16 x 16 grid of cells are uniform
    pairs = np.floor((x.reshape(-1, 2) - low) / (high - low) * 16).astype(int)
    counts = np.bincount(pairs[:, 0] * 16 + pairs[:, 1], minlength=256)
    assert stats.chisquare(counts).pvalue > P_MIN


def test_uniform_float32_takes_its_bits_from_the_raw_words():
    """Against a hand decoding of the same words: number 2i is the low half of word i and
    number 2i+1 the high half, each ``2**e * (1 + (half >> 9) / 2**23) - (2**e - low)``."""
    from gabench.tasks._base import uniform_float32

    x = uniform_float32(np.random.Generator(np.random.PCG64(11)), (7,), -1.0, 1)
    words = np.random.PCG64(11).random_raw(4)
    halves = [int(w) >> s & 0xFFFFFFFF for w in words for s in (0, 32)][:7]
    want = [2.0 * (1 + (h >> 9) / 2**23) - 3.0 for h in halves]
    assert x.tolist() == want
    rng = np.random.Generator(np.random.PCG64(11))
    uniform_float32(rng, (7,), 0.0)  # an odd count uses the whole last word
    assert rng.bit_generator.random_raw() == np.random.PCG64(11).random_raw(5)[-1]


def test_textbook_binary_inputs_are_uniform_and_labels_fair():
    from gabench.tasks import TextbookBinary

    fam = TextbookBinary()
    b = fam.sample(1200, "train", task_rng(0, "textbook-binary", "train"))  # crosses chunks
    for x, y in ((b.support_x, b.support_y), (b.query_x, b.query_y)):
        x = x.numpy().ravel().astype(np.float64)
        assert x.min() >= 0 and x.max() < 1
        assert stats.kstest(x, stats.uniform(0, 1).cdf).pvalue > P_MIN
        assert stats.binomtest(int(y.sum()), y.numel(), 0.5).pvalue > P_MIN
    # support and query of a task are independent draws
    s = b.support_x[:, 0, 0].numpy().astype(np.float64)
    q = b.query_x[:, 0, 0].numpy().astype(np.float64)
    assert abs(stats.pearsonr(s, q).statistic) < 4 / np.sqrt(len(s))
