"""A token tree in one pass gives every node the logits of its own path, and keeping any
path (not only the first branch) leaves the cache as if that path had been fed alone (float64)."""

import pytest
import torch
from tiny_models import ARCHS, make_model

from specdecode.kv import CachedModel

V = 20
PREFIX = [1, 5, 7, 3, 9, 4]
NODES = [6, 8, 2, 11, 12, 13, 14]  # a tree: 6 and 8 under the root; 2, 11 under 6; 12 under 8; 13 under 11; 14 under 12
PARENTS = [-1, -1, 0, 0, 1, 3, 4]


def path_to(node):
    path = []
    while node >= 0:
        path.append(node)
        node = PARENTS[node]
    return path[::-1]


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return make_model(request.param, V, seed=0, layers=2, init_range=0.3)


@torch.no_grad()
def linear_logits(model, ids):
    return model(torch.tensor([ids])).logits[0, -1]


def test_each_node_sees_its_own_path(model):
    cached = CachedModel(model, V)
    logits = cached.next_logits(PREFIX, NODES, tree=PARENTS)  # [1 + nodes, V]
    assert torch.allclose(logits[0], linear_logits(model, PREFIX), atol=1e-10)
    for i in range(len(NODES)):
        ids = PREFIX + [NODES[j] for j in path_to(i)]
        assert torch.allclose(logits[i + 1], linear_logits(model, ids), atol=1e-10), f"node {i}"


@pytest.mark.parametrize("leaf", [2, 5, 6])  # first branch, second child, second branch of the root
def test_keeping_any_path_is_like_feeding_it_alone(model, leaf):
    cached = CachedModel(model, V)
    cached.next_logits(PREFIX, NODES, tree=PARENTS)
    path = path_to(leaf)
    cached.keep_path(path)
    kept = PREFIX + [NODES[j] for j in path]
    assert cached.ids == kept and cached.tree_start is None
    after = cached.forward([10], num_logits=1)[-1]
    assert torch.allclose(after, linear_logits(model, kept + [10]), atol=1e-10)


def test_a_tree_grown_level_by_level_matches_one_pass(model):
    """The draft grows its tree one level per pass, parents pointing into the cached nodes."""
    cached = CachedModel(model, V)
    cached.next_logits(PREFIX)
    base = len(PREFIX)
    level_one = cached.forward(NODES[:2], num_logits=2, parents=[base - 1, base - 1])
    level_two = cached.forward(NODES[2:5], num_logits=3, parents=[base, base, base + 1])
    for i, row in zip(range(5), [*level_one, *level_two], strict=True):
        assert torch.allclose(row, linear_logits(model, PREFIX + [NODES[j] for j in path_to(i)]), atol=1e-10)
    cached.sync(PREFIX + [99 % V])  # a sequence after a tree: the nodes are dropped first
    assert cached.ids == PREFIX and cached.tree_start is None


def test_bad_tree_use_is_refused(model):
    cached = CachedModel(model, V)
    cached.next_logits(PREFIX, NODES[:2], tree=[-1, -1])
    with pytest.raises(RuntimeError, match="keep_path"):
        cached.forward([3], num_logits=1)
    with pytest.raises(ValueError, match="earlier position"):
        cached.forward([3], num_logits=1, parents=[len(cached.ids) + 5])
