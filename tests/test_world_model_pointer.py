"""The copy pointer (compressor/worldmodel/pointer.py): a distribution for every head, candidates from the previous
frame's 3x3 neighbourhood, causal, exact argmax and sampling against enumeration, old models untouched."""

import dataclasses

import pytest
import torch

from compressor.worldmodel.model import WorldModel, WorldModelConfig
from compressor.worldmodel.module import load, save
from compressor.worldmodel.data import TokenFormat

HEADS = ["full", "digits", "ar-digits"]
V, RADICES, GRID = 60, [5, 4, 3], [3, 4]  # a tiny codebook (enumerable) on a 3x4 grid
N = GRID[0] * GRID[1]


def tiny(head: str = "full", pointer: bool = True, frames: int = 3, seed: int = 0, scale: float = 0.5) -> WorldModel:
    torch.manual_seed(seed)
    config = WorldModelConfig(V, N, RADICES, frames, 16, 1, 2, 0.0, head, digit_hidden=8, grid=GRID,
                              copy_pointer=pointer)
    model = WorldModel(config).eval()
    with torch.no_grad():  # far from the initialisation, so the gate and the head both matter
        for p in list(model.head.parameters()) + ([] if model.pointer is None else list(model.pointer.parameters())):
            p.normal_(0, scale)
    return model


def enumerated(model: WorldModel, h: torch.Tensor, cand: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The mixture over every code, built here from its definition: h (B, D) -> p (B, V)."""
    g = model.pointer.gate_log_probs(h, valid).exp()  # (B, 1 + K)
    p = g[:, :1] * model.head.full_log_probs(h).exp()
    for k in range(cand.shape[-1]):
        p[torch.arange(len(h)), cand[:, k]] += g[:, 1 + k] * valid[..., k]
    return p


def states(model: WorldModel, B: int = 50, seed: int = 1):
    """Random states and the candidates of random windows at random positions with a previous frame."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, 16, generator=g) * 2
    seq = torch.randint(0, 6, (B, 2 * N), generator=g)  # few distinct codes: duplicate candidates happen
    pos = torch.randint(N, 2 * N, (B,), generator=g)
    cand, valid = model.pointer.candidates(seq, pos)  # (B, B, K), (B, K)
    return h, cand[torch.arange(B), torch.arange(B)], valid


@pytest.mark.parametrize("head", HEADS)
def test_the_mixture_is_a_distribution_over_the_codebook(head):
    model = tiny(head)
    window = torch.randint(0, 8, (1, 3, N))
    for frame, n in ((1, 0), (1, 5), (2, 11), (2, 6)):  # corners, edges and an inner position
        tries = window.repeat(V, 1, 1)
        tries[:, frame, n] = torch.arange(V)
        logp = model.window_log_probs(tries)[:, frame - 1, n]  # (V,): every code at that position
        assert torch.allclose(logp.exp().sum(), torch.tensor(1.0), atol=1e-5), (frame, n)
    h, cand, valid = states(model)
    p = enumerated(model, h, cand, valid)
    assert torch.allclose(p.sum(-1), torch.ones(len(h)), atol=1e-5)
    assert torch.allclose(model.pointer.full_log_probs(model.head, h, cand, valid).exp(), p, atol=1e-6)


def test_candidates_are_the_previous_frames_3x3_neighbourhood():
    model = tiny()
    window = torch.randint(0, V, (1, 3, N))
    seq, frame = window.reshape(1, -1), 2
    prev = window[0, frame - 1].view(3, 4)
    cand, valid = model.pointer.candidates(seq, torch.tensor([frame * N + 5]))  # row 1, column 1: all inside
    assert torch.equal(cand[0, 0], prev[0:3, 0:3].flatten()) and valid.all()
    cand, valid = model.pointer.candidates(seq, torch.tensor([frame * N + 0]))  # the top-left corner
    assert valid[0].tolist() == [False, False, False, False, True, True, False, True, True]
    assert torch.equal(cand[0, 0][valid[0]], prev[0:2, 0:2].flatten())
    cand, valid = model.pointer.candidates(seq, torch.tensor([frame * N + 11]))  # the bottom-right corner
    assert torch.equal(cand[0, 0][valid[0]], prev[1:3, 2:4].flatten())
    assert not model.pointer.candidates(seq, torch.tensor([5]))[1].any()  # frame 1 has no previous frame


def test_a_previous_token_changes_a_score_only_inside_the_neighbourhood():
    """With the token and hint embeddings zeroed the states see positions only, so a score moves only through the
    pointer: when the previous frame's token at m becomes the target, the target's log-prob rises exactly when m is
    in its 3x3 neighbourhood."""
    model = tiny()
    with torch.no_grad():
        model.tok.weight.zero_()
        model.hint.weight.zero_()
    window = torch.randint(0, V, (1, 3, N))
    frame, n = 2, 5  # row 1, column 1 of the 3x4 grid
    window[0, frame - 1] = (window[0, frame, n] + 1 + torch.arange(N)) % V  # no previous token is the target yet
    base = model.window_log_probs(window)[0, frame - 1, n]
    rose = []
    for m in range(N):
        changed = window.clone()
        changed[0, frame - 1, m] = window[0, frame, n]
        rose.append(bool(model.window_log_probs(changed)[0, frame - 1, n] > base + 1e-4))
    assert rose == [abs(m // 4 - 1) <= 1 and abs(m % 4 - 1) <= 1 for m in range(N)]
    unchanged = window.clone()
    unchanged[0, frame - 1, 11] = (window[0, frame - 1, 11] + 1) % V  # outside: the score is exactly the same
    assert model.window_log_probs(unchanged)[0, frame - 1, n] == base


@pytest.mark.parametrize("head", HEADS)
def test_scores_are_causal(head):
    model = tiny(head, frames=4)
    window = torch.randint(0, V, (2, 4, N))
    out = model.window_log_probs(window)
    changed = window.clone()
    changed[:, 2, 7:] = torch.randint(0, V, (2, N - 7))
    new = model.window_log_probs(changed)
    assert torch.allclose(new[:, 0], out[:, 0], atol=1e-5)  # frame 2 unchanged
    assert torch.allclose(new[:, 1, :7], out[:, 1, :7], atol=1e-5)  # frame 3 before the change
    assert not torch.allclose(new[:, 2], out[:, 2], atol=1e-5)  # frame 4 sees the change


@pytest.mark.parametrize("head", HEADS)
def test_argmax_is_the_enumerations_argmax(head):
    for seed in range(4):
        model = tiny(head, seed=seed, scale=[0.3, 1.0, 2.0, 0.5][seed])
        h, cand, valid = states(model, seed=seed)
        p = enumerated(model, h, cand, valid)
        got = model.pointer.argmax(model.head, h, cand, valid)
        assert torch.allclose(p.gather(-1, got[:, None]), p.max(-1, keepdim=True).values, atol=1e-6), seed
        # Both ways at least once: a candidate wins somewhere and the head's own argmax somewhere.
        if seed == 0:
            head_best = model.head.argmax(h)
            assert (got != head_best).any()


@pytest.mark.parametrize("head", HEADS)
def test_cached_greedy_frame_equals_the_teacher_forced_argmax(head):
    model = tiny(head)
    past = torch.randint(0, V, (3, 2, N))
    nxt = model.next_frame(past)
    assert torch.equal(model.window_argmax(torch.cat([past, nxt[:, None]], 1))[:, -1], nxt)


@pytest.mark.parametrize("head", HEADS)
def test_sampling_follows_the_mixture(head):
    model = tiny(head, scale=1.0)
    h, cand, valid = states(model, B=3, seed=2)
    n = 20000
    for temperature in (1.0, 0.5):
        want = enumerated(model, h, cand, valid)
        if temperature != 1:
            want = torch.softmax(want.log() / temperature, -1)
        for b in range(3):
            hs, cs = h[b : b + 1].expand(n, -1), cand[b : b + 1].expand(n, -1)
            vs = valid[b : b + 1].expand(n, -1)
            draws = model.pointer.sample(model.head, hs, cs, vs, temperature, torch.Generator().manual_seed(b))
            freq = torch.bincount(draws, minlength=V).float() / n
            assert (freq - want[b]).abs().max() < 0.015, (temperature, b)  # 5 standard errors at most for any p
    # Reproducible under a seed, through generation.
    context = torch.randint(0, V, (2, 2, N))
    a = model.next_frame(context, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, model.next_frame(context, 1.0, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, model.next_frame(context, 1.0, torch.Generator().manual_seed(6)))
    b = model.next_frame(context, 0.7, torch.Generator().manual_seed(5))
    assert torch.equal(b, model.next_frame(context, 0.7, torch.Generator().manual_seed(5)))


def test_the_gate_starts_copying():
    model = WorldModel(WorldModelConfig(V, N, RADICES, 3, 16, 1, 2, 0.0, "full", grid=GRID, copy_pointer=True))
    h = torch.randn(4, 16)
    valid = torch.ones(4, 9, dtype=torch.bool)
    g = model.pointer.gate_log_probs(h, valid).exp()
    assert torch.allclose(g[:, 0], torch.full((4,), 0.4), atol=0.05)
    assert torch.allclose(g[:, 1 + model.pointer.center], torch.full((4,), 0.5), atol=0.05)


@pytest.mark.parametrize("head", HEADS)
def test_without_the_pointer_nothing_changes(head, tmp_path):
    """copy_pointer=False is the model as it was: the same numbers as the head alone, and a checkpoint saved before
    the pointer's keys existed loads."""
    model = tiny(head, pointer=False)
    assert model.pointer is None and not any("pointer" in k for k in model.state_dict())
    window = torch.randint(0, V, (2, 3, N))
    flat = window.reshape(2, -1)
    h = model(flat[:, :-1])[:, N - 1 :]
    assert torch.equal(model.window_log_probs(window), model.head.log_probs(h, flat[:, N:]).view(2, 2, N))
    assert torch.equal(model.window_argmax(window), model.head.argmax(h).view(2, 2, N))
    fmt = TokenFormat(V, N, tuple(GRID), RADICES, "0123456789abcdef")
    path = str(tmp_path / "world_model.pt")
    save(path, model, fmt)
    blob = torch.load(path, weights_only=True)
    for key in ("grid", "copy_pointer"):  # as an old checkpoint was written
        del blob["config"][key]
    torch.save(blob, path)
    old, _, _ = load(path)
    assert old.config.copy_pointer is False and old.pointer is None
    assert torch.equal(old.window_log_probs(window), model.window_log_probs(window))


def test_a_pointer_checkpoint_round_trips(tmp_path):
    model = tiny("ar-digits")
    fmt = TokenFormat(V, N, tuple(GRID), RADICES, "0123456789abcdef")
    save(str(tmp_path / "m.pt"), model, fmt)
    back, _, _ = load(str(tmp_path / "m.pt"))
    window = torch.randint(0, V, (2, 3, N))
    assert back.config == model.config
    assert torch.allclose(back.window_log_probs(window), model.window_log_probs(window), atol=1e-6)


def test_a_grid_that_does_not_hold_the_frame_is_refused():
    with pytest.raises(ValueError, match="grid"):
        WorldModel(WorldModelConfig(V, N, RADICES, 3, 16, 1, 2, 0.0, "full", grid=[8, 16], copy_pointer=True))


def test_training_on_static_frames_learns_to_copy():
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(V, N, RADICES, 3, 16, 1, 2, 0.0, "full", grid=GRID, copy_pointer=True))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    first = None
    for step in range(30):
        frame = torch.randint(0, V, (8, 1, N), generator=g)
        window = frame.expand(8, 3, N)  # every frame the same
        loss = -model.window_log_probs(window).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    frame = torch.randint(0, V, (4, 1, N), generator=g)
    p = model.window_log_probs(frame.expand(4, 3, N)).exp()
    assert p.mean() > 0.9, (first, p.mean())


def test_the_pointer_overlay_reaches_the_config():
    import os

    from compressor.worldmodel import cli

    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "world-model")
    args = cli._parse(["train", "--config", f"{configs}/reference.yaml", "--config", f"{configs}/pointer.yaml"])
    config = cli._config(args, TokenFormat(15360, 128, (8, 16), [8, 8, 8, 6, 5], "0123456789abcdef"))
    assert config.copy_pointer and config.grid == [8, 16] and config.head == "full"
    plain = cli._parse(["train", "--config", f"{configs}/reference.yaml"])
    assert not cli._config(plain, TokenFormat(15360, 128, (8, 16), [8, 8, 8, 6, 5], "")).copy_pointer
